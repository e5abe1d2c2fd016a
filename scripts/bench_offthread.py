"""Would instruments computed on a second thread make a logging step cheaper? Measures the exchange rate: the
default MLP's plain training step alone, and again while another thread of the same process runs instrument-like
work without pause (batched norms of every parameter and of a buffer the same size, read to the host, and a min, max
and sum of each weight matrix: a few dozen small torch operators, as a logging step's probes do), interleaved,
medians. Prints how much longer each training step got and how much of that work the other thread got done in the
same time (each unit timed alone first). With a second idle core, a cost on the training thread below the work done
would make moving the instruments off it worth building; above it, Python's GIL (each operator's Python part holds
it) makes the move a loss.

    python scripts/bench_offthread.py              # 5 interleaved repeats, one torch thread per Python thread
    python scripts/bench_offthread.py --repeats 9"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # scripts/ itself: reuse the benchmark's configurations
import bench_overhead as bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=500, help="training steps per timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = bench.compose_cfg(bench.CONFIGS["mlp"][0])
    task = bench.build.task(cfg, bench.build.device(cfg))
    run = bench.make_run(cfg, task, probes=False, sinks=[])
    params = [p.detach() for p in run.model.parameters()]
    scratch = [torch.randn_like(p) for p in params]
    matrices = [p for p in params if p.dim() > 1]

    def step() -> None:
        x, y = run.batches.next()
        loss = task.loss(run.model(task.inputs(x)), y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()

    def unit() -> None:  # a logging step's kind of work
        torch.stack(torch._foreach_norm(params)).tolist()
        torch.stack(torch._foreach_norm(scratch)).tolist()
        for m in matrices:
            m.amin(), m.amax(), m.sum()

    def per_call(f, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            f()
        return (time.perf_counter() - started) / n

    def beside(f, n: int) -> tuple[float, int]:
        """Seconds per call of f while another thread runs unit() without pause; units it finished meanwhile."""
        stop, done = threading.Event(), [0]

        def other() -> None:
            while not stop.is_set():
                unit()
                done[0] += 1

        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        time.sleep(0.05)  # the other thread is running
        before = done[0]
        seconds = per_call(f, n)
        units = done[0] - before
        stop.set()
        thread.join()
        return seconds, units

    for _ in range(3):  # warm-up: Adam's state, the allocator, the first kernels
        per_call(step, 20), per_call(unit, 20)
    alone, with_other, unit_cost, units_per_step = [], [], [], []
    for _ in range(args.repeats):
        unit_cost.append(per_call(unit, 500))
        alone.append(per_call(step, args.steps))
        seconds, units = beside(step, args.steps)
        with_other.append(seconds)
        units_per_step.append(units / args.steps)
    step_alone, step_beside = statistics.median(alone), statistics.median(with_other)
    work = statistics.median(unit_cost) * statistics.median(units_per_step)
    print(f"default MLP, {args.steps} steps, median of {args.repeats} interleaved repeats, 1 torch thread")
    print(f"one unit of instrument-like work alone: {statistics.median(unit_cost) * 1e6:.0f} us")
    print(f"training step alone: {step_alone * 1e6:.0f} us; beside the other thread: {step_beside * 1e6:.0f} us "
          f"(+{(step_beside - step_alone) * 1e6:.0f} us)")
    print(f"work the other thread finished per training step: {work * 1e6:.0f} us of single-thread time")
    print(f"cost on the training thread per us of work moved off it: {(step_beside - step_alone) / work:.2f} "
          "(below 1: a second thread would help; above 1: it costs more than doing the work inline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
