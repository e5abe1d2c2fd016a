"""L2 norms that stay exact where gradients vanish: every norm a probe reports goes through here.

A plain float32 norm sums squares, which underflow once the entries fall below ~1e-19 (their squares below
float32's 1.2e-38), so a vector of 1e-22s reads 0 although float32 holds values down to 1.4e-45; squares above
~1.8e19 overflow to inf. Squares of 16- and 32-bit floats can do neither in float64 (2^-149 squared is 2^-298,
and (3.4e38)^2 is 1.2e77), so a norm accumulated in float64 is exact for them, whatever their magnitude:
- on accelerators: one fused `_foreach_norm(..., dtype=float64)` (the kernel widens each entry before squaring;
  it is memory-bound, so the wider sum costs next to nothing), with no host sync;
- on CPU, where a float64 sum costs ~3x a float32 one: the batched float32 norm first, then, for only the tensors
  whose float32 result may have lost precision to under- or overflow (not finite, or below sqrt(numel) * LOW[dtype],
  where the squares lost below float32's smallest normal could weigh 1e-10 of the total), the float64 sum. Reading
  the float32 results back costs nothing there: CPU tensors are already on the host. torch's CPU norm adds the
  squares up in float32 in a few running sums, whose rounding grows with their length, most where many entries are
  alike (a dead layer's centred outputs, bf16 values): up to 3e-6 relative at 4,096 entries, 5e-5 at 65,536, 2e-3
  at 2^22. Tensors longer than LONG entries are normed by rows of ROW entries instead (each row's float32 norm in
  one reduction call a tensor, the rows' squares summed in float64): within ~4e-7 at any length and for any
  entries, at the batched norm's cost per entry.
float64 tensors (whose squares can underflow float64) keep the max|x|-scaled path: each tensor divided by its own
max|x| first, the norm is max|x| * ||x / max|x|||, in a flat scratch buffer reused between logging steps (fresh
allocations of that size cost more than the arithmetic: on CPU each new page faults)."""
from __future__ import annotations

import array
import math
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from gradexp.probes.scratch import Scratch

_SCRATCH = Scratch()  # the scaled path's working copies
# accumulation dtype -> the norm below which its sum of squares may have lost 1e-10 of itself (per sqrt(numel)):
# each entry's square loses at most finfo.tiny (flushed to zero) there
LOW = {dt: math.sqrt(torch.finfo(dt).tiny * 1e10) for dt in (torch.float32, torch.float64)}
_FLOAT64 = torch.float64
LONG = 4096  # CPU: longer tensors are normed by rows (module docstring)
ROW = 1024  # entries one float32 running sum adds up in a long tensor's norm: within ~4e-7 of float64 for any entries


def norm_vector(tensors: Sequence[Tensor]) -> Tensor:
    """(L,) float64: the L2 norm of each tensor, within 3e-6 relative of a float64 computation (~1e-7 for random
    entries; more where many entries are alike, see the module docstring), for any finite input
    down to the smallest subnormal; inf (NaN) where the tensor holds an inf (a NaN), like torch's own norm; 0 for an
    empty tensor. On the first tensor's device, without a host sync on accelerators. Tensors that require grad are
    read detached (no autograd graph); a sparse one (nn.Embedding(sparse=True)'s gradient) by its stored values."""
    values = host_norms(tensors)  # CPU tensors of one floating dtype (the usual CPU case): read on the host already
    if values is not None:
        return host_vector(values)
    xs = _readable(tensors)
    first = xs[0]
    if all(t.dtype == first.dtype and t.device == first.device for t in xs) and (
            first.device.type == "cpu" or all(t.numel() for t in xs)):  # the usual case: one kind (CPU norms empties)
        return _group_norms(xs, first.dtype, first.device)
    groups: dict[tuple, list[int]] = {}  # one batched kernel per (dtype, device)
    for i, t in enumerate(xs):
        if t.numel():
            groups.setdefault((t.dtype, t.device), []).append(i)
    out = torch.zeros(len(xs), dtype=_FLOAT64, device=first.device)
    for (dtype, device), indices in groups.items():
        out[indices] = _group_norms([xs[i] for i in indices], dtype, device).to(out.device)
    return out


def exact_norms(tensors: Sequence[Tensor]) -> list[Tensor]:
    """One 0-d float64 norm per tensor (norm_vector, unbound)."""
    return list(norm_vector(tensors).unbind())


def combined_norm(norms: Sequence[Tensor] | Tensor) -> Tensor:
    """The L2 norm of the concatenation of tensors whose norms are given (0-d float64 each, or one (L,) vector), exact
    the same way. 0-d."""
    vector = norms if isinstance(norms, Tensor) else torch.stack([n.double() for n in norms])
    if vector.device.type == "cpu":  # one norm, read on the host: a float64 sum whose squares cannot have underflowed
        total = torch.linalg.vector_norm(vector)
        if LOW[_FLOAT64] * math.sqrt(max(vector.numel(), 1)) <= total.item() < math.inf or not vector.any():
            return total
    return norm_vector([vector])[0]


def norms_and_total(tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor | float]:
    """norm_vector(tensors) and the norm of all of them together: on CPU the total is total_norm of the host floats
    (a Python float), elsewhere combined_norm on the device (a 0-d tensor, no host sync)."""
    values = host_norms(tensors)
    if values is not None:
        return host_vector(values), total_norm(values)
    norms = norm_vector(tensors)
    return norms, combined_norm(norms)


def total_norm(values: list[float]) -> float:
    """The L2 norm of the concatenation of tensors whose norms are given as host floats: math.hypot, which scales
    (exact for float64 norms down to subnormals) and rounds within 1 ulp; NaN where a norm is NaN, as torch's norm
    gives (hypot prefers an inf)."""
    total = math.hypot(*values)
    return math.nan if total == math.inf and any(v != v for v in values) else total


def _group_norms(xs: list[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    """xs: tensors of one dtype on one device (non-empty off the CPU). (L,) float64 norms."""
    if dtype == _FLOAT64:
        return _checked(xs, _FLOAT64) if device.type == "cpu" else _scaled_norms(xs, dtype, device)
    if device.type != "cpu":
        return torch.stack(torch._foreach_norm(xs, 2, dtype=_FLOAT64))  # exact for <= 32-bit floats, one kernel
    return _checked(xs, torch.float32)


def host_norms(tensors: Sequence[Tensor]) -> Optional[list[float]]:
    """norm_vector's values as Python floats, for CPU tensors of one floating dtype (the usual CPU case), where the
    norms are host numbers anyway: no tensor is built for them, and a probe can do its last arithmetic in Python
    floats (a few microseconds less per logging step than a handful of tiny tensor operators). None otherwise: the
    caller takes norm_vector."""
    if not tensors:
        return []
    dtype = tensors[0].dtype
    if not all(t.is_cpu and t.dtype is dtype for t in tensors) or not tensors[0].is_floating_point():
        return None
    xs = _readable(tensors, floating=True)  # one floating dtype: checked above
    return _checked_values(xs, _FLOAT64 if dtype is _FLOAT64 else torch.float32)


def _readable(tensors: Sequence[Tensor], floating: bool = False) -> list[Tensor]:
    """The tensors as the batched kernels take them: detached, a sparse tensor as its values (coalesced: the entries
    stored twice for one index are summed first, as the dense tensor holds them), a complex or integer one as real
    floats of the same norm (`floating`: the caller knows all are floating already)."""
    xs = [t.detach() if t.requires_grad else t for t in tensors]
    if any(t.layout is not torch.strided for t in xs):
        xs = [t if t.layout is torch.strided else _values(t) for t in xs]
    if not floating and not all(t.is_floating_point() for t in xs):  # a user's complex weight, an integer counter
        xs = [t if t.is_floating_point() else _as_real(t) for t in xs]
    return xs


def _as_real(t: Tensor) -> Tensor:
    """A tensor of the same L2 norm the float kernels take: a complex one's (re, im) pairs, an integer one in float64
    (exact below 2^53)."""
    return torch.view_as_real(t) if t.is_complex() else t.to(_FLOAT64)


def _values(t: Tensor) -> Tensor:
    return t.coalesce().values() if t.layout is torch.sparse_coo else t.values()


def _checked(xs: list[Tensor], acc: torch.dtype) -> Tensor:
    """CPU: the batched norm accumulated in `acc`, and a safer pass for the few tensors it may have got wrong. The
    values are on the host already: the result is built from them in one op (no stack, no dtype conversion)."""
    return host_vector(_checked_values(xs, acc))


def _checked_values(xs: list[Tensor], acc: torch.dtype) -> list[float]:
    """_checked's values, as Python floats."""
    sizes = [t.numel() for t in xs]
    if acc is _FLOAT64 or max(sizes) <= LONG:
        values = [n.item() for n in torch._foreach_norm(xs, 2, dtype=acc)]  # half the cost of a stack and one tolist
    else:
        values = _with_long(xs, sizes)
    doubtful = in_doubt(values, sizes, acc)
    if doubtful:
        redo = [xs[i] for i in doubtful]
        exact = (torch.stack(torch._foreach_norm(redo, 2, dtype=_FLOAT64)) if acc != _FLOAT64
                 else _scaled_norms(redo, acc, redo[0].device))
        for i, n in zip(doubtful, exact.tolist()):
            values[i] = n
    return values


def in_doubt(values: Sequence[float], sizes: Sequence[int], acc: torch.dtype) -> list[int]:
    """The indices of the norms accumulated in `acc` whose squares may have under- or overflowed: not finite (NaN
    included), or below sqrt(numel) * LOW[acc]. Those are taken again exactly."""
    low = LOW[acc]
    return [i for i, n in enumerate(values) if not (low * math.sqrt(sizes[i]) <= n < math.inf)]


def _with_long(xs: list[Tensor], sizes: list[int]) -> list[float]:
    """float32 norms of CPU tensors (of `sizes` entries): the short ones in one batched call; each longer than LONG
    entries by rows of ROW entries (one reduction call a tensor), the rows' squares added up in float64 for all long
    tensors at once."""
    values = [0.0] * len(xs)
    short = [i for i, size in enumerate(sizes) if size <= LONG]
    for i, n in zip(short, torch._foreach_norm([xs[i] for i in short], 2, dtype=torch.float32) if short else ()):
        values[i] = n.item()
    long = [i for i, size in enumerate(sizes) if size > LONG]
    for i, total in zip(long, long_norms([xs[i] for i in long]).tolist()):  # inf or NaN as torch's norm gives them
        values[i] = total
    return values


def long_norms(tensors: Sequence[Tensor]) -> Tensor:
    """(L,) float64: each tensor's norm from the norms of its runs of ROW entries (the last run may be shorter),
    accumulated in float32 (float64 for float64 tensors), whose squares are added up in float64; a tensor's own
    memory where it is contiguous, else a copy."""
    rows = [torch.linalg.vector_norm(t.view(-1, ROW), dim=1, dtype=_accumulator(t))
            if t.is_contiguous() and t.numel() % ROW == 0 else _runs_of(t) for t in tensors]
    table = torch.stack(rows) if all(len(r) == len(rows[0]) for r in rows) else pad_sequence(rows, batch_first=True)
    return table.to(_FLOAT64).square_().sum(dim=1).sqrt_()  # zeros padding the shorter ones add nothing


def _runs_of(t: Tensor) -> Tensor:
    """long_norms' run norms of a tensor that is not contiguous or not a whole number of runs (a copy, then)."""
    flat, dtype = t.reshape(-1), _accumulator(t)
    whole = flat.numel() // ROW * ROW
    rows = torch.linalg.vector_norm(flat[:whole].view(-1, ROW), dim=1, dtype=dtype)
    return torch.cat([rows, torch.linalg.vector_norm(flat[whole:], dtype=dtype).view(1)])


def _accumulator(t: Tensor) -> torch.dtype:
    return _FLOAT64 if t.dtype is _FLOAT64 else torch.float32


def host_vector(values: list[float]) -> Tensor:
    """(L,) float64 CPU tensor of Python floats, over an array's memory (the tensor keeps the array alive): a third of
    torch.tensor(values)'s cost, which parses the list element by element; a logging step makes several."""
    return torch.frombuffer(array.array("d", values), dtype=_FLOAT64) if values else torch.zeros(0, dtype=_FLOAT64)


def _scaled_norms(xs: list[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    """xs: non-empty tensors to be normed in `dtype` on `device`. (L,) float64 norms, each scaled by its max|x|."""
    work = _SCRATCH.views(xs, dtype, device)
    torch._foreach_copy_(work, xs)
    torch._foreach_abs_(work)       # |x|: same norm, and its max is the scale
    peak = torch.stack(_maxima(work))  # (L,) max|x|; NaN/inf propagate
    usable = (peak > 0) & torch.isfinite(peak)
    scale = torch.where(usable, peak, torch.ones_like(peak))  # an all-zero tensor divides by 1 and stays 0
    torch._foreach_div_(work, list(scale.unbind()))
    unit = torch.stack(torch._foreach_norm(work))  # (L,) in [1, sqrt(numel)]
    return torch.where(usable, scale.double() * unit.double(), peak.double())  # 0 -> 0, inf -> inf, NaN -> NaN


def _maxima(work: list[Tensor]) -> list[Tensor]:
    """max of each tensor: one fused kernel on accelerators; on CPU the per-tensor reduction is ~3x faster than
    torch's foreach fallback and, being host-side code anyway, costs no launch overhead worth batching."""
    if work[0].device.type == "cpu":
        return [w.amax() for w in work]
    return list(torch._foreach_max(work))
