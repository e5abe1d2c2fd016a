"""Shared fixtures: compose real configs with Hydra's compose API, tiny enough to train in a second."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

import gradexp

TINY = ["train.steps=4", "train.eval_every=2", "log.every=1", "train.batch_size=16", "model.width=8", "model.depth=2"]


def compose_config(overrides: list[str] = (), tiny: bool = True):
    return gradexp.compose([*(TINY if tiny else []), *overrides])


@pytest.fixture
def quiet_console():
    return Console(quiet=True)


@pytest.fixture
def run_tiny(tmp_path, quiet_console):
    """run_tiny(overrides) -> (outcome, run_dir): trains a tiny composed experiment in tmp_path."""
    from gradexp.training.run import run_experiment

    def run(overrides: list[str] = (), tiny: bool = True, name: str = "run"):
        cfg = compose_config(list(overrides), tiny=tiny)
        run_dir = str(tmp_path / name)
        return run_experiment(cfg, run_dir=run_dir, overrides=list(overrides), console=quiet_console), run_dir

    return run


class Capture:
    """A sink that keeps every logged value by step: what a test compares with its oracle."""

    def __init__(self) -> None:
        self.steps: dict[int, dict] = {}

    def log(self, step, values):
        self.steps.setdefault(step, {}).update(values)

    def close(self, outcome):
        pass


def float64_step(model, micro_batches):
    """The oracle of the Monitor and Lightning tests: a float64 copy of `model` (blocks in `model.blocks`), one
    accumulated backward of the averaged cross-entropy over `micro_batches`, keeping every call's output of each
    block. Returns (the copy, {"blocks.<i>": [outputs with .grad]}, each micro-batch's loss)."""
    ref = copy.deepcopy(model).double()
    outs: dict = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outs.setdefault(name, []).append(output)
        return hook

    for i, block in enumerate(ref.blocks):
        block.register_forward_hook(keep(f"blocks.{i}"))
    losses = []
    for x, y in micro_batches:
        loss = F.cross_entropy(ref(x.double()), y) / len(micro_batches)
        loss.backward()
        losses.append(loss.item())
    return ref, outs, losses


def activation_expectations(outs) -> dict[str, float]:
    """act_grad_norm, act_mean and act_std of each block, every call of a block pooled (as the probes pool them)."""
    expected = {}
    for name, calls in outs.items():
        expected[f"act_grad_norm/{name}"] = math.sqrt(sum(c.grad.pow(2).sum().item() for c in calls))
        pooled = torch.cat([c.detach().reshape(-1) for c in calls])
        expected[f"act_mean/{name}"] = pooled.mean().item()
        expected[f"act_std/{name}"] = pooled.std(correction=0).item()
    return expected


def run_example_twice(example: str, cwd, steps: int) -> list[dict]:
    """An example script run twice as the README says (`python examples/X.py --steps N`): each run writes a new
    runs/monitor-<time>/ (a fixed folder made the second run fail). The two runs' summaries."""
    import os
    import subprocess
    import sys

    for _ in range(2):
        done = subprocess.run([sys.executable, os.path.abspath(example), "--steps", str(steps)], cwd=cwd,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    runs = gradexp.find_runs(str(cwd / "runs"))
    assert len(runs) == 2 and all(os.path.basename(r).startswith("monitor-") for r in runs)
    return [gradexp.load_summary(run_dir) for run_dir in runs]
