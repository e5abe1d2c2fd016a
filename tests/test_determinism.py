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


@pytest.mark.parametrize("overrides", [[], ["schedule=step", "schedule.step_size=2"], ["model=gru", "data.seq_len=6"]],
                         ids=["mlp", "scheduler", "gru"])
def test_bare_steps_give_the_full_steps_numbers_bit_for_bit(run_tiny, monkeypatch, overrides):
    from gradexp.training import loop
    taken = []
    bare_step = loop.bare_step
    monkeypatch.setattr(loop, "bare_step", lambda run: (taken.append(1), bare_step(run))[1])
    overrides = [*overrides, "device=cpu", "train.steps=8", "log.every=2"]
    _, bare = run_tiny(overrides, name="bare")
    assert len(taken) == 3  # steps 1, 3 and 5; 0, 2, 4, 6 and the last, 7, are logging steps
    monkeypatch.setattr(loop, "is_bare", lambda run, settings: False)
    _, full = run_tiny(overrides, name="full")
    assert summary(bare) == summary(full)
    assert scalars(bare) == scalars(full) and scalars(bare)["loss/train"]


@pytest.mark.parametrize("overrides", [["clip=norm_1.0"], ["train.precision=bf16"], ["reg.l2=0.01"],
                                       ["train.loss_scale=dynamic"]])
def test_a_run_with_something_between_backward_and_step_never_steps_bare(run_tiny, monkeypatch, overrides):
    from gradexp.training import loop
    monkeypatch.setattr(loop, "bare_step", lambda run: pytest.fail("a bare step"))
    outcome, _ = run_tiny([*overrides, "device=cpu", "train.steps=5", "log.every=2"])
    assert outcome.status == "completed"
