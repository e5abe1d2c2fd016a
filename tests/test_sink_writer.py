"""The sinks' writer thread (gradexp/sinks/writer.py) and the cheap-logging machinery around it: values reach every
sink in order, a write error raised on the writer thread stops the run on the training thread, hooks exist only on
logging steps, and TensorBoard's records keep their exact checksums."""
from __future__ import annotations

import errno
import os
import random
import threading

import pytest
import torch

from gradexp.sinks import writer as writer_module
from gradexp.sinks.writer import SinkWriter
from gradexp.training import factory as build
from gradexp.training.loop import train
from tests.conftest import Capture, compose_config


class Failing:
    """A sink whose disk fills up at `at_step`; it notes which thread wrote."""

    def __init__(self, at_step: int) -> None:
        self.at_step, self.steps, self.threads = at_step, [], set()

    def log(self, step, values):
        self.threads.add(threading.current_thread().name)
        if step >= self.at_step:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "events.out.tfevents.x")
        self.steps.append(step)

    def close(self, outcome):
        pass


def test_values_reach_every_sink_in_order_once_drained():
    first, second = Capture(), Capture()
    writer = SinkWriter([first, second])
    for step in range(50):
        writer.log(step, {"loss/train": float(step)})
    writer.drain()
    assert list(first.steps) == list(range(50)) and first.steps == second.steps
    assert first.steps[49] == {"loss/train": 49.0}
    writer.close()
    assert writer.thread is None


def test_logging_steps_are_handed_over_in_batches_and_all_written_at_close(monkeypatch):
    monkeypatch.setattr(writer_module, "LATENCY", 1e9)  # only the batch size hands over here
    sink = Capture()
    writer = SinkWriter([sink])
    for step in range(writer_module.BATCH - 1):
        writer.log(step, {"loss/train": float(step)})
    assert len(writer.batch) == writer_module.BATCH - 1  # nothing handed over yet: the writer was not woken
    writer.log(writer_module.BATCH - 1, {"loss/train": 0.0})
    assert writer.batch == []  # a full batch goes out by itself
    for step in range(writer_module.BATCH, writer_module.BATCH + 3):
        writer.log(step, {"loss/train": float(step)})
    writer.close()  # the partial batch is written too
    assert list(sink.steps) == list(range(writer_module.BATCH + 3))


def test_a_write_error_on_the_writer_thread_is_raised_on_the_training_thread():
    sink = Failing(at_step=3)
    writer = SinkWriter([sink])
    with pytest.raises(OSError, match="No space left"):
        for step in range(1000):  # raised at a later log() (or at the drain below), never swallowed
            writer.log(step, {"loss/train": 1.0})
        writer.drain()
    writer.close()  # raised once; closing afterwards is quiet
    assert sink.steps == [0, 1, 2] and sink.threads == {"gradexp-sinks"}


def test_a_training_run_whose_sink_fails_on_the_writer_thread_stops_with_that_error():
    cfg = compose_config(["train.steps=40", "log.every=1"])
    sink = Failing(at_step=5)
    run = build.run(cfg, [sink])
    with pytest.raises(OSError, match="No space left"):
        train(run, build.settings(cfg))
    assert sink.steps == [0, 1, 2, 3, 4] and sink.threads == {"gradexp-sinks"}
    assert run.writer is None  # the thread is stopped


def test_hooks_are_attached_only_during_logging_steps():
    cfg = compose_config(["train.steps=6", "log.every=3"])
    run = build.run(cfg, [])
    seen = []
    real = run.model.forward

    def forward(x):
        if run.model.training:  # training steps, not evaluation
            seen.append(sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in run.model.modules()))
        return real(x)

    run.model.forward = forward
    train(run, build.settings(cfg))
    assert len(seen) == 6 and seen[0] > 0 and seen[3] > 0 and seen[5] > 0  # logging steps 0, 3 and the last
    assert seen[1] == seen[2] == seen[4] == 0  # ordinary steps: PyTorch's hook-free path
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in run.model.modules())


def test_tensorboard_records_keep_their_checksums():
    pytest.importorskip("google_crc32c")
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure
    from tensorboard.summary.writer import record_writer

    import gradexp.sinks.tensorboard  # noqa: F401  installs the C checksum

    assert record_writer.masked_crc32c is not pure
    gen = random.Random(0)
    for n in (0, 1, 7, 8, 9, 255, 4096, 10_001):
        data = bytes(gen.randrange(256) for _ in range(n))
        assert record_writer.masked_crc32c(data) == pure(data)


def test_norms_of_a_logging_step_stay_exact_when_a_few_tensors_vanish():
    """The CPU fast path redoes in float64 only the tensors whose float32 norm may have underflowed."""
    from gradexp.probes.norms import norm_vector

    tensors = [torch.randn(64, 64), torch.full((64,), 1e-30), torch.full((3,), 1e-44), torch.randn(10) * 1e20]
    got = norm_vector(tensors).tolist()
    for t, g in zip(tensors, got):
        assert g == pytest.approx(torch.linalg.vector_norm(t.double()).item(), rel=1e-6)
