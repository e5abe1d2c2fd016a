"""Histograms of gradients, weights and hidden-layer outputs, on their own interval (log.histograms_every,
a multiple of log.every; 0 = off). Tags: hist/grad/<param>, hist/weight/<param>, hist/act/<layer>.

Each histogram is computed on the device without a host sync and packed into one 1-d tensor
(min, max, count, sum, sum of squares, BINS bin counts) so it rides along with the logging step's single
host transfer; `unpack` gives the sinks what tensorboard's add_histogram_raw wants. Bins split [min, max]
evenly; NaN/Inf entries are left out of the bins (they still make min/max/sum non-finite)."""
from __future__ import annotations

from typing import ContextManager

import torch
from torch import Tensor, nn

from gradexp.probes.base import Hooks, Probe, ProbeContext, Scalars, named_parameters
from gradexp.probes.layers import Layers

PREFIX = "hist/"
BINS = 30
_HEADER = 5  # min, max, count, sum, sum of squares


def pack(t: Tensor, bins: int = BINS) -> Tensor:
    """(any shape) -> (5 + bins,) on t's device."""
    t = t.detach().float().reshape(-1)
    lo, hi = t.min(), t.max()
    unit = (t - lo) / (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)  # [0, 1]: histc needs host-side bounds
    unit = torch.where(torch.isfinite(unit), unit, -1.0)  # out of range: not counted
    counts = torch.histc(unit, bins=bins, min=0.0, max=1.0)
    header = torch.stack([lo, hi, t.new_tensor(float(t.numel())), t.sum(), (t * t).sum()])
    return torch.cat([header, counts])


def unpack(values: list[float]) -> dict:
    """The host-side list from `pack` -> keyword arguments of SummaryWriter.add_histogram_raw."""
    lo, hi, num, total, squares = values[:_HEADER]
    counts = values[_HEADER:]
    width = (hi - lo) / len(counts)
    limits = [lo + width * (i + 1) for i in range(len(counts))]  # right edge of each bin
    return dict(min=lo, max=hi, num=num, sum=total, sum_squares=squares, bucket_limits=limits, bucket_counts=counts)


class Histograms(Probe):
    def __init__(self, layers: Layers) -> None:
        self.layers = layers
        self.values: Scalars = {}
        self.hooks = Hooks()
        for name, layer in layers:
            self.hooks.forward(layer, self._act_hook(name))

    @classmethod
    def from_context(cls, context: ProbeContext) -> "Histograms":
        return cls(context.layers)

    def watch(self, model: nn.Module) -> ContextManager:
        return self.hooks.attached()

    def _act_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self.values[f"{PREFIX}act/{name}"] = pack(output)

        return hook

    def after_backward(self, model: nn.Module) -> Scalars:
        values, self.values = self.values, {}
        values.update({f"{PREFIX}grad/{n}": pack(p.grad) for n, p in named_parameters(model) if p.grad is not None})
        return values

    def after_step(self, model: nn.Module) -> Scalars:
        return {f"{PREFIX}weight/{n}": pack(p) for n, p in named_parameters(model)}
