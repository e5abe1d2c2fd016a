"""The probe protocol and the Instruments object the training loop talks to.

A probe measures one family of quantities. It is consulted only on logging steps: hooks it needs exist
only inside `watch` (forward + backward of a logging step), and every value it returns is a 0-d tensor
left on the model's device, so nothing synchronises with the host until Instruments.collect()."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator, Optional

import torch
from torch import Tensor, nn

Scalars = dict[str, Tensor]


class Probe:
    """Override the phases you need; each returns tag -> 0-d tensor."""

    def watch(self, model: nn.Module) -> ContextManager:
        return contextlib.nullcontext()

    def after_backward(self, model: nn.Module) -> Scalars:  # gradients as computed, before clipping
        return {}

    def after_clip(self, model: nn.Module, clip_norm: Optional[Tensor]) -> Scalars:  # before optimizer.step
        return {}

    def after_step(self, model: nn.Module) -> Scalars:  # after optimizer.step
        return {}


class Instruments:
    """Runs every probe through the phases of a logging step and gathers their tensors."""

    def __init__(self, probes: list[Probe], model: nn.Module):
        self.probes, self.model = probes, model
        self.pending: Scalars = {}

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for probe in self.probes:
                stack.enter_context(probe.watch(self.model))
            yield

    def after_backward(self) -> None:
        for probe in self.probes:
            self.pending.update(probe.after_backward(self.model))

    def after_clip(self, clip_norm: Optional[Tensor]) -> None:
        for probe in self.probes:
            self.pending.update(probe.after_clip(self.model, clip_norm))

    def after_step(self) -> None:
        for probe in self.probes:
            self.pending.update(probe.after_step(self.model))

    def collect(self, extra: Scalars) -> dict[str, float]:
        """The one host transfer of a logging step: every pending value (and `extra`) to Python floats."""
        values = {**extra, **self.pending}
        self.pending = {}
        return to_host(values)


def to_host(values: Scalars) -> dict[str, float]:
    if not values:
        return {}
    stacked = torch.stack([v.detach().reshape(()).float() for v in values.values()])  # (N,)
    return dict(zip(values, stacked.tolist()))
