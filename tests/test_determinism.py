"""Same config and seed on CPU -> identical summary metrics and identical logged scalars."""
from __future__ import annotations

import pytest
import torch

from tests.test_resume import scalars, summary


@pytest.mark.parametrize("overrides", [
    ["model=mlp", "norm=batchnorm", "optimizer=adamw", "clip=norm_0.5", "reg.l2=0.01"],
    ["model=gru", "data.seq_len=6", "schedule=step", "schedule.step_size=2"],
    ["model=cnn", "model.depth=1", "init=kaiming_normal", "optimizer=rmsprop", "optimizer.momentum=0.5"],
], ids=["mlp", "gru", "cnn"])
def test_same_config_and_seed_give_identical_results(run_tiny, overrides):
    overrides = [*overrides, "device=cpu", "train.steps=6"]
    _, first = run_tiny(overrides, name="a")
    _, second = run_tiny(overrides, name="b")
    assert summary(first) == summary(second)
    assert scalars(first) == scalars(second) and scalars(first)["loss/train"]


def test_a_different_seed_gives_different_scalars(run_tiny):
    _, first = run_tiny(["device=cpu"], name="a")
    _, second = run_tiny(["device=cpu", "seed=1"], name="b")
    assert scalars(first)["loss/train"] != scalars(second)["loss/train"]  # the check above can fail


def test_deterministic_switch_turns_on_deterministic_algorithms(run_tiny):
    seen = []
    original = torch.use_deterministic_algorithms
    try:
        torch.use_deterministic_algorithms = lambda mode, **kw: (seen.append(mode), original(mode, **kw))
        run_tiny(["train.deterministic=true"], name="a")
        run_tiny([], name="b")
    finally:
        torch.use_deterministic_algorithms = original
    assert seen == [True, False]
    assert not torch.are_deterministic_algorithms_enabled()
