"""First non-finite localisation on planted faults: the step, the phase and the layer must be the planted ones."""
from __future__ import annotations

import json
import os

import pytest
import torch

from gradexp.training import factory as build
from gradexp.data.tasks import Batches
from gradexp.sinks.summary import SummarySink
from gradexp.training.loop import train
from tests.conftest import compose_config

MARKER = 1234.5  # planted into one training example; the fault fires on the step whose batch holds it
OVERRIDES = ["model.depth=4", "train.steps=30", "log.every=8", "train.eval_every=100"]


def make_run(overrides, run_dir):
    cfg = compose_config([*OVERRIDES, *overrides])
    return cfg, build.run(cfg, sinks=[SummarySink(run_dir, overrides, [])])


def plant(run, step: int, layer: int, phase: str) -> None:
    """Mark one example of step `step`'s batch (first epoch: seen on no earlier step); when a batch holds it,
    layer `layer` overflows its output (forward) or the gradient arriving at its output (backward)."""
    n = len(run.task.x_train)
    indices = Batches(torch.arange(n), torch.arange(n), run.batches.batch_size, seed=0)
    indices.load_state_dict(run.batches.state_dict())  # the same index stream as the run's batches
    example = [indices.next()[0] for _ in range(step + 1)][-1][0]
    run.task.x_train[example].view(-1)[0] = MARKER
    seen = {}
    run.model.register_forward_pre_hook(lambda m, args: seen.__setitem__("hit", bool((args[0] == MARKER).any())))

    def fault(module, inputs, output):
        if not seen["hit"]:
            return None
        if phase == "forward":
            return output * torch.finfo(output.dtype).max * 10  # inf
        output.register_hook(lambda g: g * float("inf"))
        return None

    run.model.layers[layer].register_forward_hook(fault)


@pytest.mark.parametrize("phase,layer", [("forward", 2), ("backward", 1)])
def test_planted_fault_is_localised(tmp_path, phase, layer):
    cfg, run = make_run([], str(tmp_path))
    step = 13  # between the logging steps 8 and 16
    plant(run, step, layer=layer, phase=phase)
    outcome = train(run, build.settings(cfg))
    assert outcome.status == "diverged"
    found = outcome.nonfinite
    assert (found["step"], found["phase"], found["layer"]) == (step, phase, f"layers.{layer}")
    assert found["tensor"] == f"layers.{layer} " + ("output" if phase == "forward" else "output gradient")
    run.sinks[0].close(outcome)
    summary = json.load(open(os.path.join(tmp_path, "summary.json")))
    assert summary["status"] == "diverged" and summary["nonfinite"] == found
    assert outcome.steps < cfg.train.steps  # stopped at the check point after the fault


def test_keep_going_when_asked(tmp_path):
    cfg, run = make_run(["train.stop_on_nonfinite=false"], str(tmp_path))
    step = 13
    plant(run, step, layer=2, phase="forward")
    outcome = train(run, build.settings(cfg))
    assert outcome.status == "diverged" and outcome.steps == cfg.train.steps
    assert (outcome.nonfinite["step"], outcome.nonfinite["layer"]) == (step, "layers.2")


def test_real_divergence_matches_plain_torch_first_bad_step(run_tiny):
    """SGD at a huge learning rate: the reported step is the first where plain torch sees a non-finite loss or
    gradient, replaying the same batches."""
    overrides = ["optimizer=sgd", "optimizer.lr=1e6", "optimizer.momentum=0", "train.steps=40", "log.every=10",
                 "train.eval_every=100", "model.depth=3"]
    outcome, run_dir = run_tiny(overrides)
    assert outcome.status == "diverged"
    cfg = compose_config(overrides)
    task = build.task(cfg, build.device(cfg))
    model = build.model(cfg, task, build.device(cfg))
    opt, batches = build.optimizer(cfg, model.parameters()), build.batches(cfg, task)
    for step in range(40):
        x, y = batches.next()
        opt.zero_grad()
        loss = task.loss(model(x), y)
        loss.backward()
        if not torch.isfinite(loss) or any(not torch.isfinite(p.grad).all() for p in model.parameters()):
            break
        opt.step()
    assert outcome.nonfinite["step"] == step
    assert outcome.nonfinite["phase"] in ("forward", "backward")
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["nonfinite"]["step"] == step
