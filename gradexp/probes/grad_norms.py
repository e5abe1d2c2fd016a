"""grad_norm/<param>, grad_norm/total (before clipping) and grad_norm/total_clipped (after)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from gradexp.probes.base import Probe, Scalars, named_parameters
from gradexp.probes.norms import combined_norm, exact_norms


def _named_grads(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    pairs = [(name, p.grad) for name, p in named_parameters(model) if p.grad is not None]
    return [n for n, _ in pairs], [g for _, g in pairs]


class GradNorms(Probe):
    def after_backward(self, model: nn.Module) -> Scalars:
        names, grads = _named_grads(model)
        if not grads:
            return {}
        norms = exact_norms(grads)  # batched, exact down to subnormals, results stay on device
        scalars = {f"grad_norm/{n}": v for n, v in zip(names, norms)}
        scalars["grad_norm/total"] = combined_norm(norms)
        return scalars

    def after_clip(self, model: nn.Module, clip_norm: Optional[Tensor]) -> Scalars:
        _, grads = _named_grads(model)
        if not grads:
            return {}
        return {"grad_norm/total_clipped": combined_norm(exact_norms(grads))}
