"""grad_norm/<param>, grad_norm/total (before clipping) and grad_norm/total_clipped (after)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from gradexp.probes.base import Probe, Scalars, named_parameters


def _named_grads(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    pairs = [(name, p.grad) for name, p in named_parameters(model) if p.grad is not None]
    return [n for n, _ in pairs], [g for _, g in pairs]


def global_norm(norms: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack(norms))


class GradNorms(Probe):
    def after_backward(self, model: nn.Module) -> Scalars:
        names, grads = _named_grads(model)
        if not grads:
            return {}
        norms = torch._foreach_norm(grads)  # one batched kernel launch per dtype/device, results stay on device
        scalars = {f"grad_norm/{n}": v for n, v in zip(names, norms)}
        scalars["grad_norm/total"] = global_norm(norms)
        return scalars

    def after_clip(self, model: nn.Module, clip_norm: Optional[Tensor]) -> Scalars:
        _, grads = _named_grads(model)
        if not grads:
            return {}
        return {"grad_norm/total_clipped": global_norm(torch._foreach_norm(grads))}
