"""Verdicts from measurements: is gradient flow a problem in this run, and when?

Reads the per-layer (and, for recurrent models, per-time-step) gradient norms that summary.json holds and judges
two moments apart: at initialisation (the first logged step) and at the end of training (the last logged step).
The headline label (vanishing | exploding | healthy | diverged) is
- diverged when the loss or a gradient went NaN/Inf;
- the end-of-training label when the gradient does not reach every layer (time step) at a usable size by the end
  (`classify`: what reaches index 0 is below diagnose.vanishing_ratio or above diagnose.exploding_ratio of what
  the last index gets);
- the initialisation label when the run started with a gradient problem and did not train (its last train loss
  is above TRAINED_LOSS_RATIO x its first): the problem cost the run its training. For a run that does not
  train, a per-layer (per-step) gain past its threshold is itself a problem (`classify(strict=True)`);
- healthy otherwise: the gradient reaches every layer at a usable size at the end, and the run trains (a run that
  starts vanishing and recovers says so in the evidence).
The cause and what to try come from gradexp.analysis.advice, given the evidence gathered here (saturation, dead units,
measured gain against the mean-field gain, gain through time). Nothing here touches torch: it works on the summary
dict, so `gradexp report` and tests can call it on any run."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from gradexp.analysis.advice import Evidence, Factors, precision_loss, suggest
from gradexp.analysis.flow import first_last_ratio, per_layer_gain

SYMBOL = {"act_grad_norm": "‖∂L/∂h‖", "grad_norm": "‖∂L/∂θ‖"}
MOMENTS = {"at_init": "first", "at_end": "last"}  # verdict key -> summary key of the logged step it judges
WHEN = {"first": "at initialisation (step 0)", "last": "at the end of training"}
TRAINED_LOSS_RATIO = 0.5  # "trains": the last logged train loss is at most half the first
LABELS = ("vanishing", "exploding")  # a moment's findings; else healthy, or NO_FINITE where nothing could be judged
NO_FINITE = "no finite norms"


@dataclass
class Flow:
    """How a gradient norm changes along one axis (depth or time) at the first and last logged step."""
    quantity: str                     # act_grad_norm | grad_norm | bptt_grad_norm/<layer>
    gain: dict[str, Optional[float]]  # "first"/"last" -> factor per layer (per time step) travelled backward
    ratio: dict[str, Optional[float]]  # "first"/"last" -> norm at index `start` / norm at index `end`
    length: int                       # layers (or time steps) measured
    start: int = 0                    # the index of the first one (leading frozen layers take in no gradient)
    end: Optional[int] = None         # the index of the last one: start + length - 1 unless the indices skip some
    finite: dict[str, bool] = dataclasses.field(default_factory=dict)  # "first"/"last" -> any norm finite (0 is)
    zeros: dict[str, int] = dataclasses.field(default_factory=dict)  # "first"/"last" -> norms exactly 0 (dead layers)

    @property
    def span(self) -> int:
        """Layers (time steps) the gradient travels through from the last index back to the first."""
        return (self.start + self.length - 1 if self.end is None else self.end) - self.start

    def worst(self) -> str:
        """'first' or 'last': the step whose gain is farthest from 1 (gradexp report's gain column)."""
        known = [w for w in ("first", "last") if self.gain[w] is not None]
        if not known:
            return "last"
        return max(known, key=lambda w: abs(math.log(self.gain[w])))


def depth_flow(summary: dict[str, Any]) -> Optional[Flow]:
    """Flow across hidden layers, from act_grad_norm when every layer has it, else the layers' grad_norm. Leading
    layers without either are left out: frozen first layers (fine-tuning) take in no gradient, and the flow starts
    at the first layer the gradient reaches (found by a user: a frozen first layer left a run with no verdict)."""
    layers, start = summary.get("layers") or [], 0
    while start < len(layers) and not any(quantity in layers[start] for quantity in ("act_grad_norm", "grad_norm")):
        start += 1
    reached = layers[start:]
    at = _depths(layers)[start:]  # a watched subset skips layers
    for quantity in ("act_grad_norm", "grad_norm"):
        if len(reached) >= 2 and all(quantity in layer for layer in reached):
            series = {w: [_num(layer[quantity][w]) for layer in reached] for w in ("first", "last")}
            return dataclasses.replace(_flow(quantity, series, len(reached), at), start=at[0], end=at[-1])
    return None


MAX_DEPTH = 10 ** 6  # a layer index beyond it is no model's (a forged one spaced 1e18 apart read gain 1.0)


def _depths(layers: list) -> list[int]:
    """Each layer's depth: its `index` (summary.json writes one where the watched layers skip some,
    probes.layers.depths_of) where every entry has a whole one in [0, MAX_DEPTH], they never decrease and the last is
    past the first (a summary is untrusted input); else its place."""
    found = [layer.get("index") if isinstance(layer, dict) else None for layer in layers]
    if all(type(i) is int and 0 <= i <= MAX_DEPTH for i in found) and found and found[0] < found[-1] and all(
            a <= b for a, b in zip(found, found[1:])):
        return found
    return list(range(len(layers)))


def time_flows(summary: dict[str, Any]) -> list[Flow]:
    """One flow across time steps per recurrent layer (summary['bptt'])."""
    return [_flow(f"bptt_grad_norm/{name}", {w: [_num(v) for v in per_step.get(w) or []] for w in ("first", "last")},
                  len(per_step.get("last") or per_step.get("first") or []))
            for name, per_step in sorted((summary.get("bptt") or {}).items())]


def time_flow(summary: dict[str, Any], when: Optional[str] = None) -> Optional[Flow]:
    """The recurrent layer whose gain through time is farthest from 1 at `when` (default: at its worse step)."""
    known = [(f, when or f.worst()) for f in time_flows(summary)]
    known = [(f, w) for f, w in known if f.gain[w] is not None]
    return max(known, key=lambda fw: abs(math.log(fw[0].gain[fw[1]])), default=(None, None))[0]


def _flow(quantity: str, series: dict[str, list[float]], length: int, at: Optional[list[int]] = None) -> Flow:
    return Flow(quantity, {w: per_layer_gain(s, at) for w, s in series.items()},
                {w: first_last_ratio(s) for w, s in series.items()}, length,
                finite={w: any(math.isfinite(v) for v in s) for w, s in series.items()},
                zeros={w: sum(v == 0 for v in s) for w, s in series.items()})


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def classify(flow: Optional[Flow], when: str, low_gain: float, high_gain: float, conf: Any, strict: bool) -> str:
    """vanishing | exploding | healthy for one flow at one step.
    Not strict (a run that trains): by whether the gradient reaches index 0 at a usable size, i.e. the measured
    first/last ratio, or the fitted per-step gain compounded over the axis when that gain is itself past its
    threshold (robust to a noisy end point), lies outside [vanishing_ratio, exploding_ratio]: a gain of 0.8 over
    6 layers (layer 0 gets 0.33) is usable, over 40 time steps (1e-4) it is not.
    Strict (a run that does not train): a per-step gain past its threshold is enough (the old rule)."""
    if flow is None:
        return "healthy"
    gain, ratio = flow.gain[when], flow.ratio[when]
    across = gain ** flow.span if gain is not None else None  # the fit's first/last ratio
    low = gain is not None and gain < low_gain and (strict or across < conf.vanishing_ratio)
    high = gain is not None and gain > high_gain and (strict or across > conf.exploding_ratio)
    if low or (ratio is not None and ratio < conf.vanishing_ratio):
        return "vanishing"
    if high or (ratio is not None and ratio > conf.exploding_ratio):
        return "exploding"
    return "healthy"


def moment(depth: Optional[Flow], time: Optional[Flow], when: str, conf: Any, strict: bool) -> dict[str, Any]:
    """The verdict on one logged step: its label, the axis it was found along, and the gains behind it.
    `usable` is the label by usable size alone (what the headline asks of the end of training)."""
    labels = {}
    for rule in sorted({strict, False}):
        depth_label = classify(depth, when, conf.vanishing_gain, conf.exploding_gain, conf, rule)
        time_label = classify(time, when, conf.time_vanishing_gain, conf.time_exploding_gain, conf, rule)
        labels[rule] = (depth_label, "depth") if depth_label != "healthy" else (time_label, "time")
    label, axis = labels[strict]
    if _no_finite_norms(depth, when) and _no_finite_norms(time, when) and (depth or time):
        label = NO_FINITE  # nothing to judge there: "healthy" read as a finding (found by a new user, diverged run)
    return {
        "label": label, "axis": axis if label in LABELS else None, "usable": labels[False][0],
        "gain": depth.gain[when] if depth else None, "first_last_ratio": depth.ratio[when] if depth else None,
        "time_gain": time.gain[when] if time else None, "time_first_last_ratio": time.ratio[when] if time else None,
        "time_layer": time.quantity.split("/", 1)[1] if time else None,
    }


def _no_finite_norms(flow: Optional[Flow], when: str) -> bool:
    """Every norm of the flow at `when` is inf/NaN (zeros are finite: a gradient that vanished entirely)."""
    return flow is None or not flow.finite.get(when, True)


def trained(summary: dict[str, Any]) -> Optional[bool]:
    """Did the train loss fall to TRAINED_LOSS_RATIO of its first logged value, and below the loss of the best
    prediction that ignores the input where the run knows it (initial.loss/constant, Task.constant_loss: halving a
    bad start's loss down to the targets' mean is no training; halving that one too would ask a character model to
    beat the unigram entropy by half, a review found)? None when it cannot be told."""
    first = (summary.get("initial") or {}).get("loss/train")
    last = (summary.get("final") or {}).get("loss/train")
    if first is None or last is None or not first > 0 or summary.get("steps", 0) < 2:
        return None
    constant = _constant(summary)
    return last <= TRAINED_LOSS_RATIO * first and (constant is None or last < constant)


def _constant(summary: dict[str, Any]) -> Optional[float]:
    value = (summary.get("initial") or {}).get("loss/constant")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def headline(summary: dict[str, Any], at_init: dict, at_end: dict, trains: Optional[bool]) -> tuple[str, str]:
    """(label, 'at_init' | 'at_end'): what the run's gradient flow amounts to, and the moment that decides it.
    A run that does not train is judged first by its start: a problem there is what cost it the training."""
    if summary.get("status") == "diverged" or summary.get("nonfinite"):
        return "diverged", "at_end"
    if at_end["usable"] != "healthy":
        return at_end["usable"], "at_end"
    if trains is not True:
        for key, judged in (("at_init", at_init), ("at_end", at_end)):
            if judged["label"] in LABELS:
                return judged["label"], key
    return "healthy", "at_end"


def diagnose(summary: dict[str, Any], factors: Factors, conf: Any) -> dict[str, Any]:
    """The verdict dict stored in summary.json: label, the two moments, cause, evidence and suggestions.
    `conf` is the `diagnose` config node (thresholds)."""
    depth = depth_flow(summary)
    times = {w: time_flow(summary, w) for w in ("first", "last")}
    trains = trained(summary)
    moments = {key: moment(depth, times[w], w, conf, strict=trains is not True) for key, w in MOMENTS.items()}
    label, decisive = headline(summary, moments["at_init"], moments["at_end"], trains)
    judged = moments[decisive]
    since_init = moments["at_init"]["label"] == label  # the problem was there from the start: look for its root there
    evidence = gather(summary, "first" if since_init else MOMENTS[decisive], judged, since_init)
    cause, why, suggestions = suggest(label, judged["axis"] or "depth", factors, evidence,
                                      moments["at_end"]["label"] if label == "diverged" else None)
    lost, remedies = precision_loss(factors, evidence)
    if lost and label == "vanishing":
        cause = "fp16 underflow: gradients below fp16's range flush to zero"
    suggestions = list(dict.fromkeys([*remedies, *suggestions]))  # the precision fix first: it is the cheapest
    sentences = [diverged_evidence(summary)] if label == "diverged" else []
    sentences += [moment_sentence(depth, times[w], w, summary.get("first_step") or 0) for w in ("first", "last")]
    sentences += [training_sentence(summary, trains), why, lost]
    return {
        "label": label, "decided_by": decisive, "cause": cause,
        "evidence": " ".join(s for s in sentences if s), "suggestions": suggestions,
        "at_init": moments["at_init"], "at_end": moments["at_end"], "trained": trains,
        # the gains of the moment that decided the label (HParams, gradexp report)
        "gain": judged["gain"], "first_last_ratio": judged["first_last_ratio"], "time_gain": judged["time_gain"],
        # where mean-field theory does not apply it says so, rather than giving a number for another model
        "theory": f"mean-field theory does not apply: {factors.theory_note}" if factors.theory_note else None,
    }


def gather(summary: dict[str, Any], when: str, judged: dict, since_init: bool) -> Evidence:
    """What the logs say about the cause at step `when`: saturation / dead units, the judged gains, and (when the
    problem was there from initialisation) the step-0 mean-field theory of this init and of proper ones."""
    fractions = [layer["act_saturation"][when] for layer in summary.get("layers") or []
                 if layer.get("act_saturation") and layer["act_saturation"].get(when) is not None]
    theory = summary.get("theory") or {}
    underflow = {k: v for k, v in ((summary.get("amp") or {}).get("underflow_max") or {}).items() if v is not None}
    return Evidence(
        when=when, first_step=summary.get("first_step") or 0, saturation=max(fractions) if fractions else None,
        gain=judged["gain"], time_gain=judged["time_gain"],
        theory_gain=theory.get("predicted_gain") if since_init else None,
        theory_alternatives=(theory.get("alternatives") or {}) if since_init else {},
        measured_init_gain=theory.get("measured_gain"),
        underflow=max(underflow.values()) if underflow else None,
    )


def moment_sentence(depth: Optional[Flow], time: Optional[Flow], when: str, first_step: int = 0) -> str:
    """'At initialisation (step 0): ‖∂L/∂h‖ shrinks ×0.41 per layer, layer 0 gets 0.012 of layer 5's gradient.'
    A recurrent model with one layer has only the through-time clause (no depth to speak of). `first_step`: the
    step the first values come from (summary.json's first_step: a loss scaler skipped the ones before)."""
    parts = []
    if depth is not None:
        parts.append(_clause(depth, when, SYMBOL[depth.quantity], "layer", "per layer"))
    if time is not None:
        layer = time.quantity.split("/", 1)[1]
        parts.append(_clause(time, when, f"through time in {layer}, ‖∂L/∂h_t‖", "time step", "per time step"))
    if not parts:
        return "" if when == "last" else "Fewer than two hidden layers and no time steps measured: nothing to judge."
    moment = WHEN[when] if when == "last" or not first_step else (
        f"at step {first_step}, the first logged step whose norms are finite (the loss scaler skipped step 0)")
    return f"{moment[0].upper()}{moment[1:]}: " + "; ".join(parts) + "."


def _clause(flow: Flow, when: str, what: str, unit: str, per: str) -> str:
    gain, ratio = flow.gain[when], flow.ratio[when]
    if gain is None and flow.zeros.get(when) and flow.finite.get(when, True):  # finite, but no two above 0 to fit
        # found by a new user: ReLUs killed by a large learning rate read "no finite norms" over norms of exactly 0
        return f"{what} is exactly 0 in {flow.zeros[when]} of {flow.length} {unit}s: no gradient reaches them"
    if gain is None:
        return f"{what}: no finite norms"
    text = f"{what} {'shrinks' if gain < 1 else 'grows'} ×{gain:.3g} {per}"
    if ratio is not None:
        text += f", {unit} {flow.start} gets {ratio:.2g} of {unit} {flow.start + flow.span}'s gradient"
    return text


def training_sentence(summary: dict[str, Any], trains: Optional[bool]) -> str:
    if trains is None:
        return ""
    first, last = summary["initial"]["loss/train"], summary["final"]["loss/train"]
    constant = _constant(summary)
    said = f"Train loss {first:.3g} → {last:.3g}: "
    if constant is not None and last <= TRAINED_LOSS_RATIO * first and not last < constant:  # halved, to no avail
        return said + (f"halved, but no lower than {constant:.3g}, what predicting without the input reaches, so it "
                       "does not count as trained.")
    # "not halved" rather than "does not train": a short run whose loss fell by 40 % read "it does not train"
    return said + ("it trains (halved)." if trains else "not halved, so it does not count as trained.")


def diverged_evidence(summary: dict[str, Any]) -> str:
    where = summary.get("nonfinite") or {}
    if "step" in where:
        return f"{where.get('tensor', 'the loss')} became NaN/Inf at step {where['step']}."
    return "The loss became NaN/Inf."
