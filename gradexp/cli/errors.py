"""Hydra's own errors (composition, override syntax) as the one line gradexp prints for bad input.

Hydra prints these over several lines (OmegaConf's full_key/reference_type block, the config search
path) followed by a HYDRA_FULL_ERROR hint. gradexp keeps the message and the available options, on one line."""
from __future__ import annotations

from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

BAD_INPUT = (HydraException, OmegaConfBaseException)
_SEARCH_PATH = "Config search path:"  # Hydra lists it after the options; not for users


def one_line(err: BaseException) -> str:
    """E.g. Error merging override model.depth=abc: Value 'abc' of type 'str' could not be converted to Integer
    or In 'config': Could not find 'model/resnet' (Available options in 'model': cnn | gru | lstm | mlp | rnn)"""
    head, listing, options = _split(str(err))
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
