"""Hydra's own errors (composition, override syntax) as the one line gradexp prints for bad input.

Hydra prints these over several lines (OmegaConf's full_key/reference_type block, the config search
path) followed by a HYDRA_FULL_ERROR hint. gradexp keeps the message and the available options, on one line."""
from __future__ import annotations

from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

BAD_INPUT = (HydraException, OmegaConfBaseException)
_DROP = ("See https://", "To append to your config", "Config search path:")


def one_line(err: BaseException) -> str:
    """"Error merging override model.depth=abc: Value 'abc' of type 'str' could not be converted to Integer",
    "In 'config': Could not find 'model/resnet' (available: cnn | gru | lstm | mlp | rnn)"."""
    head, options = _split(str(err))
    if isinstance(err, OverrideParseException):
        head = f"cannot parse the overrides: {head}"
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        head = f"{head.rstrip('.')}: {str(cause).strip().splitlines()[0]}"
    return head + (f" (available: {' | '.join(options)})" if options else "")


def _split(message: str) -> tuple[str, list[str]]:
    """The message's first line, and the tab-indented option names Hydra lists under 'Available options'."""
    lines = message.strip().splitlines() or [message]
    options: list[str] = []
    for line in lines[1:]:
        if line.startswith(_DROP[2]):
            break
        if line.startswith("\t") and not line.startswith(_DROP):
            options.append(line.strip())
    return lines[0], options
