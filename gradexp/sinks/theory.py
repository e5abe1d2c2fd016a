"""The mean-field baseline beside the measurements: theory/act_grad_norm/<layer> in TensorBoard at the first
logged step, and summary["theory"] (predicted vs measured per-layer gain) in summary.json.

The prediction (gradexp/analysis/theory.py) is computed before training from the config and the data; this sink only
anchors it to the measured act_grad_norm of the last hidden layer at the first logged step and displays it.
summary["theory"] is null where the theory does not apply (not model=mlp, a norm layer, or residual)."""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Optional

from gradexp.analysis import theory
from gradexp.data.tasks import Task
from gradexp.analysis.flow import gain_spread, per_layer_gain
from gradexp.outcome import Outcome


class TheorySink:
    def __init__(self, prediction: theory.MeanField, tensorboard: Any, sections: dict[str, Any],
                 alternatives: Optional[dict[str, float]] = None):
        self.alternatives = alternatives or {}  # "init=..." -> mean-field gain of the same net with that init
        # sections: the summary sink's extra fields; summary["theory"] is filled at the first logged step and,
        # living there, travels with the summary sink's state into checkpoints (a resumed run keeps it)
        self.prediction, self.tensorboard, self.sections = prediction, tensorboard, sections
        self.sections["theory"] = None

    def log(self, step: int, values: dict[str, float]) -> None:
        tags = [f"act_grad_norm/{name}" for name in self.prediction.layer_names]
        if self.sections["theory"] is not None or not all(tag in values for tag in tags):
            return  # only the first logged step that carries every hidden layer's act_grad_norm
        measured = [_finite(values[tag]) for tag in tags]
        predicted = [_finite(p) for p in self.prediction.predicted_norms(measured[-1] or math.nan)]
        self.tensorboard.log(step, {f"theory/{tag}": p for tag, p in zip(tags, predicted) if p is not None})
        self.sections["theory"] = theory_section(self.prediction, predicted, measured, step)
        self.sections["theory"]["alternatives"] = self.alternatives

    def close(self, outcome: Outcome) -> None:
        pass


def middle(norms: list[float]) -> list[float]:
    """Layers 1 .. L-2 when there are at least 4: the input dimension and the head's rank do not enter there."""
    return norms[1:-1] if len(norms) >= 4 else norms


def _finite(value: float) -> Optional[float]:
    """JSON has no NaN/Inf: a step-0 gradient that is already non-finite leaves null (the status says why)."""
    return value if math.isfinite(value) else None


def theory_section(mf: theory.MeanField, predicted: list, measured: list, step: int) -> dict[str, Any]:
    """per_layer[l]: predicted and measured act_grad_norm, gain = sqrt(chi_l) (norm of layer l-1 over layer l;
    for layers.0 toward the input) and q = the pre-activation variance. measured_gain_spread: the range of the
    measured per-layer gains and a ~95 % interval of their geometric mean (flow.gain_spread), so that agreement
    with predicted_gain can be told from one net's noise."""
    return {
        "step": step,
        "predicted_gain": per_layer_gain(middle(predicted)),  # per layer backward, fit over the middle layers
        "measured_gain": per_layer_gain(middle(measured)),
        "measured_gain_spread": gain_spread(middle(measured)),
        "per_layer": {
            name: {"predicted": p, "measured": m, "gain": math.sqrt(chi), "q": q}
            for name, p, m, chi, q in zip(mf.layer_names, predicted, measured, mf.chi, mf.q)
        },
    }


def attach(cfg: Any, task: Task, sinks: list) -> list:
    """A TheorySink writing through the run's TensorBoard sink, its section registered with the summary sink;
    [] (and summary["theory"] = null) where the theory does not apply."""
    from gradexp.sinks.summary import SummarySink
    from gradexp.sinks.tensorboard import TensorBoardSink

    tensorboard = next(s for s in sinks if isinstance(s, TensorBoardSink))
    summary = next(s for s in sinks if isinstance(s, SummarySink))
    if theory.not_applicable(cfg) is not None:
        summary.sections["theory"] = None
        return []
    x = task.x_train.flatten(1)  # (N, D): the first layer's fan_in is D
    dim, mean_square = x.shape[1], float(x.pow(2).mean())
    return [TheorySink(theory.mean_field(cfg, dim, mean_square), tensorboard, summary.sections,
                       alternatives(cfg, dim, mean_square))]


PROPER_INITS = ("xavier_normal", "kaiming_normal")


def alternatives(cfg: Any, dim: int, mean_square: float) -> dict[str, float]:
    """The overrides of each proper init (gain 1) -> the mean-field per-layer gain it predicts for this net; the
    verdict's advice picks the one closest to 1 (gradexp/analysis/advice.py)."""
    out = {}
    for scheme in PROPER_INITS:
        init = SimpleNamespace(scheme=scheme, gain=1.0, std=cfg.init.std)
        override = f"init={scheme}" + ("" if cfg.init.gain == 1 else " init.gain=1")
        gain = per_layer_gain(middle(theory.mean_field(cfg, dim, mean_square, init).predicted_norms(1.0)))
        if gain is not None:
            out[override] = gain
    return out
