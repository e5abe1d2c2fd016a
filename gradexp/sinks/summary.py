"""summary.json: the run's result for other tools (fields fixed by the design). Written atomically
(temp file + rename) so a reader never sees half a file, at every exit path."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Optional

from gradexp.train import Outcome

FINAL_KEYS = ("loss/train", "acc/train", "loss/val", "acc/val")
SUMMARY_NAME = "summary.json"


class SummarySink:
    def __init__(self, run_dir: str, overrides: list[str], layer_names: list[str]):
        self.path = os.path.join(run_dir, SUMMARY_NAME)
        self.overrides, self.layer_names = overrides, layer_names
        self.latest: dict[str, float] = {}
        self.first: dict[str, float] = {}    # per-layer quantities at the first logged step
        self.last: dict[str, float] = {}
        self.sections: dict[str, Callable[[], Any]] = {}  # extra top-level field -> its provider (e.g. "theory")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.latest.update(values)
        per_layer = layer_quantities(values, self.layer_names)
        for key, value in per_layer.items():
            self.first.setdefault(key, value)
        self.last.update(per_layer)

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
            "verdict": None,
            "perf": outcome.perf,
        }
        summary.update({name: provide() for name, provide in self.sections.items()})
        if outcome.error:
            summary["error"] = outcome.error
        return summary

    def _layer_entry(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name}
        for quantity in ("grad_norm", "act_grad_norm"):
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
        if f"act_grad_norm/{name}" in values:
            out[f"act_grad_norm/{name}"] = values[f"act_grad_norm/{name}"]
    return out


def _finite_or_none(value: float) -> Optional[float]:
    """JSON has no NaN/Inf; a non-finite number is recorded as null (the status says why)."""
    return value if math.isfinite(value) else None


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
