"""L2 norms that stay exact where gradients vanish: every norm a probe reports goes through here.

A plain float32 norm sums squares, which underflow once the entries fall below ~1e-19 (their squares below
float32's 1.2e-38), so a vector of 1e-22s reads 0 although float32 holds values down to 1.4e-45. Here each
tensor is divided by its own max|x| first (the scaled entries lie in [-1, 1], the largest is exactly 1, so
the sum of squares cannot underflow where it matters), and the norm is max|x| * ||x / max|x||| in float64.
bf16/fp16 tensors are widened to float32 (exactly) so the division does not round at 8 or 11 bits.

Cost: the scaling needs a working copy of the tensors. Fresh allocations of that size cost more than the
arithmetic (on CPU each new page faults: ~15x the norm itself), so the copy lives in one flat scratch buffer per
dtype and device, kept between logging steps and grown to the largest set of tensors normed at once (the
gradients, or a recurrent layer's hidden-state gradients over time). Every step is a batched foreach kernel
(copy, abs, max, divide, norm) that stays on the device: no host sync."""
from __future__ import annotations

import torch
from torch import Tensor

_WIDEN = (torch.bfloat16, torch.float16)
_SCRATCH: dict[tuple, Tensor] = {}  # (dtype, device) -> flat working buffer


def exact_norms(tensors: list[Tensor]) -> list[Tensor]:
    """One 0-d float64 L2 norm per tensor, within ~1e-7 relative of a float64 computation for any finite input
    down to the smallest subnormal; inf (NaN) when the tensor holds an inf (a NaN), like torch's own norm."""
    groups: dict[tuple, list[int]] = {}  # one working dtype and device per batch of foreach kernels
    for i, t in enumerate(tensors):
        if t.numel():
            groups.setdefault((torch.float32 if t.dtype in _WIDEN else t.dtype, t.device), []).append(i)
    out: list = [None] * len(tensors)
    for (dtype, device), indices in groups.items():
        for i, n in zip(indices, _scaled_norms([tensors[i].detach() for i in indices], dtype, device)):
            out[i] = n
    return [torch.zeros((), dtype=torch.float64, device=t.device) if n is None else n  # empty: norm 0
            for t, n in zip(tensors, out)]


def _scaled_norms(xs: list[Tensor], dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """xs: non-empty tensors to be normed in `dtype` on `device`. Their 0-d float64 norms."""
    work = _views(xs, dtype, device)
    torch._foreach_copy_(work, xs)  # widens bf16/fp16 exactly
    torch._foreach_abs_(work)       # |x|: same norm, and its max is the scale
    peak = torch.stack(_maxima(work))  # (L,) max|x|; NaN/inf propagate
    usable = (peak > 0) & torch.isfinite(peak)
    scale = torch.where(usable, peak, torch.ones_like(peak))  # an all-zero tensor divides by 1 and stays 0
    torch._foreach_div_(work, list(scale.unbind()))
    unit = torch.stack(torch._foreach_norm(work))  # (L,) in [1, sqrt(numel)]
    norms = torch.where(usable, scale.double() * unit.double(), peak.double())  # 0 -> 0, inf -> inf, NaN -> NaN
    return list(norms.unbind())


def _maxima(work: list[Tensor]) -> list[Tensor]:
    """max of each tensor: one fused kernel on accelerators; on CPU the per-tensor reduction is ~3x faster than
    torch's foreach fallback and, being host-side code anyway, costs no launch overhead worth batching."""
    if work[0].device.type == "cpu":
        return [w.amax() for w in work]
    return list(torch._foreach_max(work))


def _views(xs: list[Tensor], dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """Views shaped like xs into the flat scratch buffer of (dtype, device), grown when too small."""
    total = sum(x.numel() for x in xs)
    flat = _SCRATCH.get((dtype, device))
    if flat is None or flat.numel() < total:
        flat = _SCRATCH[(dtype, device)] = torch.empty(total, dtype=dtype, device=device)
    views, at = [], 0
    for x in xs:
        views.append(flat[at:at + x.numel()].view(x.shape))
        at += x.numel()
    return views


def combined_norm(norms: list[Tensor]) -> Tensor:
    """The L2 norm of the concatenation of tensors whose norms are given (0-d float64), exact the same way."""
    (total,) = exact_norms([torch.stack([n.double() for n in norms])])
    return total
