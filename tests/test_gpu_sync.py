"""Non-logging steps must not synchronise with the host (needs CUDA; skipped without it)."""
from __future__ import annotations

import pytest
import torch

from gradexp.training import factory as build
from gradexp.training.nonfinite import NonfiniteGuard
from gradexp.training.loop import train_step
from tests.conftest import compose_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("overrides", [["model=mlp", "clip=norm_1.0"], ["model=lstm", "clip=value_0.1"]])
def test_non_logging_steps_make_no_host_sync(overrides):
    cfg = compose_config(["device=cuda", *overrides])
    run = build.run(cfg)
    settings = build.settings(cfg)
    guard = NonfiniteGuard(run, settings, 0)
    for _ in range(2):  # warm-up: lazy allocations (optimizer state, clip counters) may sync once
        guard.observe(train_step(run, settings, logging=False)["loss/train"])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            guard.observe(train_step(run, settings, logging=False)["loss/train"])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert guard.check(4, train_step) is None  # the check point is where the host reads the flag
