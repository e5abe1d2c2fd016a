"""act_mean and act_std against float64 on the same values, where float32 arithmetic alone would lose them: long rows
(a wide layer), 16-bit outputs (autocast, half models), and outputs too small or too large for float32 squares.
Found by an audit: a 2048-wide MLP's act_std was 9e-5 off, bf16 outputs' 4e-3, and outputs of ~1e-25 read std 0."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradexp.probes.act_stats import ActStats, std_mean_


def f64_std_mean(rows: torch.Tensor) -> tuple[list[float], list[float]]:
    x = rows.double()
    peak = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)  # scaled: float64's own extremes stay exact
    return ((x / peak).std(dim=1, correction=0) * peak[:, 0]).tolist(), x.mean(dim=1).tolist()


@pytest.mark.parametrize("scale", [1.0, 1e-25, 1e25, 1e-41], ids=lambda s: f"x{s:g}")
def test_std_mean_matches_float64_from_subnormal_to_huge(scale):
    gen = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randn(300_000, generator=gen, dtype=torch.float64) + 0.5,
                        torch.rand(300_000, generator=gen, dtype=torch.float64),
                        torch.relu(torch.randn(300_000, generator=gen, dtype=torch.float64))]) * scale  # half dead
    rows = rows.float()
    want_std, want_mean = f64_std_mean(rows)
    std, mean = std_mean_(rows.clone())
    rel = 1e-6 if scale > 1e-38 else 1e-5  # subnormal entries carry fewer digits themselves
    assert std.tolist() == pytest.approx(want_std, rel=rel, abs=0.0)
    assert mean.tolist() == pytest.approx(want_mean, rel=rel, abs=0.0)


def test_a_constant_zero_layer_is_mean_0_std_0():
    std, mean = std_mean_(torch.zeros(3, 1000))
    assert std.tolist() == [0.0] * 3 and mean.tolist() == [0.0] * 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_outputs_are_measured_in_float32(dtype):
    """ActStats on a half model: the statistics of the 16-bit outputs as they are, not rounded to 16 bits."""
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh()).to(dtype)
    probe = ActStats(None, [("0", layers[0]), ("2", layers[2])])
    kept = []
    for layer in (layers[0], layers[2]):
        layer.register_forward_hook(lambda m, i, o: kept.append(o.detach()))
    with probe.watch(layers):
        layers(torch.randn(128, 64).to(dtype)).float().sum().backward()
    values = {tag: v for tags, vs in probe.after_backward(layers).items() for tag, v in zip(tags, vs.tolist())}
    for name, out in zip(("0", "2"), kept):
        (std,), (mean,) = f64_std_mean(out.reshape(1, -1))
        assert values[f"act_std/{name}"] == pytest.approx(std, rel=1e-6)
        assert values[f"act_mean/{name}"] == pytest.approx(mean, rel=1e-6, abs=1e-9)
        assert not math.isclose(values[f"act_std/{name}"], torch.tensor(std).to(dtype).item(), rel_tol=1e-7)


@pytest.mark.parametrize("n", [4097, 6400, 8192])
def test_float64_rows_of_any_length(n):
    """Found by a review: float64 rows longer than norms.LONG and not a whole number of norms.ROW runs raised inside
    torch (a float32 accumulator asked of float64 entries)."""
    rows = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) + 0.3
    want_std, want_mean = f64_std_mean(rows)
    std, mean = std_mean_(rows.clone())
    assert std.tolist() == pytest.approx(want_std, rel=1e-12) and mean.tolist() == pytest.approx(want_mean, rel=1e-12)


@pytest.mark.parametrize("n", [4096, 32768])
def test_a_mean_far_larger_than_the_std(n):
    """Found by a review: 1000 + 1e-3 * noise read act_std 2.3e-4 off, since the mean rounded to float32 leaves a
    residual in the centred rows as large as the std's own scale; the corrected two-pass formula removes it."""
    rows = (1000 + 1e-3 * torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))).float()
    want_std, want_mean = f64_std_mean(rows)
    std, mean = std_mean_(rows.clone())
    assert std.tolist() == pytest.approx(want_std, rel=1e-6) and mean.tolist() == pytest.approx(want_mean, rel=1e-7)
