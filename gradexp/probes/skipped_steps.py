"""amp/skipped_steps: optimizer steps the loss scaler skipped so far because a gradient was inf or NaN
(counted on the device every step, read on logging steps). Only runs with a loss scale."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from gradexp.probes.base import Probe, ProbeContext, Scalars


class SkippedSteps(Probe):
    def __init__(self, precision: Any) -> None:
        self.precision = precision

    @classmethod
    def from_context(cls, context: ProbeContext) -> Optional["SkippedSteps"]:
        scaled = context.precision is not None and context.precision.scaler is not None
        return cls(context.precision) if scaled else None

    def after_step(self, model: nn.Module) -> Scalars:
        skipped = self.precision.skipped
        return {} if skipped is None else {"amp/skipped_steps": skipped.clone()}
