"""Verdicts from measurements: read the per-layer (and, for recurrent models, per-time-step) gradient norms that
summary.json holds, and label the run vanishing | exploding | healthy | diverged with a sentence of evidence.

Measures come from gradexp.flow (per-layer gain, first/last ratio); what to try comes from gradexp.advice.
Nothing here touches torch: it works on the summary dict, so `gradexp report` and tests can call it on any run."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from gradexp.advice import Factors, suggest
from gradexp.flow import first_last_ratio, per_layer_gain

SYMBOL = {"act_grad_norm": "‖∂L/∂h‖", "grad_norm": "‖∂L/∂θ‖"}
WHEN = {"first": "at step 0", "last": "at the last logged step"}


@dataclass
class Flow:
    """How a gradient norm changes along one axis (depth or time) at the first and last logged step."""
    quantity: str                     # act_grad_norm | grad_norm | bptt_grad_norm/<layer>
    gain: dict[str, Optional[float]]  # "first"/"last" -> factor per layer (per time step) travelled backward
    ratio: dict[str, Optional[float]]  # "first"/"last" -> norm at index 0 / norm at the last index
    length: int                       # layers (or time steps) measured

    def worst(self) -> str:
        """'first' or 'last': the step whose gain is farthest from 1 (the verdict is about the worse of the two)."""
        known = [w for w in ("first", "last") if self.gain[w] is not None]
        if not known:
            return "last"
        return max(known, key=lambda w: abs(math.log(self.gain[w])))


def depth_flow(summary: dict[str, Any]) -> Optional[Flow]:
    """Flow across hidden layers, from act_grad_norm when every layer has it, else the layers' grad_norm."""
    layers = summary.get("layers") or []
    for quantity in ("act_grad_norm", "grad_norm"):
        if len(layers) >= 2 and all(quantity in layer for layer in layers):
            series = {w: [_num(layer[quantity][w]) for layer in layers] for w in ("first", "last")}
            return _flow(quantity, series, len(layers))
    return None


def time_flow(summary: dict[str, Any]) -> Optional[Flow]:
    """Flow across time steps (summary['bptt'], recurrent models): the layer whose gain is farthest from 1."""
    flows = [_flow(f"bptt_grad_norm/{name}", {w: [_num(v) for v in per_step.get(w) or []] for w in ("first", "last")},
                   len(per_step.get("last") or per_step.get("first") or []))
             for name, per_step in sorted((summary.get("bptt") or {}).items())]
    flows = [f for f in flows if f.gain[f.worst()] is not None]
    return max(flows, key=lambda f: abs(math.log(f.gain[f.worst()])), default=None)


def _flow(quantity: str, series: dict[str, list[float]], length: int) -> Flow:
    return Flow(quantity, {w: per_layer_gain(s) for w, s in series.items()},
                {w: first_last_ratio(s) for w, s in series.items()}, length)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def classify(flow: Optional[Flow], low_gain: float, high_gain: float, conf: Any) -> str:
    """vanishing | exploding | healthy for the worse step of one flow (gain first, then the first/last ratio)."""
    if flow is None:
        return "healthy"
    gain, ratio = flow.gain[flow.worst()], flow.ratio[flow.worst()]
    if gain is not None and gain < low_gain:
        return "vanishing"
    if gain is not None and gain > high_gain:
        return "exploding"
    if ratio is not None and ratio < conf.vanishing_ratio:  # a steep drop confined to a few layers
        return "vanishing"
    if ratio is not None and ratio > conf.exploding_ratio:
        return "exploding"
    return "healthy"


def diagnose(summary: dict[str, Any], factors: Factors, conf: Any) -> dict[str, Any]:
    """The verdict dict stored in summary.json: label, cause, evidence, suggestions and the numbers behind them.
    `conf` is the `diagnose` config node (thresholds)."""
    depth, time = depth_flow(summary), time_flow(summary)
    depth_label = classify(depth, conf.vanishing_gain, conf.exploding_gain, conf)
    time_label = classify(time, conf.time_vanishing_gain, conf.time_exploding_gain, conf)
    sentences = [s for s in (depth_evidence(depth), time_evidence(time)) if s]
    if summary.get("status") == "diverged" or summary.get("nonfinite"):
        label, axis = "diverged", "depth"
        sentences.insert(0, diverged_evidence(summary))
    elif depth_label != "healthy":
        label, axis = depth_label, "depth"
    else:
        label, axis = time_label, "time" if time_label != "healthy" else "depth"
    cause, suggestions = suggest(label, axis, factors, depth_label if label == "diverged" else None)
    return {
        "label": label, "cause": cause, "evidence": " ".join(sentences) or "no per-layer gradients were measured.",
        "suggestions": suggestions,
        "gain": depth.gain[depth.worst()] if depth else None,
        "first_last_ratio": depth.ratio[depth.worst()] if depth else None,
        "time_gain": time.gain[time.worst()] if time else None,
    }


def depth_evidence(flow: Optional[Flow]) -> str:
    if flow is None:
        return "Fewer than two hidden layers: nothing for the gradient to vanish across."
    return _sentence(flow, SYMBOL[flow.quantity], "layer", "per layer")


def time_evidence(flow: Optional[Flow]) -> str:
    if flow is None:
        return ""
    layer = flow.quantity.split("/", 1)[1]
    return _sentence(flow, f"Through time in {layer}, ‖∂L/∂h_t‖", "time step", "per time step")


def _sentence(flow: Flow, what: str, unit: str, per: str) -> str:
    worst = flow.worst()
    gain, ratio = flow.gain[worst], flow.ratio[worst]
    if gain is None:
        return f"{what}: no finite norms {WHEN[worst]}."
    verb = "shrinks" if gain < 1 else "grows"
    text = f"{what} {verb} ×{gain:.3g} {per} {WHEN[worst]}"
    if ratio is not None:
        text += f"; {unit} 0 gets {ratio:.2g} of {unit} {flow.length - 1}'s gradient"
    other = "last" if worst == "first" else "first"
    if flow.gain[other] is not None:
        text += f" (×{flow.gain[other]:.3g} {WHEN[other]})"
    return text + "."


def diverged_evidence(summary: dict[str, Any]) -> str:
    where = summary.get("nonfinite") or {}
    if "step" in where:
        return f"{where.get('tensor', 'the loss')} became NaN/Inf at step {where['step']}."
    return "The loss became NaN/Inf."
