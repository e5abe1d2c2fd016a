"""grad_norm/<param>, grad_norm/total (before clipping) and grad_norm/total_clipped (after)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from gradexp.probes.base import Probe, Scalars, named_parameters, parameter_names, with_tied
from gradexp.probes.norms import norms_and_total


def _named_grads(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    named = named_parameters(model)
    grads = [p.grad for _, p in named]
    if all(g is not None for g in grads):  # the usual case: the names as walked once
        return parameter_names(model), grads
    pairs = [(name, g) for (name, _), g in zip(named, grads) if g is not None]
    return [n for n, _ in pairs], [g for _, g in pairs]


class GradNorms(Probe):
    def __init__(self) -> None:
        # what after_backward measured: the gradient tensors, their version counters and the total norm. If
        # nothing changed them in place by after_clip (no clip policy, or one that left them alone), the total
        # after clipping is the same number: no second pass over every gradient.
        self.seen: Optional[tuple[list[Tensor], list[int], Tensor]] = None

    def after_backward(self, model: nn.Module) -> Scalars:
        names, grads = _named_grads(model)
        if not grads:
            return {}
        norms, total = norms_and_total(grads)  # batched, exact down to subnormals; (P,) float64 and the total
        self.seen = (grads, [g._version for g in grads], total)
        return {**with_tied(model, "grad_norm/", names, norms), "grad_norm/total": total}

    def after_clip(self, model: nn.Module, clip_norm: Optional[Tensor]) -> Scalars:
        _, grads = _named_grads(model)
        seen, self.seen = self.seen, None
        if not grads:
            return {}
        if seen is not None and _unchanged(seen[0], seen[1], grads):
            return {"grad_norm/total_clipped": seen[2]}
        return {"grad_norm/total_clipped": norms_and_total(grads)[1]}


def _unchanged(before: list[Tensor], versions: list[int], now: list[Tensor]) -> bool:
    """The same gradient tensors, none modified in place since (every in-place op bumps a tensor's version)."""
    return len(before) == len(now) and all(a is b and a._version == v for a, b, v in zip(before, now, versions))
