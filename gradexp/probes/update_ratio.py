"""update_ratio/<param> = ||theta_after - theta_before|| / ||theta_before|| for the optimizer step just taken.

After clipping (just before optimizer.step) theta is copied into a buffer kept between logging steps (a fresh copy of
every parameter would allocate, and on CPU fault in, the model's size each logging step); after the step theta is
copied again into a second buffer, which becomes theta_after - theta_before in place, and both buffers are normed in
one batched call. Where the parameters share a dtype and device and are contiguous, each copy is one `torch.cat` into
the flat buffer (on CPU ~2x cheaper than a foreach copy of each parameter, and one kernel elsewhere), and the
difference one subtraction. A logging step adds a handful of operators, not one per parameter.
Norms are exact down to subnormals (probes/norms.py). A parameter that was exactly zero before the step (a zeroed
bias at step 0) has a zero denominator: its ratio is reported as inf (also when it stayed zero), never NaN;
summary.json and the README say so."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from gradexp.probes.base import Probe, Scalars, named_parameters, with_tied
from gradexp.probes.norms import host_norms, host_vector, norm_vector
from gradexp.probes.scratch import Scratch


def _exact(dtype: torch.dtype) -> torch.dtype:
    """Where a parameter's step is computed: float32 for 16-bit floats, the parameter's own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class Copies:
    """Two buffers shaped like the parameters (theta before, and the step), filled by copying the parameters in. 16-bit
    parameters are copied into float32, where the step (a difference of two 16-bit numbers) is exact: subtracted in
    bfloat16 it would be rounded to 8 bits."""

    def __init__(self, params: list[Tensor]) -> None:
        first = params[0]
        alike = all(p.dtype == first.dtype and p.device == first.device for p in params)
        self.flat = [p.view(-1) for p in params] if alike and all(p.is_contiguous() for p in params) else None
        self.whole: Optional[tuple[Tensor, Tensor]] = None  # the two flat buffers, where self.flat copies into them
        if not alike:  # a fresh copy where they differ
            self.before = [torch.empty_like(p, dtype=_exact(p.dtype)) for p in params]
            self.moved = [torch.empty_like(p, dtype=_exact(p.dtype)) for p in params]
            return
        scratch, n, dtype = Scratch(), sum(p.numel() for p in params), _exact(first.dtype)
        self.before = scratch.views(params, dtype, first.device, "before")  # side by side from the start
        self.moved = scratch.views(params, dtype, first.device, "moved")
        if self.flat is not None:
            self.whole = tuple(scratch.flat(n, dtype, first.device, name) for name in ("before", "moved"))

    def take_before(self, params: list[Tensor]) -> None:
        if self.whole is not None:
            torch.cat(self.flat, out=self.whole[0])
        else:
            torch._foreach_copy_(self.before, params)

    def take_step(self, params: list[Tensor]) -> None:
        """self.moved = theta_after - theta_before (the step)."""
        if self.whole is not None:
            torch.cat(self.flat, out=self.whole[1])
            self.whole[1].sub_(self.whole[0])
        else:
            torch._foreach_copy_(self.moved, params)
            torch._foreach_sub_(self.moved, self.before)


class UpdateRatio(Probe):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.params: list[Tensor] = []
        self.copies: Optional[Copies] = None
        self.cached: tuple = ([], [], [], None)  # (parameters, names, detached, Copies) of the last logging step

    @property
    def before(self) -> list[Tensor]:
        """theta before the step, as copied at the last after_clip (views into a buffer kept between logging steps)."""
        return self.copies.before if self.copies is not None else []

    def after_clip(self, model: nn.Module, clip_norm: Optional[Tensor]) -> Scalars:
        pairs = [(n, p) for n, p in named_parameters(model) if p.grad is not None]  # what the optimizer updates
        if not pairs:
            return {}
        if self._changed(pairs):
            params = [p.detach() for _, p in pairs]  # views sharing storage: they see the optimizer's in-place update
            self.cached = ([p for _, p in pairs], [n for n, _ in pairs], params, Copies(params))
        _, self.names, self.params, self.copies = self.cached  # the same parameters as last time: the same buffers
        self.copies.take_before(self.params)
        return {}

    def _changed(self, pairs: list[tuple[str, nn.Parameter]]) -> bool:
        """Other parameters than last time, or the same ones with new data: model.double() or .to(device) keep each
        Parameter object but give it a new tensor, which the cached detached views would not see."""
        cached, _, detached, _ = self.cached
        return len(pairs) != len(cached) or any(p is not q or p.data_ptr() != d.data_ptr() or p.dtype != d.dtype
                                                for (_, p), q, d in zip(pairs, cached, detached))

    def after_step(self, model: nn.Module) -> Scalars:
        if not self.params:
            return {}
        copies, count = self.copies, len(self.params)
        copies.take_step(self.params)
        names, self.names, self.params = self.names, [], []
        values = host_norms(copies.before + copies.moved)  # CPU: host floats, one batched pass
        if values is not None:  # zero denominator: inf, never 0/0 = NaN
            ratios = host_vector([m / s if s > 0 else math.inf for s, m in zip(values[:count], values[count:])])
            return with_tied(model, "update_ratio/", names, ratios)
        norms = norm_vector(copies.before + copies.moved)  # (2P,) float64, on the device
        size, moved = norms[:count], norms[count:]
        return with_tied(model, "update_ratio/", names, torch.where(size > 0, moved / size, torch.inf))
