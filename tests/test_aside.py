"""Probe work beside the training thread (gradexp/probes/aside.py): the histograms of large CPU tensors are packed on a
helper thread from copies, their values reach the sinks through the writer thread, bit for bit the values packed
inline, and an error there stops the run like any sink error."""
from __future__ import annotations

import os
import threading

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradexp.probes import histograms
from gradexp.probes.aside import Aside
from gradexp.probes.base import Deferred, resolved, to_host
from gradexp.probes.histograms import SMALL, pack_many
from gradexp.training import factory as build
from gradexp.training.loop import train
from tests.conftest import Capture, compose_config

WIDE = ["model.width=256", "train.batch_size=128", "model.depth=2", "log.histograms_every=1", "train.steps=4"]


def blocked(gate: threading.Event):
    """A work function that waits for `gate`, then packs its copies."""
    def work(copies):
        gate.wait(10)
        return {"t": pack_many(copies)[0]}
    return work


def test_the_copies_are_taken_at_the_hand_over_whatever_happens_to_the_tensors_after():
    t = torch.randn(SMALL + 1)
    want = pack_many([t.clone()])[0]
    gate = threading.Event()
    deferred = Aside().submit([t], blocked(gate))
    t.mul_(1e6)  # as clipping scales a gradient in place while the helper has not started yet
    gate.set()
    assert torch.equal(deferred.result()["t"], want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_float_dtypes_are_packed_from_their_float32_values(dtype):
    t = (torch.randn(SMALL + 1) * 3).to(dtype)
    got = Aside().submit([t], lambda copies: {"t": pack_many(copies)[0]}).result()["t"]
    assert torch.equal(got, pack_many([t])[0])


def test_a_second_hand_over_waits_until_the_first_has_read_its_copies():
    aside, gate = Aside(), threading.Event()
    first_tensor = torch.randn(SMALL + 1)
    first = aside.submit([first_tensor], blocked(gate))
    threading.Timer(0.2, gate.set).start()
    second = aside.submit([torch.zeros(SMALL + 1)], lambda copies: {"t": pack_many(copies)[0]})  # same buffer
    assert first.future.done()  # submit waited for it before overwriting its copies
    assert torch.equal(first.result()["t"], pack_many([first_tensor])[0])
    assert second.result()["t"][1].item() == 0.0  # max of the zeros


def test_deferred_values_keep_their_place_and_resolve_to_host_numbers():
    rows = {"hist/a": torch.arange(3.0), "hist/b": torch.arange(2.0)}
    deferred = Deferred(_done(rows))
    values = {"loss/train": torch.tensor(1.5), ("hist/a", "hist/b"): deferred, "lr": 0.1}
    kept = to_host(values, defer=True)
    assert list(kept) == ["loss/train", ("hist/a", "hist/b"), "lr"] and kept[("hist/a", "hist/b")] is deferred
    want = {"loss/train": 1.5, "hist/a": [0.0, 1.0, 2.0], "hist/b": [0.0, 1.0], "lr": 0.1}
    assert resolved(kept) == want and list(resolved(kept)) == list(want)
    assert to_host(values) == want and list(to_host(values)) == list(want)


def _done(value):
    from concurrent.futures import Future
    future = Future()
    future.set_result(value)
    return future


def _histograms(run_dir: str) -> dict:
    acc = EventAccumulator(run_dir, size_guidance={"histograms": 0})
    acc.Reload()
    return {tag: [(e.step, e.histogram_value) for e in acc.Histograms(tag)] for tag in acc.Tags()["histograms"]}


@pytest.mark.parametrize("clip", [[], ["clip=norm_0.5", "clip.max_norm=0.001"]],
                         ids=["no clip", "clipped in place after the hand-over"])
def test_a_run_packs_its_large_tensors_aside_and_logs_exactly_what_inline_packing_logs(run_tiny, monkeypatch, clip):
    handed = []
    submit = Aside.submit
    monkeypatch.setattr(Aside, "submit", lambda self, tensors, work: (handed.append(len(tensors)),
                                                                    submit(self, tensors, work))[1])
    _, aside_dir = run_tiny(WIDE + clip, name="aside")
    assert handed and all(handed)  # the 256x256 weights and gradients and the 128x256 outputs went aside
    monkeypatch.setattr(histograms.Histograms, "_packed",
                        lambda self, tensors, aside: histograms._packed({k: t for k, t in tensors.items() if t.numel()},
                                                                        self.scratch))
    _, inline_dir = run_tiny(WIDE + clip, name="inline")
    aside, inline = _histograms(aside_dir), _histograms(inline_dir)
    assert "hist/act/layers.0" in aside and "hist/weight/layers.1.linear.weight" in aside
    assert aside == inline


def test_an_error_on_the_helper_thread_stops_the_run_on_the_training_thread(monkeypatch):
    def failing(tags, scratch, copies):
        raise RuntimeError("packing failed")
    monkeypatch.setattr(histograms, "_packed_copies", failing)
    cfg = compose_config(WIDE)
    sink = Capture()
    run = build.run(cfg, [sink])
    with pytest.raises(RuntimeError, match="packing failed"):
        train(run, build.settings(cfg))
    assert run.writer is None  # the writer thread is stopped
    assert not any(tag.startswith("hist/act") for values in sink.steps.values() for tag in values)


def test_a_forked_child_makes_its_own_helper_thread():
    Aside().submit([torch.randn(SMALL + 1)], lambda copies: {}).result()  # the parent's thread exists
    pid = os.fork()
    if pid == 0:  # the child: work handed over must run, not wait for a thread that was not forked
        try:
            deferred = Aside().submit([torch.randn(SMALL + 1)], lambda copies: {"n": len(copies)})
            done = deferred.future.result(timeout=10)
            os._exit(0 if done == {"n": 1} else 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_child_forked_while_work_is_in_flight_does_not_wait_for_it():
    aside, gate = Aside(), threading.Event()
    aside.submit([torch.randn(SMALL + 1)], lambda copies: (gate.wait(10), {})[1])  # in flight at the fork
    pid = os.fork()
    if pid == 0:
        threading.Timer(10, lambda: os._exit(3)).start()  # hung: exit 3
        try:
            done = aside.submit([torch.randn(SMALL + 1)], lambda copies: {"n": len(copies)}).future.result(timeout=10)
            os._exit(0 if done == {"n": 1} else 1)
        except BaseException:
            os._exit(1)
    gate.set()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_helper_packs_with_the_thread_count_of_the_hand_over():
    """A float32 sum's rounding depends on how many threads split it: a second run in the process with another
    train.threads must pack as its own training thread would."""
    t = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    before = torch.get_num_threads()
    try:
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            aside = Aside().submit([t], lambda copies: {"t": pack_many(copies)[0]}).result()["t"]
            assert torch.equal(aside, pack_many([t])[0]), threads
    finally:
        torch.set_num_threads(before)


def test_a_monitor_under_ddp_reads_the_histograms_packed_aside(tmp_path, monkeypatch):
    import gradexp.monitor as monitor
    monkeypatch.setattr(monitor, "_world", lambda: 2)  # global_values splits the values per tag first
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: None)  # one rank's sums stand for both
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = monitor.Monitor(model, run_dir=str(tmp_path / "run"), optimizers=[opt], probes=("grad_norm", "histograms"))
    with mon.step():
        loss = model(torch.randn(8, 256)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        mon.record(loss=loss)
    assert mon.close().status == "completed"
    assert "hist/weight/0.weight" in _histograms(str(tmp_path / "run"))  # 65,536 entries: packed aside
