"""Histograms of gradients, weights and hidden-layer outputs, on their own interval (log.histograms_every,
a multiple of log.every; 0 = off). Tags: hist/grad/<param>, hist/weight/<param>, hist/act/<layer>.

Each histogram is computed on the device without a host sync and packed into one 1-d tensor
(min, max, count, sum, sum of squares, BINS bin counts; float64, where the sum of squares is the square of the
exact norm, probes/norms.py) so it rides along with the logging step's single
host transfer; `unpack` reads one as the keyword arguments of tensorboard's add_histogram_raw (the TensorBoard sink
encodes a step's rows with numpy to the same records, sinks/events.py). Bins split [min, max]
evenly: an entry's bin is floor(u * BINS) of u = (t - min) / (max - min) in float32, the top edge (u = 1) in the last
bin, which is torch.histc(u, BINS, 0, 1) exactly; NaN/Inf entries are left out of the bins (they still make
min/max/sum non-finite).
A logging step packs all tensors of a phase together (`pack_many`), in a few passes over each entry: min and max,
u in place in a buffer kept between logging steps, then a 2-byte slot index per entry and one bincount for all small
tensors (row offsets keep their histograms apart) or one per large tensor. This replaced histc (~3.4 ns an entry on
one CPU thread, against ~0.7 ns for an int16 bincount) and an isfinite/where pass (~1.5 ns an entry) that histc's
own range check made redundant; the values are bit-identical to that version's (docs/profile.md, "Everything every
step"; tests/test_histograms.py checks them against a float64 oracle).
On CPU the probe packs tensors above SMALL entries on a helper thread, from copies (probes/aside.py): their passes are
nearly all kernel time, which releases the GIL, so they run beside the training thread; the same values, bit for bit
(tests/test_aside.py)."""
from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors

from gradexp.probes.aside import Aside
from gradexp.probes.base import Hooks, Probe, ProbeContext, Scalars, named_parameters
from gradexp.probes.layers import Layers, layer_output
from gradexp.probes.norms import norm_vector
from gradexp.probes.scratch import Scratch as Buffers

PREFIX = "hist/"
BINS = 30
HEADER = 5  # min, max, count, sum, sum of squares
SMALL = 1 << 14  # entries: tensors up to this size are stacked with the others of their size (one copy)
_TINY = torch.finfo(torch.float32).tiny


def pack(t: Tensor, bins: int = BINS) -> Tensor:
    """(any shape) -> (5 + bins,) on t's device."""
    return pack_many([t], bins)[0]


class Scratch(Buffers):
    """What pack_many reuses from one logging step to the next: its buffers (probes/scratch.py) and the constants of a
    step's layout (slot offsets, entry counts), which are the same each time."""

    def __init__(self) -> None:
        super().__init__()
        self.constants: dict[tuple, Any] = {}

    def constant(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self.constants:
            if len(self.constants) >= 16:  # shapes that change from step to step (a variable batch): stay bounded
                self.constants.clear()
            self.constants[key] = make()
        return self.constants[key]


def pack_many(tensors: list[Tensor], bins: int = BINS, scratch: Scratch | None = None) -> list[Tensor]:
    """pack() of each tensor (non-empty ones), with far fewer kernels than one pack() each. Tensors up to SMALL
    entries are flattened into one float32 tensor (one copy), grouped by size, and each group's rows are scaled
    together; larger ones are scaled one at a time, in a scratch buffer that stays in cache. The bin counts come from
    one bincount for all small rows and one per large tensor, and all rows are assembled in one cat. `scratch`: the
    buffers and layout constants to reuse (the probe keeps one between logging steps)."""
    with torch.no_grad():  # parameters: no autograd bookkeeping, no detach() per tensor
        return _pack_many(tensors, bins, scratch if scratch is not None else Scratch())


def _pack_many(tensors: list[Tensor], bins: int, scratch: Scratch) -> list[Tensor]:
    out: list = [None] * len(tensors)
    for indices, order, packed in _pack_by_device(tensors, bins, scratch):
        for j, row in zip(order, packed.unbind()):
            out[indices[j]] = row
    return out


def packed_rows(tensors: dict[str, Tensor], bins: int = BINS, scratch: Scratch | None = None) -> Scalars:
    """{tag: tensor} -> {(tags, in row order): (rows, 5 + bins)}, one matrix per device: what pack_many computes, handed
    on whole (probes/base.py to_host gives each tag its row), which saves a 1-d view and a host read per histogram."""
    tags = list(tensors)
    with torch.no_grad():
        parts = _pack_by_device(list(tensors.values()), bins, scratch if scratch is not None else Scratch())
    return {tuple(tags[indices[j]] for j in order): packed for indices, order, packed in parts}


def _pack_by_device(tensors: list[Tensor], bins: int, scratch: Scratch) -> list[tuple[list[int], list[int], Tensor]]:
    """Per device: (its tensors' positions, their order in the matrix's rows, the matrix)."""
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        by_device[t.device].append(i)
    return [(indices, *_pack_device([tensors[i] for i in indices], bins, scratch, device))
            for device, indices in by_device.items()]


def _pack_device(tensors: list[Tensor], bins: int, scratch: Scratch, device: torch.device) -> tuple[list[int], Tensor]:
    """pack_many for one device's tensors: (their positions in row order, (rows, 5 + bins))."""
    groups: dict[tuple, list[int]] = defaultdict(list)  # (numel, dtype) -> positions, for the small tensors
    large = []
    for i, t in enumerate(tensors):
        if t.numel() > SMALL:
            large.append(i)
        else:
            groups[(t.numel(), t.dtype)].append(i)
    order, headers, counts = [], [], []
    if groups:
        order += [i for indices in groups.values() for i in indices]
        sizes = tuple((len(indices), numel) for (numel, _), indices in groups.items())
        header, count = _pack_small([tensors[i] for i in order], sizes, bins, scratch, device)
        headers.append(header)
        counts.append(count)
    if large:
        order += large
        header, count = _pack_large([tensors[i] for i in large], bins, scratch, device)
        headers.append(header)
        counts.append(count)
    count = torch.cat(counts).double()  # float64 rows: the sums of squares need its range (_with_squares)
    count[:, bins - 1] += count[:, bins]  # the top edge (u = 1) belongs to the last bin, as in histc
    return order, torch.cat([torch.cat(headers), count[:, :bins]], dim=1)


def _slots(bins: int) -> int:
    """Slot indices per row: the bins, the top edge (u = 1) at `bins`, a NaN entry at 2 * bins (not counted)."""
    return 2 * bins + 1


def _pack_small(tensors: list[Tensor], sizes: tuple, bins: int, scratch: Scratch, device: torch.device):
    """Tensors grouped by size, in order (sizes: (rows, entries) per group) -> headers (R, 5), slot counts (R, slots).
    One copy into a float32 tensor; each group's rows are a (rows, entries) view of it, so min, max and the sums are
    row reductions of the same layout a stack of the group would have."""
    lengths = [rows * n for rows, n in sizes]
    flat = _flatten_dense_tensors(tensors).float()  # one call for all (a reshape per tensor from Python costs 2x)
    unit = scratch.flat(sum(lengths), torch.float32, device, "unit")
    blocks = [(y.view(shape), u.view(shape)) for shape, y, u in zip(sizes, flat.split(lengths), unit.split(lengths))]
    lows = [y.amin(dim=1) for y, _ in blocks]  # NaN propagates; aminmax(dim=1) is ~30x slower on CPU
    highs = [y.amax(dim=1) for y, _ in blocks]
    for (y, u), lo, hi in zip(blocks, lows, highs):
        torch.sub(y, lo[:, None], out=u).div_((hi - lo).clamp_min(_TINY)[:, None])
    sums = [y.sum(dim=1) for y, _ in blocks]
    slots = _slots(bins)
    offsets, numels = scratch.constant(("small", sizes, slots, device), lambda: _small_layout(sizes, slots, device))
    count = _bincount(unit, bins, scratch, offsets, len(tensors) * slots)
    header = torch.stack([torch.cat(lows), torch.cat(highs), numels, torch.cat(sums)], dim=1)
    return _with_squares(header, [row for y, _ in blocks for row in y.unbind(0)]), count.view(len(tensors), slots)


def _with_squares(header: Tensor, rows: list[Tensor]) -> Tensor:
    """The header (R, 4) in float64, with each row's sum of squares as its fifth column: the square of its exact norm
    (probes/norms.py). Summed in float32 the squares of entries below ~1e-19 underflow: an audit read 5.6e-45 for
    2.87e-44, and 0 for subnormal gradients, in the regime this tool measures."""
    squares = norm_vector(rows).square()
    return torch.cat([header.double(), squares.to(header.device)[:, None]], dim=1)


def _small_layout(sizes: tuple, slots: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per entry, its row's first slot (row r at r * slots, in _bincount's index dtype: a mixed-dtype add_ is ~50x
    slower); per row, its entry count (float32)."""
    numels = torch.tensor([float(n) for rows, n in sizes for _ in range(rows)])
    starts = torch.arange(len(numels)) * slots
    offsets = starts.repeat_interleave(numels.long()).to(_index_dtype(len(numels) * slots))
    return offsets.to(device), numels.to(device)


def _pack_large(tensors: list[Tensor], bins: int, scratch: Scratch, device: torch.device):
    """Tensors above SMALL entries, one at a time (no copy; the scaled entries in a buffer that stays in cache)
    -> headers (L, 5), slot counts (L, slots)."""
    stats, counts, floats = [], [], []
    for t in tensors:
        t = t.float().reshape(-1)
        floats.append(t)  # 16-bit tensors: their float32 values, as the rest of the row (and the copies aside) see
        u = scratch.flat(t.numel(), torch.float32, device, "unit")
        lo, hi = torch.aminmax(t)  # one pass; the same signed zero as min()/max(), where amin() may differ
        torch.sub(t, lo, out=u).div_((hi - lo).clamp_min(_TINY))
        counts.append(_bincount(u, bins, scratch, None, _slots(bins)))
        stats += [lo, hi, t.sum()]
    stats = torch.stack(stats).view(len(tensors), 3)
    key = ("large", tuple(t.numel() for t in tensors), device)
    sizes = scratch.constant(key, lambda: torch.tensor([float(t.numel()) for t in tensors], device=device))
    header = torch.stack([stats[:, 0], stats[:, 1], sizes, stats[:, 2]], dim=1)
    return _with_squares(header, floats), torch.stack(counts)


def _index_dtype(length: int) -> torch.dtype:
    """The slot index dtype for `length` slots: bincount reads int16 ~1.4x faster than int32 on CPU."""
    return torch.int16 if length <= 1 << 15 else torch.int32


def _bincount(unit: Tensor, bins: int, scratch: Scratch, offsets: Tensor | None, length: int) -> Tensor:
    """Slot counts (length,) of u in [0, 1] or NaN (unit, overwritten): slot floor(u * bins) (+ the row's offset),
    NaN at 2 * bins. u is never +-inf (t - min <= max - min, and rounding keeps that; an inf range gives 0 or NaN)."""
    unit.nan_to_num_(nan=2.0).mul_(bins)
    if unit.device.type != "cpu":  # bincount syncs with the host on CUDA (it reads the max); index_add_ does not
        index = unit.long() if offsets is None else unit.long() + offsets
        return torch.zeros(length, device=unit.device).index_add_(0, index, torch.ones_like(unit))
    index = scratch.flat(unit.numel(), _index_dtype(length), unit.device, "index").copy_(unit)  # floor for u >= 0
    if offsets is not None:
        index += offsets
    return torch.bincount(index, minlength=length)


def unpack(values: list[float]) -> dict:
    """The host-side list from `pack` -> keyword arguments of SummaryWriter.add_histogram_raw."""
    lo, hi, num, total, squares = values[:HEADER]
    counts = values[HEADER:]
    width = (hi - lo) / len(counts)
    limits = [lo + width * (i + 1) for i in range(len(counts))]  # right edge of each bin
    return dict(min=lo, max=hi, num=num, sum=total, sum_squares=squares, bucket_limits=limits, bucket_counts=counts)


class Histograms(Probe):
    def __init__(self, layers: Layers) -> None:
        self.layers = layers
        self.outputs: dict[str, Tensor] = {}  # layer -> its output this step, packed with the gradients
        self.hooks = Hooks()
        self.scratch = Scratch()  # pack_many's buffers, kept between logging steps
        # large CPU tensors are packed beside the training thread, from copies (one buffer per phase, both may be in
        # flight) in buffers of their own (the helper thread runs one hand-over at a time)
        self.aside_backward, self.aside_step, self.aside_scratch = Aside(), Aside(), Scratch()
        for name, layer in layers:
            self.hooks.forward(layer, self._act_hook(name))

    @classmethod
    def from_context(cls, context: ProbeContext) -> "Histograms":
        return cls(context.layers)

    def watch(self, model: nn.Module) -> ContextManager:
        return self.hooks.attached()

    def _act_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            output = layer_output(output)
            if output is not None:  # a module returning a dict or None: nothing to bin (it raised AttributeError)
                self.outputs[name] = output.detach()

        return hook

    def after_backward(self, model: nn.Module) -> Scalars:
        tensors = {f"{PREFIX}act/{name}": t for name, t in self.outputs.items() if t.numel()}
        self.outputs = {}
        tensors.update({f"{PREFIX}grad/{n}": p.grad for n, p in named_parameters(model) if p.grad is not None})
        return self._packed(tensors, self.aside_backward)

    def after_step(self, model: nn.Module) -> Scalars:
        return self._packed({f"{PREFIX}weight/{n}": p for n, p in named_parameters(model)}, self.aside_step)

    def _packed(self, tensors: dict[str, Tensor], aside: Aside) -> Scalars:
        """Large CPU tensors go to the helper thread (probes/aside.py), the rest are packed here."""
        tensors = {tag: t for tag, t in tensors.items() if t.numel()}
        large = tuple(tag for tag, t in tensors.items() if t.numel() > SMALL and t.device.type == "cpu")
        values = _packed({tag: t for tag, t in tensors.items() if tag not in large}, self.scratch)
        if large:
            work = partial(_packed_copies, large, self.aside_scratch)
            values[large] = aside.submit([tensors[tag] for tag in large], work)
        return values


def _packed(tensors: dict[str, Tensor], scratch: Scratch) -> Scalars:
    return packed_rows(tensors, scratch=scratch) if tensors else {}


def _packed_copies(tags: tuple[str, ...], scratch: Scratch, copies: list[Tensor]) -> Scalars:
    """On the helper thread: the copies' histograms, under their tags."""
    return packed_rows(dict(zip(tags, copies)), scratch=scratch)
