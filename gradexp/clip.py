"""Gradient-clip policies, applied every step with torch.nn.utils (no host sync: results stay on device)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn


@dataclass
class ClipPolicy:
    mode: str          # none | norm | value
    max_norm: float
    norm_type: float
    value: float

    def apply(self, params: list[nn.Parameter]) -> Optional[Tensor]:
        """Clip in place. Returns the pre-clip global norm for mode=norm (0-d, on device), else None."""
        if self.mode == "norm":
            return torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type, foreach=True)
        if self.mode == "value":
            torch.nn.utils.clip_grad_value_(params, self.value, foreach=True)
        return None
