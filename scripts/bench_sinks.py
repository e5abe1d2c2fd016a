"""Each sink's log() per logging step, in isolation, on the real values of a logging step.

The values are captured from gradexp's loop (the default probes, log.every=1) on bench_overhead's configurations;
then each sink logs them again and again (the step number advancing, as in a run) in one process, interleaved
(each repeat times every sink once, in rotating order), median of the repeats, microseconds per logging step:
  tensorboard  TensorBoardSink.log: the step's Summary protobuf, serialised and written to the event file
  views        TensorBoardViews.log: the per-layer quantities and the Flow/ scalars (a real run has it)
  summary      SummarySink.log with the run's layer names and theory baseline, as a real run builds it
  terminal     TerminalSink.log: the progress bar's fields (a real run has it; rich renders into a string here)
  handover     SinkWriter.log on the training thread with one sink that does nothing, and the drain at the end
  writer       SinkWriter with bench_overhead's sinks (tensorboard + summary): the training thread's log() calls
               and the writer thread's work, until drained
All sink work holds the GIL that the training thread needs, so each figure is what it can add to a logging step.
With --loop it times gradexp's train() instead (default probes, log.every=1, bench_overhead's step counts), with
  none     no sinks
  bench    bench_overhead's sinks: TensorBoard + summary (no layer names)
  run      a real run's sinks: the TensorBoard views, TensorBoard, summary (layer names, theory), terminal
and prints each one's microseconds per step and its excess over `none` (the sinks' cost on the critical path), by the
wall clock and by the process's CPU time.
Usage:
  python scripts/bench_sinks.py [--only mlp,mlp20] [--steps 400] [--repeats 7] [--loop] [--override KEY=VALUE ...]"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time

import torch
from rich.console import Console

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # scripts/ itself: reuse the benchmark's configurations
import bench_overhead as bench  # noqa: E402
from gradexp.analysis import theory  # noqa: E402
from gradexp.sinks.summary import SummarySink  # noqa: E402
from gradexp.sinks.tb_views import TensorBoardViews  # noqa: E402
from gradexp.sinks.tensorboard import TensorBoardSink  # noqa: E402
from gradexp.sinks.terminal import TerminalSink  # noqa: E402
from gradexp.sinks.writer import SinkWriter  # noqa: E402
from gradexp.outcome import Outcome  # noqa: E402

CAPTURED = 8  # logging steps captured from the loop; the timed steps cycle through them


class _Capture:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log(self, step: int, values: dict) -> None:
        self.rows.append(values)

    def close(self, outcome: Outcome) -> None:
        pass


class _Nothing(_Capture):
    def log(self, step: int, values: dict) -> None:
        pass


def capture(cfg) -> tuple[list[dict], list[str], object]:
    """(values of CAPTURED logging steps, the watched layer names, the theory baseline or None)."""
    sink = _Capture()
    run = bench.make_run(cfg, None, probes=True, sinks=[sink])
    settings = bench.build.settings(cfg)
    settings.steps, settings.eval_every, settings.log_every = CAPTURED, 10**9, 1
    bench.train(run, settings)
    return sink.rows, [name for name, _ in run.layers], theory.baseline(cfg, run.task.x_train)


def make_sinks(kind: str, tmp: str, layers: list[str], baseline, steps: int) -> tuple[list, object]:
    """(sinks to close afterwards, the object whose log() is timed)."""
    if kind == "tensorboard":
        sink = TensorBoardSink(tmp)
        return [sink], sink
    if kind == "views":
        tensorboard = TensorBoardSink(tmp)
        sink = TensorBoardViews(tensorboard.writer, {"model": "mlp"}, layers)
        return [sink, tensorboard], sink
    if kind == "summary":
        sink = SummarySink(tmp, [], layers, baseline)
        return [sink], sink
    if kind == "terminal":
        sink = TerminalSink(steps, tmp, console=Console(file=io.StringIO(), force_terminal=True, width=120))
        return [sink], sink
    sinks = [_Nothing()] if kind == "handover" else [TensorBoardSink(tmp), SummarySink(tmp, [], [])]
    return sinks, SinkWriter(sinks)


def time_sink(kind: str, rows: list[dict], layers: list[str], baseline, steps: int, tmp: str) -> float:
    """Microseconds per logging step."""
    closing, sink = make_sinks(kind, tempfile.mkdtemp(dir=tmp), layers, baseline, steps)
    logs = [(step, dict(rows[step % len(rows)])) for step in range(steps)]  # a fresh dict each step, as the loop hands
    t0 = time.perf_counter()
    for step, values in logs:
        sink.log(step, values)
    if isinstance(sink, SinkWriter):
        sink.close()
    elapsed = time.perf_counter() - t0
    for s in closing:
        s.close(Outcome(status="completed", steps=steps))
    return elapsed / steps * 1e6


KINDS = ("tensorboard", "views", "summary", "terminal", "handover", "writer")
LOOP_KINDS = ("none", "bench", "run")


def loop_sinks(kind: str, tmp: str, layers: list[str], baseline, steps: int) -> list:
    if kind == "none":
        return []
    if kind == "bench":
        return [TensorBoardSink(tmp), SummarySink(tmp, [], [])]
    tensorboard = TensorBoardSink(tmp)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    return [TensorBoardViews(tensorboard.writer, {"model": "mlp"}, layers), tensorboard,
            SummarySink(tmp, [], layers, baseline), TerminalSink(steps, tmp, console=console)]


def time_loop(kind: str, cfg, layers: list[str], baseline, steps: int, tmp: str) -> tuple[float, float]:
    """(wall, CPU) microseconds per step of train() with these sinks (end-of-run work not timed). CPU is the process's
    (training and writer threads; one torch thread): on a loaded machine it moves far less than the wall clock."""
    sinks = loop_sinks(kind, tempfile.mkdtemp(dir=tmp), layers, baseline, steps)
    run = bench.make_run(cfg, None, probes=True, sinks=sinks)
    settings = bench.build.settings(cfg)
    settings.steps, settings.eval_every = steps, steps
    t0, c0 = time.perf_counter(), time.process_time()
    bench.train(run, settings)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    for sink in sinks:
        sink.close(Outcome(status="completed", steps=steps))
    return wall / steps * 1e6, cpu / steps * 1e6


def bench_loop(cfg, name: str, layers: list[str], baseline, repeats: int, tmp: str) -> None:
    steps = bench.CONFIGS[name][1]
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in LOOP_KINDS}
    time_loop("run", cfg, layers, baseline, 20, tmp)  # warm-up
    for r in range(repeats):
        for kind in LOOP_KINDS[r % 3:] + LOOP_KINDS[:r % 3]:
            times[kind].append(time_loop(kind, cfg, layers, baseline, steps, tmp))
    print(f"{name}: train() with log.every=1, {steps} steps; us per step, median of {repeats} (min-max), "
          "excess over none; wall clock, then process CPU")
    for clock, label in ((0, "wall"), (1, "cpu")):
        none = statistics.median(t[clock] for t in times["none"])
        for kind in LOOP_KINDS:
            ts = [t[clock] for t in times[kind]]
            print(f"  {label:4s} {kind:6s} {statistics.median(ts):9.1f}   ({min(ts):.1f}-{max(ts):.1f})   "
                  f"{statistics.median(ts) - none:+8.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="mlp,mlp20")
    parser.add_argument("--steps", type=int, default=400, help="logging steps per timed run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--loop", action="store_true", help="time train() with no / bench / a real run's sinks")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    kinds = args.kinds.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            cfg = bench.compose_cfg(bench.CONFIGS[name][0] + ["log.every=1"] + args.override)
            rows, layers, baseline = capture(cfg)
            if args.loop:
                bench_loop(cfg, name, layers, baseline, args.repeats, tmp)
                continue
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for kind in kinds:  # warm-up: lazy imports, first protobuf classes
                time_sink(kind, rows, layers, baseline, 20, tmp)
            for r in range(args.repeats):
                for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                    times[kind].append(time_sink(kind, rows, layers, baseline, args.steps, tmp))
            print(f"{name}: {len(rows[1])} values a logging step, {len(layers)} layers; "
                  f"us per logging step, median of {args.repeats} (min-max)")
            for kind in kinds:
                ts = times[kind]
                print(f"  {kind:12s} {statistics.median(ts):8.1f}   ({min(ts):.1f}-{max(ts):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
