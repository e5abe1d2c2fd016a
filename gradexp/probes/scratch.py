"""Working buffers kept from one logging step to the next, for the probes that need room to compute in.

A fresh multi-megabyte tensor on CPU faults in every page of itself on first write, which costs several times the
arithmetic done in it (docs/profile.md); so each owner keeps flat buffers, one per (name, dtype, device), grown when
a step needs more and otherwise reused. Owners never share one: the update ratio's copy of theta must survive the
norms computed between after_clip and after_step, which work in a buffer of their own."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class Scratch:
    def __init__(self) -> None:
        self.buffers: dict[tuple, Tensor] = {}

    def flat(self, n: int, dtype: torch.dtype, device: torch.device, name: str = "") -> Tensor:
        """The first n entries of the buffer `name` of (dtype, device), grown to n when smaller."""
        key = (name, dtype, device)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < n:
            buffer = self.buffers[key] = torch.empty(n, dtype=dtype, device=device)
        return buffer[:n]

    def views(self, like: Sequence[Tensor], dtype: torch.dtype, device: torch.device, name: str = "") -> list[Tensor]:
        """Views shaped like each tensor of `like`, side by side in the buffer `name` of (dtype, device)."""
        flat = self.flat(sum(t.numel() for t in like), dtype, device, name)
        views, at = [], 0
        for t in like:
            views.append(flat[at:at + t.numel()].view(t.shape))
            at += t.numel()
        return views
