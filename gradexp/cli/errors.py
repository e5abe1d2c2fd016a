"""Hydra's own errors (composition, override syntax) as the one line gradexp prints for bad input.

Hydra prints these over several lines (OmegaConf's full_key/reference_type block, the config search
path) followed by a HYDRA_FULL_ERROR hint. gradexp keeps the message and the available options, on one line."""
from __future__ import annotations

from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

BAD_INPUT = (HydraException, OmegaConfBaseException)
_SEARCH_PATH = "Config search path:"  # Hydra lists it after the options; not for users
_COMPOSING = "raised while composing config:"  # Hydra's first line for an error inside a config file


def one_line(err: BaseException) -> str:
    """E.g. Error merging override model.depth=abc: Value 'abc' of type 'str' could not be converted to Integer
    or In 'config': Could not find 'model/resnet' (Available options in 'model': cnn | gru | lstm | mlp | rnn)"""
    head, listing, options = _split(str(err))
    if head.endswith(_COMPOSING):  # an error in a config file ("In 'model/mine': ConfigKeyError raised while ...:")
        head = head[:-len(_COMPOSING)].rstrip().rpartition(" ")[0] + " " + _composing_cause(str(err))
    if isinstance(err, OverrideParseException):
        head = f"cannot parse the overrides: {head}"
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        head = f"{head.rstrip('.')}: {str(cause).strip().splitlines()[0]}"
    return head + (f" ({listing} {' | '.join(options)})" if options else "")


def _split(message: str) -> tuple[str, str, list[str]]:
    """The first line; Hydra's "Available options in 'group':" line and the tab-indented names under it."""
    lines = message.strip().splitlines() or [message]
    listing, options = "", []
    for line in lines[1:]:
        if line.startswith(_SEARCH_PATH):
            break
        if line.startswith("Available options"):
            listing = line.strip()
        elif line.startswith("\t") and listing:
            options.append(line.strip())
    return lines[0], listing, options


def _composing_cause(message: str) -> str:
    """OmegaConf's message and the key it names, from the lines after Hydra's "... raised while composing config:"
    (e.g. "Key 'hidden' not in 'ModelConf' (model.hidden)"), where the first line alone ended in a colon."""
    lines = [line.strip() for line in message.strip().splitlines()[1:]]
    cause = next((line for line in lines if line and not line.startswith(("full_key:", "reference_type=",
                                                                            "object_type="))), "")
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), "")
    said = (cause or "an invalid value") + (f" ({key})" if key else "")
    if key.startswith("model.") and "not in 'ModelConf'" in cause:  # a user's constructor key in a YAML option
        said += f"; a key of your own class goes on the command line: +{key}=..."  # (found by a new user)
    return said
