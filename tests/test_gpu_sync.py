"""Ordinary (non-logging) steps must not synchronise with the host (needs CUDA; skipped without it): under
torch.cuda.set_sync_debug_mode("error") any implicit device->host copy or wait raises. Checked for gradexp's own
step after logging steps have run (hooks made, scratch buffers allocated, the sinks' writer thread busy), and for
gradexp.Monitor around a user's loop."""
from __future__ import annotations

import contextlib

import pytest
import torch

import gradexp
from gradexp.training import factory as build
from gradexp.training.nonfinite import NonfiniteGuard
from gradexp.training.loop import train_step
from gradexp.sinks.writer import SinkWriter
from tests.conftest import Capture, compose_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@contextlib.contextmanager
def no_host_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("overrides", [["model=mlp", "clip=norm_1.0"], ["model=lstm", "clip=value_0.1"],
                                       ["model=cnn"], ["model=mlp", "train.precision=bf16"]])
def test_non_logging_steps_make_no_host_sync(overrides):
    cfg = compose_config(["device=cuda", *overrides])
    run = build.run(cfg)
    settings = build.settings(cfg)
    guard = NonfiniteGuard(run, settings, 0)
    writer = SinkWriter([Capture()])
    for step in range(2):  # logging steps first: hooks made, buffers allocated, the writer thread started
        run.instruments.begin(step)
        scalars = train_step(run, settings, logging=True)
        guard.observe(scalars["loss/train"])
        writer.log(step, run.instruments.collect(scalars))
        assert guard.check(step, train_step) is None
    guard.observe(train_step(run, settings, logging=False)["loss/train"])  # lazy first-use allocations, if any
    with no_host_sync():
        for _ in range(3):
            guard.observe(train_step(run, settings, logging=False)["loss/train"])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in run.model.modules())  # none left attached
    assert guard.check(5, train_step) is None  # the check point is where the host reads the flag
    writer.close()


def test_monitor_ordinary_steps_make_no_host_sync(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU()) for _ in range(3)],
                                torch.nn.Linear(16, 4)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 16, device="cuda"), torch.randint(0, 4, (32,), device="cuda")
    monitor = gradexp.Monitor(model, run_dir=str(tmp_path / "run"), every=4, optimizers=[opt])

    def step():
        with monitor.step():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            monitor.record(loss=loss)

    for _ in range(2):  # a logging step (0) and the first ordinary one
        step()
    with no_host_sync():
        step(), step()  # steps 2 and 3: ordinary
    assert monitor.close().status == "completed"
