"""act_* statistics, update ratios, clip telemetry and histograms against plain-torch recomputations of step 0."""
from __future__ import annotations

import json
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradexp.training import factory as build
from gradexp.config.schema import ConfigError, validate
from tests.conftest import compose_config
from tests.test_oracle import read_scalars


def first_batch(overrides):
    cfg = compose_config(overrides)
    dev = build.device(cfg)
    task = build.task(cfg, dev)
    model = build.model(cfg, task, dev)
    return cfg, task, model, build.batches(cfg, task).next()


def expected_saturation(y: torch.Tensor, activation: str, unit_dim: int) -> float:
    if activation == "sigmoid":
        return (y * (1 - y) < 0.05 * 0.25).float().mean().item()
    if activation == "tanh":
        return (1 - y ** 2 < 0.05).float().mean().item()
    units = y.transpose(0, unit_dim).reshape(y.shape[unit_dim], -1)  # (units, rest)
    return (units <= 0).all(dim=1).float().mean().item()


STATS_CASES = [
    (["activation=sigmoid", "init=normal", "init.std=3.0"], "act", 1),
    (["activation=relu", "init=normal", "init.std=0.3", "model.depth=3"], "act", 1),
    (["model=cnn", "activation=relu"], "act", 1),
    (["model=rnn", "norm=layernorm"], "norm_input", -1),
]


@pytest.mark.parametrize("overrides,site,unit_dim", STATS_CASES, ids=lambda o: " ".join(o) if isinstance(o, list) else str(o))
def test_act_stats_match_plain_torch(run_tiny, overrides, site, unit_dim):
    _, run_dir = run_tiny(overrides)
    logged = read_scalars(run_dir)
    cfg, task, model, (x, y) = first_batch(overrides)
    outputs, act_outputs = [], []
    for layer in model.layers:
        layer.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
        if site == "act":
            layer.act.register_forward_hook(lambda m, i, o: act_outputs.append(o.detach()))
        else:
            layer.norm.register_forward_pre_hook(lambda m, i: act_outputs.append(i[0].detach()))
    model(x)
    for i, (out, act) in enumerate(zip(outputs, act_outputs)):
        assert logged[f"act_mean/layers.{i}"][0] == pytest.approx(out.mean().item(), rel=1e-4, abs=1e-6)
        assert logged[f"act_std/layers.{i}"][0] == pytest.approx(out.std(correction=0).item(), rel=1e-4)
        sat = expected_saturation(act, cfg.activation.name, unit_dim if unit_dim >= 0 else act.dim() - 1)
        assert logged[f"act_saturation/layers.{i}"][0] == pytest.approx(sat, abs=1e-6)
    if "sigmoid" in " ".join(overrides):  # std 3 weights push sigmoid units into the flat region: must show
        assert logged["act_saturation/layers.0"][0] > 0.05


def test_update_ratio_matches_parameter_snapshots(run_tiny):
    overrides = ["optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0"]
    _, run_dir = run_tiny(overrides)
    logged = read_scalars(run_dir)
    cfg, task, model, (x, y) = first_batch(overrides)
    opt = build.optimizer(cfg, model.parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    task.loss(model(x), y).backward()
    opt.step()
    for n, p in model.named_parameters():
        expected = ((p.detach() - before[n]).norm() / before[n].norm()).item()
        assert logged[f"update_ratio/{n}"][0] == pytest.approx(expected, rel=1e-4), n


@pytest.mark.parametrize("clip", ["norm_0.5", "value_0.1"])
def test_clip_telemetry_matches_torch(run_tiny, clip):
    overrides = ["model=mlp", f"clip={clip}", "init=kaiming_normal", "init.gain=3"]
    _, run_dir = run_tiny(overrides)
    logged = read_scalars(run_dir)
    cfg, task, model, (x, y) = first_batch(overrides)
    task.loss(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    total = torch.cat([g.flatten() for g in grads]).norm()
    if clip.startswith("norm"):
        assert logged["clip/scale"][0] == pytest.approx(min(1.0, 0.5 / (total.item() + 1e-6)), rel=1e-4)
    else:
        flat = torch.cat([g.flatten() for g in grads])
        assert logged["clip/frac_entries_clipped"][0] == pytest.approx((flat.abs() > 0.1).float().mean().item(), abs=1e-6)
        assert logged["clip/scale"][0] == pytest.approx(flat.clamp(-0.1, 0.1).norm().item() / total.item(), rel=1e-4)
    assert logged["clip/scale"][0] < 1  # clipping took effect, visibly
    # every tiny step is clipped at this gain; the fraction so far is read from the device counter
    assert [logged["clip/frac_steps_clipped"][s] for s in range(4)] == [1.0] * 4
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["clip"]["clip/frac_steps_clipped"] == 1.0


def test_clip_fraction_counts_only_clipped_steps():
    from gradexp.training.clip import ClipPolicy

    policy, p = ClipPolicy("norm", max_norm=1.0, norm_type=2.0, value=1.0), torch.nn.Parameter(torch.zeros(3))
    for scale in (0.1, 5.0, 0.2, 9.0):  # two of four steps above max_norm
        p.grad = torch.full((3,), scale)
        policy.apply([p])
    assert policy.fraction_of_steps_clipped().item() == 0.5


@pytest.mark.parametrize("max_norm", [1.0, 1e-7, 2e-6])
def test_a_step_counts_as_clipped_exactly_when_torch_changed_the_gradient(max_norm):
    """Near and under torch's epsilon (1e-6, added to the norm) norm > max_norm is not what torch does: a gradient of
    norm 9.6e-8 under max_norm 1e-7 is scaled by 0.09 (found by an audit: frac_steps_clipped read 0 there)."""
    from gradexp.training.clip import ClipPolicy

    policy, p = ClipPolicy("norm", max_norm=max_norm, norm_type=2.0, value=1.0), torch.nn.Parameter(torch.zeros(3))
    changed = 0
    for norm in (9.6e-8, 5e-7, 1.5e-6, 3e-6, 0.5, 2.0):
        p.grad = torch.full((3,), norm / 3 ** 0.5)
        before = p.grad.clone()
        policy.apply([p])
        changed += not torch.equal(p.grad, before)
    assert policy.fraction_of_steps_clipped().item() == changed / 6
    assert 0 < changed < 6 or max_norm == 1e-7


def test_histograms_on_their_interval_match_torch(run_tiny):
    overrides = ["log.histograms_every=2", "train.steps=5"]
    _, run_dir = run_tiny(overrides)
    acc = EventAccumulator(run_dir, size_guidance={"histograms": 0})
    acc.Reload()
    tags = acc.Tags()["histograms"]
    assert {"hist/grad/layers.0.linear.weight", "hist/weight/head.bias", "hist/act/layers.1"} <= set(tags)
    assert [e.step for e in acc.Histograms("hist/grad/layers.0.linear.weight")] == [0, 2, 4]
    cfg, task, model, (x, y) = first_batch(overrides)
    task.loss(model(x), y).backward()
    g = model.layers[0].linear.weight.grad
    h = acc.Histograms("hist/grad/layers.0.linear.weight")[0].histogram_value
    assert (h.min, h.max, h.num) == pytest.approx((g.min().item(), g.max().item(), g.numel()), rel=1e-5)
    assert h.sum == pytest.approx(g.sum().item(), rel=1e-3, abs=1e-6)
    assert h.sum_squares == pytest.approx((g * g).sum().item(), rel=1e-4)
    expected = torch.histc(g, bins=len(h.bucket), min=g.min().item(), max=g.max().item())
    assert list(h.bucket) == pytest.approx(expected.tolist(), abs=1)  # edge entries may round to a neighbour bin
    assert sum(h.bucket) == g.numel()


def test_histograms_packed_together_match_torch_one_tensor_at_a_time():
    """pack_many (every same-sized tensor of a phase in one stack) against plain torch per tensor: min, max, count,
    sums, and histc's bins (an entry on a bin edge may land in the neighbouring bin); NaN/Inf entries in no bin."""
    from gradexp.probes.histograms import BINS, pack_many
    torch.manual_seed(0)
    tensors = [torch.randn(16, 8) for _ in range(3)] + [torch.randn(8), torch.randn(4, 2) * 1e-30,
                                                        torch.full((5,), 3.0), torch.tensor([1.0, float("nan"), 2.0]),
                                                        torch.tensor([1.0, float("inf"), 2.0]), torch.randn(6).half()]
    for t, packed in zip(tensors, pack_many(tensors)):
        t = t.float().reshape(-1)
        # the sum of squares in float64: float32's squares of the 1e-30 entries underflow (the probe's are exact)
        header = torch.tensor([t.min(), t.max(), t.numel(), t.sum(), t.double().square().sum()], dtype=torch.float64)
        assert torch.allclose(packed[:5], header, rtol=1e-5, atol=0, equal_nan=True)
        finite = t[torch.isfinite(t)]
        if t.isnan().any() or t.isinf().any():
            assert packed[5:].sum() == 0 if t.isnan().any() else packed[5:].sum() <= finite.numel()
            continue
        if t.min() == t.max():  # a constant tensor: every entry in the first bin (histc would widen the range)
            assert packed[5] == t.numel()
            continue
        expected = torch.histc(t, bins=BINS, min=t.min().item(), max=t.max().item())
        assert (packed[5:] - expected).abs().max() <= 1 and packed[5:].sum() == t.numel()


def test_histograms_off_by_default(run_tiny):
    _, run_dir = run_tiny([])
    acc = EventAccumulator(run_dir)
    acc.Reload()
    assert acc.Tags()["histograms"] == []


@pytest.mark.parametrize("key", ["log.histograms_every", "log.bptt_every"])
def test_interval_must_be_multiple_of_log_every(key):
    model = ["model=lstm", "data=adding"] if key == "log.bptt_every" else []  # bptt: recurrent layers only
    cfg = compose_config([*model, "log.every=4", f"{key}=6"])
    with pytest.raises(ConfigError, match=key):
        validate(cfg)
    validate(compose_config([*model, "log.every=4", f"{key}=8"]))


def test_perf_records_rate_and_instrumentation_share(run_tiny):
    _, run_dir = run_tiny(["train.steps=20", "log.every=5"])
    perf = json.load(open(os.path.join(run_dir, "summary.json")))["perf"]
    assert perf["steps_per_s"] > 0
    assert 0 <= perf["instrumentation_share"] < 1
