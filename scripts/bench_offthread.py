"""Would instruments computed on a second thread make a logging step cheaper? Measures the exchange rate: the
default MLP's plain training step alone, beside another thread of the same process that runs instrument-like work
without pause (batched norms of every parameter and of a buffer the same size, read to the host, and a min, max and
sum of each weight matrix: a few dozen small torch operators, as a logging step's probes do), and, as the control,
beside another process running the same work (its own Python, so no shared GIL, but the same cores and memory).
Rotating order, medians. Prints how much longer a training step got, how much of that work the other thread got
done meanwhile (each unit timed alone first), and how many cores the process used in that time. A thread that costs
the training thread more than the work it does is a loss; if the control process costs it as much, the cause is the
machine (cores, memory), not the GIL.

    python scripts/bench_offthread.py              # 5 repeats, one torch thread per thread and process
    python scripts/bench_offthread.py --repeats 9"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import threading
import time

import torch
import torch.multiprocessing

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # scripts/ itself: reuse the benchmark's configurations
import bench_overhead as bench  # noqa: E402


def work(tensors: list[torch.Tensor]):
    """A unit of a logging step's kind of work on these tensors (parameters and a buffer of their shapes)."""
    half = len(tensors) // 2

    def unit() -> None:
        torch.stack(torch._foreach_norm(tensors[:half])).tolist()
        torch.stack(torch._foreach_norm(tensors[half:])).tolist()
        for m in tensors[:half]:
            if m.dim() > 1:
                m.amin(), m.amax(), m.sum()

    return unit


def busy_process(shapes: list[tuple], go, quit, done) -> None:
    """The control: the same work in a process of its own, whenever `go` is set, counting units in `done`."""
    torch.set_num_threads(1)
    unit = work([torch.randn(shape) for shape in shapes] * 2)
    while not quit.is_set():
        if go.wait(0.01):
            unit()
            with done.get_lock():
                done.value += 1


def handoff_worker(shared: list[torch.Tensor], ready, idle, quit, done) -> None:
    """The design a worker process would have: each logging step the training process copies what the probes read
    into shared memory (`shared`) and sets `ready`; this process computes on those copies and sets `idle` when the
    training process may overwrite them."""
    torch.set_num_threads(1)
    unit = work(shared)
    idle.set()
    while not quit.is_set():
        if ready.wait(0.01):
            ready.clear()
            unit()
            with done.get_lock():
                done.value += 1
            idle.set()


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
    unit = work(params + [torch.randn_like(p) for p in params])

    def step() -> None:
        x, y = run.batches.next()
        loss = task.loss(run.model(task.inputs(x)), y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()

    def timed(n: int) -> tuple[float, float]:
        """Wall seconds per training step, and this process's CPU seconds per wall second meanwhile (cores used)."""
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall / n, cpu / wall

    def beside_thread(n: int) -> tuple[float, float, int]:
        stop, done = threading.Event(), [0]

        def other() -> None:
            while not stop.is_set():
                unit()
                done[0] += 1

        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        time.sleep(0.05)  # the other thread is running
        before = done[0]
        seconds, cores = timed(n)
        units = done[0] - before
        stop.set()
        thread.join()
        return seconds, cores, units

    context = multiprocessing.get_context("spawn")
    go, quit, done = context.Event(), context.Event(), context.Value("l", 0)
    control = context.Process(target=busy_process, args=([tuple(p.shape) for p in params], go, quit, done), daemon=True)
    control.start()

    def beside_process(n: int) -> tuple[float, float, int]:
        go.set()
        time.sleep(0.05)
        before = done.value
        seconds, cores = timed(n)
        units = done.value - before
        go.clear()
        return seconds, cores, units

    shared = [torch.zeros_like(p).share_memory_() for p in params + params]  # gradients, then parameters
    handoff_context = torch.multiprocessing.get_context("spawn")
    ready, idle, stop_worker = handoff_context.Event(), handoff_context.Event(), handoff_context.Event()
    handed = handoff_context.Value("l", 0)
    worker = handoff_context.Process(target=handoff_worker, args=(shared, ready, idle, stop_worker, handed), daemon=True)
    worker.start()
    grads_to, params_to = shared[:len(params)], shared[len(params):]

    def step_and_hand_off() -> None:
        step()
        idle.wait()  # the worker is done with the previous step's copies
        idle.clear()
        torch._foreach_copy_(grads_to, [p.grad for p in run.model.parameters()])
        torch._foreach_copy_(params_to, params)
        ready.set()

    def handed_off(n: int) -> tuple[float, float, int]:
        before = handed.value
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            step_and_hand_off()
        idle.wait()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall / n, cpu / wall, handed.value - before

    def unit_alone(n: int = 500) -> float:
        started = time.perf_counter()
        for _ in range(n):
            unit()
        return (time.perf_counter() - started) / n

    for _ in range(3):  # warm-up: Adam's state, the allocator, the first kernels
        timed(20), unit_alone(20)
    beside_process(20)  # and the control process has started (its imports) and run
    handed_off(20)
    results: dict[str, list[tuple]] = {"alone": [], "thread": [], "process": [], "handoff": []}
    variants = {"alone": lambda: (*timed(args.steps), 0), "thread": lambda: beside_thread(args.steps),
                "process": lambda: beside_process(args.steps), "handoff": lambda: handed_off(args.steps)}
    unit_cost = []
    for repeat in range(args.repeats):
        unit_cost.append(unit_alone())
        names = list(variants)
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            results[name].append(variants[name]())
    quit.set()
    stop_worker.set()
    control.join(timeout=10)
    worker.join(timeout=10)
    cost = statistics.median(unit_cost)
    step_alone = statistics.median(r[0] for r in results["alone"])
    print(f"default MLP, {args.steps} steps, median of {args.repeats} repeats in rotating order, 1 torch thread; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"one unit of instrument-like work alone: {cost * 1e6:.0f} us; training step alone: {step_alone * 1e6:.0f} us")
    for name in ("thread", "process"):
        seconds = statistics.median(r[0] for r in results[name])
        cores = statistics.median(r[1] for r in results[name])
        moved = cost * statistics.median(r[2] / args.steps for r in results[name])
        print(f"beside another {name}: training step {seconds * 1e6:.0f} us (+{(seconds - step_alone) * 1e6:.0f} us), "
              f"the {name} did {moved * 1e6:.0f} us of work per step, this process used {cores:.2f} cores")
        rate = (seconds - step_alone) / moved if moved else math.nan  # nan: no unit finished (a very short run)
        print(f"  cost on the training thread per us of work beside it ({name}): {rate:.2f}"
              + (" (below 1: a second thread would help; above 1: it costs more than doing the work inline)"
                 if name == "thread" else " (the control: the machine's share of the cost)"))
    seconds = statistics.median(r[0] for r in results["handoff"])
    moved = cost * statistics.median(r[2] / args.steps for r in results["handoff"])
    print(f"every step handed to a worker process (two batched copies into shared memory, two events): training step "
          f"{seconds * 1e6:.0f} us (+{(seconds - step_alone) * 1e6:.0f} us), the worker did {moved * 1e6:.0f} us of "
          f"work per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
