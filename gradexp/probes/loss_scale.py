"""amp/loss_scale: the loss scale this step's backward pass ran with (train.loss_scale; dynamic: GradScaler's
current value, halved after an overflow and doubled after 2000 clean steps). Only runs with a loss scale."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from gradexp.probes.base import Probe, ProbeContext, Scalars


class LossScale(Probe):
    def __init__(self, precision: Any) -> None:
        self.precision = precision

    @classmethod
    def from_context(cls, context: ProbeContext) -> Optional["LossScale"]:
        scaled = context.precision is not None and context.precision.scaler is not None
        return cls(context.precision) if scaled else None

    def after_backward(self, model: nn.Module) -> Scalars:  # before the scaler's update moves it
        return {"amp/loss_scale": self.precision.scale().clone()}
