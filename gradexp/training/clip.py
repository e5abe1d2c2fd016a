"""Gradient-clip policies, applied every step with torch.nn.utils (no host sync: results stay on device).

The policy also keeps clip telemetry counters on the device, updated every step without a host sync and
read only on logging steps (probes/clip_telemetry.py): the steps seen and the steps on which clipping
changed the gradient (norm mode: torch's clip coefficient max_norm / (norm + 1e-6) below 1, which is not the same
as norm > max_norm where max_norm is near or under 1e-6; value mode: some entry |g| > value)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from gradexp.probes.clip_telemetry import CLIP_EPS


@dataclass
class ClipPolicy:
    mode: str          # none | norm | value
    max_norm: float
    norm_type: float
    value: float
    steps_seen: int = 0                                   # a Python int: counting needs no device work
    steps_clipped: Optional[Tensor] = field(default=None, repr=False)  # 0-d int64 on the gradients' device

    def apply(self, params: list[nn.Parameter]) -> Optional[Tensor]:
        """Clip in place (parameters without a gradient are skipped). Returns the pre-clip global norm for
        mode=norm (0-d, on device), else None."""
        if self.mode == "norm":
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type, foreach=True)
            self._count(self.max_norm / (norm + CLIP_EPS) < 1)  # torch's own test, in the norm's dtype
            return norm
        if self.mode == "value":
            grads = [p.grad for p in params if p.grad is not None]
            biggest = torch.stack(torch._foreach_norm(grads, float("inf"))).max()  # max |g|, one batched kernel
            self._count(biggest > self.value)
            torch.nn.utils.clip_grad_value_(params, self.value, foreach=True)
        return None

    def _count(self, clipped: Tensor) -> None:
        if self.steps_clipped is None:
            self.steps_clipped = torch.zeros((), dtype=torch.long, device=clipped.device)
        self.steps_clipped += clipped
        self.steps_seen += 1

    def fraction_of_steps_clipped(self) -> Optional[Tensor]:
        """Steps clipped so far / steps seen, 0-d on device; None before the first step or for mode=none."""
        if self.steps_clipped is None or not self.steps_seen:
            return None
        return self.steps_clipped.double() / self.steps_seen  # float64: a count ratio, exact in summary.json
