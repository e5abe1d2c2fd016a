"""The shape of every summary.json field `gradexp report` reads (design.md, summary.json), checked before any is
used: a summary from an untrusted folder may hold a list where an object belongs, a string where a number does. One
wrong field makes the run unreadable with one line that names the field; fields the report does not read are not
checked (a newer writer may add some)."""
from __future__ import annotations

from typing import Any

from gradexp.report.untrusted import Unreadable, printable

NUMBER = "a number or null"
WHENS = ("first", "last")


def check(summary: Any) -> None:
    """Raise Unreadable naming the first field whose type is not what gradexp writes."""
    if not isinstance(summary, dict):
        raise Unreadable(f"the top level is {_kind(summary)} (allowed: an object)")
    for key in ("status", "schema_version"):
        _field(summary, key, "", (str,) if key == "status" else (int,), "a string" if key == "status" else "an integer")
    for i, override in enumerate(_field(summary, "overrides", "", (list,), "a list of strings") or []):
        _is(override, (str,), f"overrides[{i}]", "a string")
    for key, value in (_field(summary, "final", "", (dict,), "an object") or {}).items():
        _is(value, (float,), f"final.{_name(key)}", NUMBER)
    verdict = _field(summary, "verdict", "", (dict,), "an object") or {}
    for key in ("label", "evidence", "decided_by"):
        _field(verdict, key, "verdict.", (str,), "a string")
    _field(_field(summary, "perf", "", (dict,), "an object") or {}, "steps_per_s", "perf.", (float,), NUMBER)
    _theory(_field(summary, "theory", "", (dict,), "an object or null") or {})
    _layers(_field(summary, "layers", "", (list,), "a list of objects") or [])
    _bptt(_field(summary, "bptt", "", (dict,), "an object") or {})


def _theory(theory: dict) -> None:
    for key in ("predicted_gain", "measured_gain"):
        _field(theory, key, "theory.", (float,), NUMBER)
    spread = _field(theory, "measured_gain_spread", "theory.", (dict,), "an object") or {}
    interval = _field(spread, "interval95", "theory.measured_gain_spread.", (list,), "a list of two numbers")
    if interval is not None:
        if len(interval) != 2:
            raise Unreadable(f"`theory.measured_gain_spread.interval95` has {len(interval)} items (allowed: 2 numbers)")
        for i, bound in enumerate(interval):
            _is(bound, (float,), f"theory.measured_gain_spread.interval95[{i}]", "a number")
    for key, entry in (_field(theory, "per_layer", "theory.", (dict,), "an object") or {}).items():
        _is(entry, (dict,), f"theory.per_layer.{_name(key)}", "an object")
        _field(entry, "predicted", f"theory.per_layer.{_name(key)}.", (float,), NUMBER)


def _layers(layers: list) -> None:
    """Each layer's gradient norms at the first and last logged step (diagnose.depth_flow reads both)."""
    for i, layer in enumerate(layers):
        _is(layer, (dict,), f"layers[{i}]", "an object")
        for quantity in ("act_grad_norm", "grad_norm"):
            if quantity in layer:
                norms = _is(layer[quantity], (dict,), f"layers[{i}].{quantity}", "an object with first and last")
                for when in WHENS:
                    if when not in norms:
                        raise Unreadable(f"`layers[{i}].{quantity}` has no `{when}` (allowed: first and last)")
                    _field(norms, when, f"layers[{i}].{quantity}.", (float,), NUMBER)


def _bptt(bptt: dict) -> None:
    """Per recurrent layer: ||dL/dh_t|| for every t at the first and last logged bptt step, and those steps."""
    for name, per_step in bptt.items():
        where = f"bptt.{_name(name)}"
        _is(per_step, (dict,), where, "an object")
        for when in WHENS:
            for t, value in enumerate(_field(per_step, when, f"{where}.", (list,), "a list of numbers") or []):
                _is(value, (float,), f"{where}.{when}[{t}]", NUMBER)
            _field(per_step, f"{when}_step", f"{where}.", (int,), "an integer")


def _field(parent: dict, key: str, where: str, kinds: tuple, allowed: str) -> Any:
    """parent[key], checked to be of `kinds` where it is present and not null."""
    value = parent.get(key)
    return None if value is None else _is(value, kinds, f"{where}{key}", allowed)


def _is(value: Any, kinds: tuple, where: str, allowed: str) -> Any:
    """`value` when it is one of `kinds`; None too where a number or null is allowed."""
    if (value is None and allowed == NUMBER) or any(_matches(value, kind) for kind in kinds):
        return value
    raise Unreadable(f"`{where}` is {_kind(value)} (allowed: {allowed})")


def _matches(value: Any, kind: type) -> bool:
    """float: any JSON number that fits a float; int: an integer; bool is neither (JSON's true is no number)."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _fits(value)
    if kind is int:
        return type(value) is int
    return isinstance(value, kind)


def _fits(value: float) -> bool:
    try:
        float(value)
    except OverflowError:  # an integer past 1.8e308
        return False
    return True


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (int, float)):
        return "a number" if _fits(value) else "a number out of range"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _name(key: str) -> str:
    """A key from the file, shown in an error: printable and short."""
    shown = printable(key)
    return shown if len(shown) <= 40 else shown[:40] + "…"
