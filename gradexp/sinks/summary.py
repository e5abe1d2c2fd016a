"""summary.json: the run's result for other tools (fields fixed by the design). Written atomically
(temp file + rename) so a reader never sees half a file, at every exit path."""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any, Optional

from gradexp.train import Outcome

FINAL_KEYS = ("loss/train", "acc/train", "loss/val", "acc/val", "bpc/train", "bpc/val")  # bpc: data=text only
SUMMARY_NAME = "summary.json"
BPTT_PREFIX = "bptt_grad_norm/"
ACT_STATS = ("act_mean", "act_std", "act_saturation")
_SETTINGS = ("path", "overrides", "layer_names")  # given at construction; everything else is run state


class SummarySink:
    def __init__(self, run_dir: str, overrides: list[str], layer_names: list[str]):
        self.path = os.path.join(run_dir, SUMMARY_NAME)
        self.overrides, self.layer_names = overrides, layer_names
        self.latest: dict[str, float] = {}
        self.first: dict[str, float] = {}    # per-layer quantities at the first logged step
        self.last: dict[str, float] = {}
        self.profiles: dict[str, dict[str, list]] = {}  # layer -> {"first": [...], "last": [...]}
        self.sections: dict[str, Any] = {}  # extra top-level fields other sinks fill in (e.g. "theory"); run state

    def log(self, step: int, values: dict) -> None:
        self.latest.update(values)
        for tag, value in values.items():
            if tag.startswith(BPTT_PREFIX):  # full per-time-step profile at the first and last logged step
                entry = self.profiles.setdefault(tag[len(BPTT_PREFIX):], {"first": value, "first_step": step})
                entry.update(last=value, last_step=step)
        per_layer = layer_quantities(values, self.layer_names)
        for key, value in per_layer.items():
            self.first.setdefault(key, value)
        self.last.update(per_layer)

    def state_dict(self) -> dict[str, Any]:
        """Everything accumulated so far (not the settings), so a resumed run reports the same first/last/final
        values; goes into checkpoint.pt. Generic, so values tracked later are carried over too."""
        return copy.deepcopy({k: v for k, v in vars(self).items() if k not in _SETTINGS})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            current = getattr(self, key, None)
            if isinstance(current, dict):  # in place: other sinks hold references to these (theory -> sections)
                current.clear()
                current.update(copy.deepcopy(value))
            else:
                setattr(self, key, copy.deepcopy(value))

    def close(self, outcome: Outcome) -> None:
        write_json_atomic(self.path, self.build(outcome))

    def build(self, outcome: Outcome) -> dict[str, Any]:
        summary = {
            "status": outcome.status,
            "steps": outcome.steps,
            "overrides": self.overrides,
            "final": {k: _finite_or_none(self.latest[k]) for k in FINAL_KEYS if k in self.latest},
            "layers": [self._layer_entry(name) for name in self.layer_names],
            "nonfinite": outcome.nonfinite,
            "verdict": outcome.verdict,
            "perf": outcome.perf,
        }
        if self.profiles:
            summary["bptt"] = {layer: {k: _finite_list(v) for k, v in entry.items()} for layer, entry in self.profiles.items()}
        clip = {k: _finite_or_none(v) for k, v in self.latest.items() if k.startswith("clip/")}
        if clip:
            summary["clip"] = clip  # the last logged clip telemetry
        summary.update(copy.deepcopy(self.sections))
        if outcome.error:
            summary["error"] = outcome.error
        return summary

    def _layer_entry(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name}
        for quantity in ("grad_norm", "act_grad_norm", *ACT_STATS):
            key = f"{quantity}/{name}"
            if key in self.first:
                entry[quantity] = {"first": _finite_or_none(self.first[key]), "last": _finite_or_none(self.last[key])}
        return entry


def layer_quantities(values: dict[str, float], layer_names: list[str]) -> dict[str, float]:
    """Per hidden layer: grad_norm (L2 over all its parameters' gradients) and act_grad_norm, as logged."""
    out: dict[str, float] = {}
    for name in layer_names:
        squares = [v * v for tag, v in values.items() if tag.startswith(f"grad_norm/{name}.")]
        if squares:
            out[f"grad_norm/{name}"] = math.sqrt(sum(squares))
        for quantity in ("act_grad_norm", *ACT_STATS):
            if f"{quantity}/{name}" in values:
                out[f"{quantity}/{name}"] = values[f"{quantity}/{name}"]
    return out


def _finite_or_none(value: float) -> Optional[float]:
    """JSON has no NaN/Inf; a non-finite number is recorded as null (the status says why)."""
    return value if math.isfinite(value) else None


def _finite_list(value: Any) -> Any:
    return [_finite_or_none(v) for v in value] if isinstance(value, list) else value


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
