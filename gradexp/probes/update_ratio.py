"""update_ratio/<param> = ||theta_after - theta_before|| / ||theta_before|| for the optimizer step just taken.

After clipping (just before optimizer.step) ||theta_before|| is measured and theta_before is copied, with one
batched foreach copy, into a buffer kept between logging steps (a fresh copy of every parameter would allocate,
and on CPU fault in, the model's size each logging step); after the step the buffer becomes theta_before -
theta_after in place and is normed. A logging step adds a handful of kernel launches, not one per parameter.
Norms are exact down to subnormals (probes/norms.py). A parameter that was exactly zero before the step (a zeroed
bias at step 0) has a zero denominator: its ratio is reported as inf (also when it stayed zero), never NaN;
summary.json and the README say so."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from gradexp.probes.base import Probe, Scalars, named_parameters, tags
from gradexp.probes.norms import norm_vector
from gradexp.probes.scratch import Scratch


class UpdateRatio(Probe):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.params: list[Tensor] = []
        self.before: list[Tensor] = []   # views into one flat buffer, shaped like self.params
        self.size: Optional[Tensor] = None  # (P,) ||theta_before||
        self.cached: tuple = ([], [], [], [])  # (parameters, names, detached, buffer views) of the last logging step

    def after_clip(self, model: nn.Module, clip_norm: Optional[Tensor]) -> Scalars:
        pairs = [(n, p) for n, p in named_parameters(model) if p.grad is not None]  # what the optimizer updates
        if not pairs:
            return {}
        if self._changed(pairs):
            params = [p.detach() for _, p in pairs]  # views sharing storage: they see the optimizer's in-place update
            self.cached = ([p for _, p in pairs], [n for n, _ in pairs], params, self._views(params))
        _, self.names, self.params, self.before = self.cached  # the same parameters as last time: the same views
        torch._foreach_copy_(self.before, self.params)
        self.size = norm_vector(self.params)
        return {}

    def _changed(self, pairs: list[tuple[str, nn.Parameter]]) -> bool:
        """Other parameters than last time, or the same ones with new data: model.double() or .to(device) keep each
        Parameter object but give it a new tensor, which the cached detached views would not see."""
        cached, _, detached, _ = self.cached
        return len(pairs) != len(cached) or any(p is not q or p.data_ptr() != d.data_ptr() or p.dtype != d.dtype
                                                for (_, p), q, d in zip(pairs, cached, detached))

    def _views(self, params: list[Tensor]) -> list[Tensor]:
        """Views into one new flat buffer of the parameters' dtype and device (a fresh copy where they differ). The
        views are cached with the parameters and reused at every logging step; when the parameters change (other
        ones, or the model cast or moved) new ones replace them and the old buffer is let go."""
        first = params[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in params):
            return [torch.empty_like(p) for p in params]
        return Scratch().views(params, first.dtype, first.device)

    def after_step(self, model: nn.Module) -> Scalars:
        if not self.params:
            return {}
        torch._foreach_sub_(self.before, self.params)  # theta_before - theta_after: the step, negated
        moved, size = norm_vector(self.before), self.size  # (P,) float64
        ratios = torch.where(size > 0, moved / size, torch.inf)  # zero denominator: inf, never 0/0 = NaN
        names = tags("update_ratio/", self.names)
        self.names, self.params, self.before, self.size = [], [], [], None
        return {names: ratios}
