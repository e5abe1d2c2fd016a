"""The shapes a sink's saved state must have to be loaded back. A checkpoint is untrusted input (design.md, Behaviour
at the edges): a tampered state is refused when the run resumes, before the folder changes, instead of failing when
the run ends (a string where a profile belongs breaks the heatmap) or setting what it should not."""
from __future__ import annotations

from typing import Any, Callable

Check = Callable[[Any], bool]


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numbers(value: Any) -> bool:
    return isinstance(value, list) and all(number(v) for v in value)


def step_number(value: Any) -> bool:
    """A step TensorBoard can record: a whole number from 0 within int64."""
    return type(value) is int and 0 <= value < 2 ** 63


def named(check: Check, key: Callable[[Any], bool] = lambda k: isinstance(k, str)) -> Check:
    """A mapping whose keys pass `key` (names, by default) and whose values pass `check`."""
    return lambda value: isinstance(value, dict) and all(key(k) and check(v) for k, v in value.items())


def json_like(value: Any, depth: int = 0) -> bool:
    """What summary.json can hold (a few levels deep)."""
    if isinstance(value, dict):
        return depth < 8 and all(isinstance(k, str) and json_like(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return depth < 8 and all(json_like(v, depth + 1) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def require(fits: bool, what: str) -> None:
    if not fits:
        raise ValueError(f"the saved {what} is not one a run writes")
