"""L2 norms that stay exact where gradients vanish: every norm a probe reports goes through here.

A plain float32 norm sums squares, which underflow once the entries fall below ~1e-19 (their squares below
float32's 1.2e-38), so a vector of 1e-22s reads 0 although float32 holds values down to 1.4e-45. Here each
tensor is divided by its own max|x| first (the scaled entries lie in [-1, 1], the largest is exactly 1, so
the sum of squares cannot underflow where it matters), and the norm is max|x| * ||x / max|x||| in float64.
bf16/fp16 tensors are widened to float32 first (exactly) so the division does not round at 8 or 11 bits.
Everything is batched with foreach kernels and stays on the device: no host sync."""
from __future__ import annotations

import torch
from torch import Tensor

_WIDEN = (torch.bfloat16, torch.float16)


def exact_norms(tensors: list[Tensor]) -> list[Tensor]:
    """One 0-d float64 L2 norm per tensor, within ~1e-7 relative of a float64 computation for any finite input
    down to the smallest subnormal; inf (NaN) when the tensor holds an inf (a NaN), like torch's own norm."""
    if not tensors:
        return []
    xs = [t.detach().float() if t.dtype in _WIDEN else t.detach() for t in tensors]
    groups: dict[tuple, list[int]] = {}  # stack needs one dtype and device per group
    for i, x in enumerate(xs):
        groups.setdefault((x.dtype, x.device), []).append(i)
    out: list[Tensor] = [torch.empty(())] * len(xs)
    for indices in groups.values():
        for i, n in zip(indices, _scaled_norms([xs[i] for i in indices])):
            out[i] = n
    return out


def _scaled_norms(xs: list[Tensor]) -> list[Tensor]:
    """xs share dtype and device. (L,) float64 norms, unbound into 0-d tensors."""
    peak = torch.stack(torch._foreach_norm(xs, float("inf")))  # (L,) max|x|; NaN/inf propagate
    usable = (peak > 0) & torch.isfinite(peak)
    scale = torch.where(usable, peak, torch.ones_like(peak))  # a zero tensor divides by 1 and stays 0
    unit = torch.stack(torch._foreach_norm(torch._foreach_div(xs, list(scale.unbind()))))  # (L,) in [1, sqrt(numel)]
    norms = torch.where(usable, scale.double() * unit.double(), peak.double())  # 0 -> 0, inf -> inf, NaN -> NaN
    return list(norms.unbind())


def combined_norm(norms: list[Tensor]) -> Tensor:
    """The L2 norm of the concatenation of tensors whose norms are given (0-d float64), exact the same way."""
    (total,) = exact_norms([torch.stack([n.double() for n in norms])])
    return total
