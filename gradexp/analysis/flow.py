"""How a gradient norm changes across depth (or time): the two numbers verdicts, reports and the theory baseline share.

Convention: `norms[i]` belongs to layer i in forward order, so the gradient travels from the last entry to the first.
A per-layer gain below 1 means the gradient shrinks on its way back to the input (vanishing), above 1 it grows."""
from __future__ import annotations

import math
from functools import lru_cache
from operator import itemgetter
from typing import Callable, Optional, Sequence


def per_layer_gain(norms: Sequence[float], at: Optional[Sequence[int]] = None) -> Optional[float]:
    """exp(-slope) of a least-squares fit of log(norm) against layer index (`at`: each norm's depth, default its
    place): the factor per layer travelled backward. None when fewer than two positive finite norms exist (the fit
    would be meaningless)."""
    points = [(i, math.log(n)) for i, n in zip(range(len(norms)) if at is None else at, norms)
              if n is not None and math.isfinite(n) and n > 0]
    if len(points) < 2:
        return None
    mean_i = sum(i for i, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var_i = sum((i - mean_i) ** 2 for i, _ in points)
    slope = sum((i - mean_i) * (y - mean_y) for i, y in points) / var_i
    return math.exp(-slope)


def first_last_ratio(norms: Sequence[float]) -> Optional[float]:
    """norm of the first layer over norm of the last: the share of the output-side gradient that reaches layer 0."""
    if len(norms) < 2 or not norms[-1] or norms[0] is None or not all(math.isfinite(n) for n in (norms[0], norms[-1])):
        return None
    return norms[0] / norms[-1]


def gain_spread(norms: Sequence[float]) -> Optional[dict[str, object]]:
    """How far a measured per-layer gain can be trusted: the per-layer gains norms[i-1]/norms[i] vary around the
    fitted one (random weights make each layer's factor a random variable, and a single net is one draw).
    Returns their range and a ~95 % interval of their geometric mean, exp(mean ± 2 sd/sqrt(n)) of the log-ratios
    (treating layers as independent draws); None with fewer than three usable layers (no spread to speak of)."""
    logs = [math.log(a / b) for a, b in zip(norms[:-1], norms[1:])
            if a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0]
    if len(logs) < 2:
        return None
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    half = 2 * sd / math.sqrt(len(logs))
    return {"per_layer": [math.exp(min(logs)), math.exp(max(logs))], "interval95": [math.exp(mean - half), math.exp(mean + half)],
            "layers": len(logs) + 1}


ACT_STATS = ("act_mean", "act_std", "act_saturation")
ATTENTION_STATS = ("attn_entropy",)  # layers with attention only (probes/attn_entropy.py)


def layer_quantities(values: dict[str, float], layer_names: list[str]) -> dict[str, float]:
    """Per hidden layer: grad_norm (L2 over all its parameters' gradients), act_grad_norm, the activation statistics
    and the attention entropy, as logged. This runs at every logging step, on the same tags every time: which tags
    feed which quantity is worked out once per tuple of tags (_plan)."""
    copied, combined = _plan(tuple(values), tuple(layer_names))
    out = {tag: values[tag] for tag in copied}
    for key, parts in combined:
        out[key] = math.hypot(*parts(values))  # scaled internally: squares of tiny norms do not underflow
    return out


@lru_cache(maxsize=32)
def _plan(tags: tuple[str, ...], layer_names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[tuple[str, Callable], ...]]:
    """(the per-layer tags logged as they are, (grad_norm/<layer>, values -> its parameters' grad norms in the order
    logged) per layer). A parameter belongs to every watched layer whose name is a dotted prefix of its own."""
    layers = set(layer_names)
    parts: dict[str, list[str]] = {}
    for tag in tags:
        if not tag.startswith("grad_norm/"):
            continue
        param = tag[len("grad_norm/"):]
        at = param.find(".")
        while at > 0:
            if param[:at] in layers:
                parts.setdefault(param[:at], []).append(tag)
            at = param.find(".", at + 1)
    present = set(tags)
    copied = tuple(f"{quantity}/{name}" for name in layer_names for quantity in ("act_grad_norm", *ACT_STATS, *ATTENTION_STATS)
                   if f"{quantity}/{name}" in present)
    return copied, tuple((f"grad_norm/{name}", _getter(parts[name])) for name in layer_names if name in parts)


def _getter(tags: list[str]) -> Callable[[dict], tuple]:
    """values -> (values[tag] for tag in tags) as a tuple (itemgetter gives a bare value for a single tag)."""
    get = itemgetter(*tags)
    return get if len(tags) > 1 else lambda values: (get(values),)
