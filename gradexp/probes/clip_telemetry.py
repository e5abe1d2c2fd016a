"""Clip telemetry (only when a clip policy is set), so a user can see that clipping took effect:
- clip/scale: the factor the gradients were multiplied by. Norm mode: torch's clip coefficient
  min(1, max_norm / (total_norm + 1e-6)). Value mode (not a single factor): the effective one,
  ||g clipped|| / ||g||, from the global 2-norms before and after clipping (exact norms, probes/norms.py;
  1 when the gradient is all zero: nothing was clipped).
- clip/frac_steps_clipped: steps on which clipping changed the gradient so far / steps so far
  (counted every step on the device by ClipPolicy, read here).
- clip/frac_entries_clipped (value mode): fraction of gradient entries with |g| > value this step."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from gradexp.probes.base import Probe, ProbeContext, Scalars, named_parameters
from gradexp.probes.norms import combined_norm, norm_vector

CLIP_EPS = 1e-6  # the epsilon torch.nn.utils.clip_grad_norm_ adds to the norm before dividing


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad for _, p in named_parameters(model) if p.grad is not None]


def _global_norm(grads: list[Tensor]) -> Tensor:
    return combined_norm(norm_vector(grads))


class ClipTelemetry(Probe):
    """Given the run's clip policy as is (its mode, thresholds and step counters; gradexp/training/clip.py)."""

    @classmethod
    def from_context(cls, context: ProbeContext) -> Optional["ClipTelemetry"]:
        return cls(context.clip) if context.clip is not None and context.clip.mode != "none" else None

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.values: Scalars = {}
        self.norm_before: Optional[Tensor] = None

    def after_backward(self, model: nn.Module) -> Scalars:
        grads = _grads(model)
        if self.policy.mode != "value" or not grads:
            return {}
        self.norm_before = _global_norm(grads)
        above = sum((g.abs() > self.policy.value).sum() for g in grads)  # entries clip_grad_value_ will change
        total = sum(g.numel() for g in grads)
        return {"clip/frac_entries_clipped": above / total}

    def after_clip(self, model: nn.Module, clip_norm: Optional[Tensor]) -> Scalars:
        scalars: Scalars = {}
        if self.policy.mode == "norm" and clip_norm is not None:
            scalars["clip/scale"] = torch.clamp(self.policy.max_norm / (clip_norm + CLIP_EPS), max=1.0)
        elif self.policy.mode == "value" and self.norm_before is not None:
            before = self.norm_before  # an all-zero gradient has nothing to clip: factor 1, not 0/0
            scalars["clip/scale"] = torch.where(before > 0, _global_norm(_grads(model)) / before, 1.0)
            self.norm_before = None
        fraction = self.policy.fraction_of_steps_clipped()
        if fraction is not None:
            scalars["clip/frac_steps_clipped"] = fraction
        return scalars
