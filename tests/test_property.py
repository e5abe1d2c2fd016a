"""Property: any combination of options from every group plus random scalar values either trains and
writes a valid summary.json, or stops before training with the one-line ConfigError -- never a traceback."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rich.console import Console

from gradexp.config.schema import ConfigError
from gradexp.training.run import run_experiment
from gradexp.config.registry import DATA, MODELS
from tests.conftest import compose_config
from tests.test_config import GROUPS, options

# (key, values): in range, at the edges, and out of range, so both outcomes are drawn
SCALARS = [
    ("model.depth", [-1, 0, 1, 2, 3]), ("model.width", [0, 1, 4, 9]), ("model.residual", ["true", "false"]),
    ("init.gain", [-1.0, 0.0, 0.5, 1.0, 1e3, "inf", "nan"]), ("init.std", [0.0, 0.02, 1.0]),
    ("optimizer.lr", [0.0, -0.1, 1e-3, 0.1, 1e4, "inf"]), ("optimizer.momentum", [-0.1, 0.0, 0.5, 1.0]),
    ("optimizer.betas", ["[0.9,0.999]", "[0.5,0.9]", "[1.0,0.9]", "[0.9]"]),
    ("optimizer.weight_decay", [-1.0, 0.0, 0.01]), ("clip.max_norm", [-1.0, 0.1, 1.0]),
    ("clip.norm_type", [0.0, 1.0, 2.0, "inf"]), ("clip.value", [0.0, 0.5]),
    ("data.n_train", ["null", 0, 3, 40]), ("data.n_val", ["null", 0, 1, 20]), ("data.seq_len", ["null", 0, 1, 2, 5]),
    ("schedule.step_size", [0, 1, 2]), ("schedule.gamma", [0.0, 0.5, 1.0, 1.5]),
    ("train.steps", [0, 1, 2, 3]), ("train.batch_size", [0, 1, 2, 8]), ("train.eval_every", [0, 1, 2]),
    ("train.checkpoint_every", [-1, 0, 1, 2]), ("log.every", [0, 1, 2]), ("reg.l1", [-0.1, 0.0, 0.01]),
    ("reg.l2", [0.0, 0.01, "inf"]), ("seed", [-1, 0, 7]), ("device", ["cpu", "auto"]),
]


# data that fits each model, drawn half the time so that many draws get to train
FITTING = {family: [name for name, data in DATA.items() if data.input in model.inputs] for family, model in MODELS.items()}


@st.composite
def experiments(draw) -> list[str]:
    # gradexp's own options (model=custom needs the user's class: tests/test_custom_model.py)
    chosen = {group: draw(st.sampled_from([o for o in options(group) if (group, o) != ("model", "custom")]))
              for group in GROUPS}
    chosen["data"] = draw(st.sampled_from(FITTING[chosen["model"]]) | st.sampled_from(options("data")))
    offline = ["data.url=http://127.0.0.1:9"] if "url" in DATA[chosen["data"]].keys else []  # refused, no network
    chosen = [f"{group}={option}" for group, option in chosen.items()] + offline
    keys = draw(st.lists(st.sampled_from(SCALARS), max_size=4, unique_by=lambda kv: kv[0]))
    chosen += [f"{key}={draw(st.sampled_from(values))}" for key, values in keys]
    return chosen


def check_one(overrides: list[str]) -> None:
    cache = ["data.root=" + tempfile.mkdtemp()] if any(o.startswith("data.url=") for o in overrides) else []
    cfg = compose_config(["train.steps=2", "model.width=6", "data.n_val=16", *cache, *overrides])
    run_dir = os.path.join(tempfile.mkdtemp(), "run")
    try:
        try:
            outcome = run_experiment(cfg, run_dir=run_dir, overrides=overrides, console=Console(quiet=True))
        except ConfigError as err:
            event(f"refused: {err.key}")
            assert "\n" not in str(err) and err.key in str(err) and "allowed" in str(err)
            assert not os.path.exists(run_dir)  # refused before anything was written
            return
        event(outcome.status)
        assert outcome.status in ("completed", "diverged")
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        assert summary["status"] == outcome.status and summary["steps"] == outcome.steps >= 1
        assert summary["layers"] and all(layer["name"] for layer in summary["layers"])
        for value in summary["final"].values():
            assert value is None or math.isfinite(value)
    finally:
        shutil.rmtree(os.path.dirname(run_dir), ignore_errors=True)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(experiments())
def test_random_experiments_train_or_fail_with_one_line(overrides):
    check_one(overrides)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(experiments())
def test_random_experiments_many(overrides):
    check_one(overrides)
