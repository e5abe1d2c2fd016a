"""update_ratio/<param> = ||theta_after - theta_before|| / ||theta_before|| for the optimizer step just taken.

theta_before is snapshotted after clipping (just before optimizer.step) with one batched foreach copy;
the ratio is computed after the step with foreach ops, so a logging step adds a handful of kernel
launches, not one per parameter. Norms are exact down to subnormals (probes/norms.py). A parameter that was
exactly zero before the step (a zeroed bias at step 0) has a zero denominator: its ratio is reported as inf
(also when it stayed zero), never NaN; summary.json and the README say so."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from gradexp.probes.base import Probe, Scalars, named_parameters
from gradexp.probes.norms import exact_norms


class UpdateRatio(Probe):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.params: list[Tensor] = []
        self.before: list[Tensor] = []

    def after_clip(self, model: nn.Module, clip_norm: Optional[Tensor]) -> Scalars:
        pairs = [(n, p) for n, p in named_parameters(model) if p.grad is not None]  # what the optimizer updates
        self.names = [n for n, _ in pairs]
        self.params = [p.detach() for _, p in pairs]
        self.before = torch._foreach_mul(self.params, 1.0) if self.params else []  # batched copy
        return {}

    def after_step(self, model: nn.Module) -> Scalars:
        if not self.params:
            return {}
        delta = torch._foreach_sub(self.params, self.before)
        moved, size = torch.stack(exact_norms(delta)), torch.stack(exact_norms(self.before))  # (P,) float64
        ratios = torch.where(size > 0, moved / size, torch.inf)  # zero denominator: inf, never 0/0 = NaN
        scalars = {f"update_ratio/{n}": r for n, r in zip(self.names, ratios.unbind())}
        self.names, self.params, self.before = [], [], []
        return scalars
