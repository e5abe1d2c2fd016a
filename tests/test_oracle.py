"""Every logged number against a plain-torch computation of the same quantity (micrograd's test_engine style):
rebuild the run's model and first batch from the same config, differentiate with torch.autograd, compare with
what the event files and summary.json hold for step 0."""
from __future__ import annotations

import json
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradexp.training import factory as build
from tests.conftest import compose_config

FAMILIES = [
    ["model=mlp"],
    ["model=mlp", "model.residual=true", "norm=layernorm"],
    ["model=cnn", "norm=batchnorm"],
    ["model=rnn"],
    ["model=lstm", "norm=layernorm"],
    pytest.param(["model=gru", "data=seq_digits"], marks=pytest.mark.slow),  # a few seconds; rnn and lstm stay fast
]


def read_scalars(run_dir: str) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def oracle_step0(overrides: list[str]) -> dict[str, float]:
    """The step-0 quantities computed with plain torch from a freshly built model and the run's first batch."""
    cfg = compose_config(overrides)
    dev = build.device(cfg)
    task = build.task(cfg, dev)
    model = build.model(cfg, task, dev)
    x, y = build.batches(cfg, task).next()
    outputs = []
    handles = [layer.register_forward_hook(lambda m, i, o: outputs.append(o)) for layer in model.layers]
    loss = task.loss(model(x), y)
    for h in handles:
        h.remove()
    params = [(n, p) for n, p in model.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in params] + outputs, allow_unused=True)
    param_grads, act_grads = grads[: len(params)], grads[len(params):]
    expected = {f"grad_norm/{n}": g.norm().item() for (n, _), g in zip(params, param_grads) if g is not None}
    expected["grad_norm/total"] = torch.cat([g.flatten() for g in param_grads if g is not None]).norm().item()
    expected.update({f"act_grad_norm/layers.{i}": g.norm().item() for i, g in enumerate(act_grads)})
    expected["loss/train"] = loss.item()
    return expected


@pytest.mark.parametrize("overrides", FAMILIES, ids=lambda o: " ".join(o))
def test_logged_step0_matches_plain_torch(run_tiny, overrides):
    outcome, run_dir = run_tiny(overrides)
    assert outcome.status == "completed"
    logged = read_scalars(run_dir)
    expected = oracle_step0(overrides)
    for tag, value in expected.items():
        assert tag in logged, f"{tag} not logged"
        assert logged[tag][0] == pytest.approx(value, rel=1e-4, abs=1e-7), tag
    # no clip policy: the clipped norm is the norm
    assert logged["grad_norm/total_clipped"][0] == pytest.approx(expected["grad_norm/total"], rel=1e-5)


@pytest.mark.parametrize("clip", ["norm_0.5", "value_0.1"])
def test_total_clipped_matches_torch_clip(run_tiny, clip):
    overrides = ["model=mlp", f"clip={clip}", "init=kaiming_normal", "init.gain=3"]
    _, run_dir = run_tiny(overrides)
    logged = read_scalars(run_dir)
    cfg = compose_config(overrides)
    task = build.task(cfg, build.device(cfg))
    model = build.model(cfg, task, build.device(cfg))
    x, y = build.batches(cfg, task).next()
    task.loss(model(x), y).backward()
    params = list(model.parameters())
    if clip.startswith("norm"):
        torch.nn.utils.clip_grad_norm_(params, cfg.clip.max_norm)
    else:
        torch.nn.utils.clip_grad_value_(params, cfg.clip.value)
    clipped = torch.cat([p.grad.flatten() for p in params]).norm().item()
    assert logged["grad_norm/total_clipped"][0] == pytest.approx(clipped, rel=1e-4)
    assert logged["grad_norm/total_clipped"][0] < logged["grad_norm/total"][0]


def test_summary_layers_match_event_files(run_tiny):
    outcome, run_dir = run_tiny(["model=mlp", "model.depth=3"])
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    logged = read_scalars(run_dir)
    assert [layer["name"] for layer in summary["layers"]] == ["layers.0", "layers.1", "layers.2"]
    steps = sorted(logged["act_grad_norm/layers.0"])
    for layer in summary["layers"]:
        act = logged[f"act_grad_norm/{layer['name']}"]
        assert layer["act_grad_norm"] == pytest.approx({"first": act[steps[0]], "last": act[steps[-1]]})
        param_tags = [t for t in logged if t.startswith(f"grad_norm/{layer['name']}.")]
        first = sum(logged[t][steps[0]] ** 2 for t in param_tags) ** 0.5
        assert layer["grad_norm"]["first"] == pytest.approx(first, rel=1e-6)
    assert summary["final"]["loss/val"] == pytest.approx(logged["loss/val"][max(logged["loss/val"])])


def test_the_logged_lr_is_the_rate_the_update_used(run_tiny):
    """Found by a user: `lr` was read after the scheduler had stepped, one update ahead (a 4-step warmup logged
    0.5, 0.75, 1, 1 x lr for updates that used 0.25, 0.5, 0.75, 1). Oracle: a plain SGD step moves the parameters by
    exactly lr x gradient, so the rate each update used is ||theta_after - theta_before|| / ||grad||."""
    lr, warm = 0.1, 4
    outcome, run_dir = run_tiny(["optimizer=sgd", f"optimizer.lr={lr}", "optimizer.momentum=0",
                                 "optimizer.weight_decay=0", f"schedule.warmup_steps={warm}", "train.steps=6"])
    assert outcome.status == "completed"
    logged = read_scalars(run_dir)
    name = "layers.0.linear.weight"
    for step in range(6):
        assert logged["lr"][step] == pytest.approx(lr * min(1.0, (step + 1) / warm), rel=1e-6), step
    cfg = compose_config(["optimizer=sgd", f"optimizer.lr={lr}", "optimizer.momentum=0", "optimizer.weight_decay=0",
                          f"schedule.warmup_steps={warm}", "train.steps=6"])
    task = build.task(cfg, build.device(cfg))
    model = build.model(cfg, task, build.device(cfg))
    before = dict(model.named_parameters())[name].detach().double().norm().item()
    used = logged[f"update_ratio/{name}"][0] * before / logged[f"grad_norm/{name}"][0]
    assert used == pytest.approx(logged["lr"][0], rel=1e-4)  # the rate update 0 moved the weights by
