"""Histograms (gradexp/probes/histograms.py) against a float64 oracle of their definition, tensor by tensor: min, max,
count and sum of the float32 values, the exact sum of their squares, and the bins by the float32 rule, every float32 operation done in
float64 and rounded to float32 (for + - * / that double rounding is exact: 53 >= 2 * 24 + 2 bits). Both paths (small
tensors stacked by size, large ones one at a time), buffers reused from call to call, and the inputs that break
naive code: subnormal, all-equal, signed zeros, NaN, +-inf, a range that overflows float32, values on bin edges."""
from __future__ import annotations

import pytest
import torch

from gradexp.probes.histograms import BINS, SMALL, Scratch, pack_many

TINY = torch.finfo(torch.float32).tiny


def f32(x: torch.Tensor) -> torch.Tensor:
    """A float64 result rounded to float32, kept in float64."""
    return x.float().double()


def oracle(t: torch.Tensor, bins: int = BINS) -> dict:
    x = t.detach().float().reshape(-1).double()
    lo, hi = x.min(), x.max()  # exact; NaN when an entry is NaN
    unit = f32(f32(x - lo) / f32(hi - lo).clamp_min(TINY))  # in [0, 1], or NaN
    slot = f32(unit * bins)
    counted = slot[~slot.isnan()].floor().long()
    counts = torch.bincount(counted, minlength=bins + 1).double()
    counts[bins - 1] += counts[bins]  # the top edge in the last bin
    return dict(min=lo, max=hi, num=x.numel(), sum=x.sum(), squares=(x * x).sum(), abs_sum=x.abs().sum(),
                counts=counts[:bins])


def close(got: float, want: torch.Tensor, scale: torch.Tensor, n: int) -> bool:
    """A float32 sum of n terms against the float64 one: within float32 summation error, or the same non-finite
    value where the float32 result overflows; each term may lose up to 2^-149 to underflow. (Cases whose partial
    sums would overflow float32 one way in some lanes and the other way in others are left out: their NaN or inf
    depends on the summation order.)"""
    if not torch.isfinite(f32(want)):
        return torch.isnan(want).item() and got != got or got == f32(want).item()
    return abs(got - want.item()) <= 1e-5 * scale.item() + n * 2.0 ** -149


def exact_squares(got: float, want: torch.Tensor) -> bool:
    """The sum of squares is the square of the exact norm (probes/norms.py), in float64: within 1e-6 of the float64
    sum (1e-5: twice the norm's bound, squared) however small the entries (squares summed in float32 read 5.6e-45 for 2.87e-44, and 0 for subnormal entries)
    or large (no float32 overflow); NaN or inf as the entries make it."""
    if not torch.isfinite(want):
        return torch.isnan(want).item() and got != got or got == want.item()
    return abs(got - want.item()) <= 1e-5 * want.item()  # twice the norm's 3e-6 (probes/norms.py), squared


def check(t: torch.Tensor, packed: torch.Tensor) -> None:
    want = oracle(t)
    lo, hi, num, total, squares = packed[:5].double().tolist()
    for got, exact in ((lo, want["min"]), (hi, want["max"])):
        assert got == exact.item() or (got != got and exact.isnan()), (t, packed)
    assert num == want["num"]
    assert close(total, want["sum"], want["abs_sum"], want["num"]), (total, want["sum"])
    assert exact_squares(squares, want["squares"]), (squares, want["squares"])
    assert torch.equal(packed[5:].double(), want["counts"]), (t, packed[5:], want["counts"])


def hard_cases(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    normal = torch.randn(n, generator=g)
    some = torch.rand(n, generator=g) < 0.1
    edges = (torch.arange(n) % (BINS + 1)).float() / BINS  # every bin edge, as float32 rounds k / BINS
    return [normal, normal * 1e-40, normal * 1e30, torch.full((n,), 3.0), torch.zeros(n),
            torch.tensor([0.0, -0.0]).repeat((n + 1) // 2)[:n], edges, edges * 7 - 3,
            torch.where(some, float("nan"), normal), torch.where(some, float("inf"), normal),
            torch.where(some, -float("inf"), normal), torch.cat([torch.tensor([3e38, -3e38]), normal])[:n],
            torch.arange(n).float() * 1e-45, normal.half(), normal.bfloat16(), normal.double() * 1e-3]


@pytest.mark.parametrize("n", [1, 2, 64, 4096, SMALL, SMALL + 1, 40000])
def test_every_value_matches_the_float64_oracle(n):
    tensors = hard_cases(n)
    for t, packed in zip(tensors, pack_many(tensors)):  # all of them together: one stack per size, or one at a time
        check(t, packed)
    check(tensors[0], pack_many(tensors[:1])[0])  # alone


def test_bins_are_torch_histc_of_the_scaled_float32_entries():
    t = torch.randn(5000)
    lo, hi = t.min(), t.max()
    unit = (t - lo) / (hi - lo)
    assert torch.equal(pack_many([t])[0][5:], torch.histc(unit, bins=BINS, min=0.0, max=1.0))


def test_mixed_sizes_and_reused_buffers_keep_each_tensor_apart():
    """Groups of several sizes and large tensors in one call, twice through the same Scratch with other values and
    fewer tensors (stale buffers or offsets would show), and shapes that reshape has to copy."""
    scratch = Scratch()
    g = torch.Generator().manual_seed(0)
    first = [torch.randn(s, generator=g) for s in (5, 20000, 5, (3, 4), 12, 70000, (64, 64), 5)]
    second = [torch.randn(s, generator=g) * 100 for s in (5, 20000, (3, 4))] + [torch.randn(8, 6).t()]
    for tensors in (first, second, first):
        for t, packed in zip(tensors, pack_many(tensors, scratch=scratch)):
            check(t, packed)


def test_tensors_that_require_grad_and_views():
    w = torch.nn.Parameter(torch.randn(30, 20))
    tensors = [w, w[:, :7], w.t()]
    for t, packed in zip(tensors, pack_many(tensors)):
        check(t, packed)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_oracle_without_a_host_sync():
    tensors = hard_cases(4096) + hard_cases(SMALL + 1)
    cuda = [t.cuda() for t in tensors]
    scratch = Scratch()
    pack_many(cuda, scratch=scratch)  # the first call makes the layout constants (host -> device copies)
    torch.cuda.set_sync_debug_mode("error")
    try:
        packed = pack_many(cuda, scratch=scratch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for t, row in zip(tensors, packed):
        check(t, row.cpu())


def test_shapes_that_change_every_call_keep_the_scratch_bounded():
    scratch = Scratch()
    for n in range(1, 60):
        tensors = [torch.randn(n, 3), torch.randn(n, 3), torch.randn(7)]
        for t, packed in zip(tensors, pack_many(tensors, scratch=scratch)):
            check(t, packed)
    assert len(scratch.constants) <= 16


def test_packed_rows_are_pack_manys_rows_under_their_tags_and_reach_the_host_one_list_per_tag():
    from gradexp.probes import base
    from gradexp.probes.histograms import packed_rows
    tensors = {f"hist/{i}": t for i, t in enumerate(hard_cases(64) + hard_cases(SMALL + 1)[:3])}
    (tags, matrix), = packed_rows(tensors).items()
    assert sorted(tags) == sorted(tensors) and matrix.shape == (len(tensors), 5 + BINS)
    for tag, row in zip(tags, matrix.unbind()):
        torch.testing.assert_close(row, pack_many([tensors[tag]])[0], rtol=0, atol=0, equal_nan=True)
    for read in (base._read_host, base._read_device):  # on the host, and the one-copy path off it
        got = read(["loss", tags], [torch.tensor(1.0), matrix])
        assert got["loss"] == 1.0 and list(got[tags]) == list(tags)
        for tag, row in zip(tags, matrix.unbind()):
            torch.testing.assert_close(torch.tensor(got[tags][tag], dtype=row.dtype), row, rtol=0, atol=0,
                                       equal_nan=True)
