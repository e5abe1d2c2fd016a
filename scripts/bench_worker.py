"""Would a worker process bring the every-step targets of issue 16 within reach? The lever the README names as the
one left: the training process only copies what the probes read into shared memory, and a worker process on another
core computes the numbers. Timed here on scripts/handmade.py's four families (the floor: the same work hand-written),
four ways in one process, interleaved, medians:
- plain     the plain loop (bench_overhead.py's);
- gradexp   gradexp's own loop with its default probes at the same log.every (bench_overhead.py's (b)), for scale;
- inline    the plain loop with handmade.py's probes on the logging steps (bench_overhead.py's `handmade` column);
- worker    the same probes, computed by a worker process: on a logging step the training process hooks the hidden
            layers as `inline` does, copies the gradients, the layer outputs and their gradients, and the parameters
            on each side of the step into a slot of a ring in shared memory (five batched copies), and writes one
            message to a pipe; the worker, blocked on that pipe, computes the same numbers from the slot and marks it
            free. The training process waits only when every slot is still being read (it counts those waits).
The worker is started (spawned, its imports done) before the timing; its start-up is printed apart. Its numbers are
checked against `inline`'s on the same tensors (same operators: the same floats).

    python scripts/bench_worker.py                       # tiny MLP and depth-20 MLP, every step and at 25, 5 repeats
    python scripts/bench_worker.py --only mlp --repeats 9"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.multiprocessing

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # scripts/ itself: reuse the benchmark's configurations
import bench_overhead as bench  # noqa: E402
import handmade  # noqa: E402

SLOTS = 4  # ring size: the training process runs ahead of the worker by at most this many logging steps


class Slot:
    """One logging step's tensors in shared memory: flat gradients, stacked layer outputs and their gradients,
    flat parameters before and after the step."""

    def __init__(self, params: int, layers: int, batch: int, width: int) -> None:
        self.grads = torch.empty(params).share_memory_()
        self.outputs = torch.empty(layers, batch, width).share_memory_()
        self.output_grads = torch.empty(layers, batch, width).share_memory_()
        self.before = torch.empty(params).share_memory_()
        self.after = torch.empty(params).share_memory_()


def compute(slot: Slot, sizes: list[int]) -> tuple:
    """handmade.py's numbers, from one slot (the same operators, so the same floats)."""
    grads = list(slot.grads.split(sizes))
    norms = [n.item() for n in torch._foreach_norm(grads + list(slot.output_grads.unbind(0)))]
    total = math.sqrt(math.fsum(n * n for n in norms[:len(sizes)]))
    rows = slot.outputs.flatten(1)
    mean = rows.mean(dim=1)
    std = torch.linalg.vector_norm(rows - mean[:, None], dim=1) / math.sqrt(rows.shape[1])
    dead = (slot.outputs.amax(dim=1) <= 0).mean(dim=1, dtype=torch.float32)
    moved = torch.sub(slot.before, slot.after)
    steps = [n.item() for n in torch._foreach_norm(list(slot.before.split(sizes)) + list(moved.split(sizes)))]
    size, step = steps[:len(sizes)], steps[len(sizes):]
    ratios = [d / b if b else math.inf for b, d in zip(size, step)]
    return norms, total, mean.tolist(), std.tolist(), dead.tolist(), ratios


def worker_main(slots: list[Slot], sizes: list[int], done: torch.Tensor, notify, results) -> None:
    """The worker: one byte on `notify` per filled slot, in ring order; `done[0]` counts the slots it has read."""
    torch.set_num_threads(1)
    counter = done.numpy()
    seen = 0
    while True:
        byte = notify.recv_bytes()
        if byte == b"q":
            break
        out = compute(slots[seen % len(slots)], sizes)
        if byte == b"c":  # a check: send this slot's numbers back
            results.put(out)
        seen += 1
        counter[0] = seen


class Handed:
    """handmade.Handmade's interface (attach / after_backward / after_step), computed by the worker."""

    def __init__(self, layers, params, batch: int, width: int, context) -> None:
        self.layers, self.params = layers, params
        self.flat = [p.detach().view(-1) for p in params]
        self.sizes = [p.numel() for p in params]
        self.slots = [Slot(sum(self.sizes), len(layers), batch, width) for _ in range(SLOTS)]
        self.done = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.counter = self.done.numpy()
        self.filled = self.waits = 0
        self.outputs, self.output_grads, self.handles = [], [], []
        read, self.notify = context.Pipe(duplex=False)
        self.results = context.SimpleQueue()
        started = time.perf_counter()
        self.process = context.Process(target=worker_main, args=(self.slots, self.sizes, self.done, read, self.results),
                                       daemon=True)
        self.process.start()
        read.close()
        self.check_next = False
        self.flush()
        self.started_s = time.perf_counter() - started

    def attach(self) -> None:
        self.handles = [layer.register_forward_hook(self._keep) for layer in self.layers]

    def _keep(self, module, inputs, output) -> None:
        self.outputs.append(output.detach())
        if output.requires_grad:
            output.register_hook(self.output_grads.append)

    def after_backward(self) -> None:
        for handle in self.handles:
            handle.remove()
        while self.filled - self.counter[0] >= SLOTS:  # every slot still being read: wait for one
            self.waits += 1
            time.sleep(20e-6)
        slot = self.slots[self.filled % SLOTS]
        torch.cat([p.grad.view(-1) for p in self.params], out=slot.grads)
        torch.stack(self.outputs, out=slot.outputs)
        torch.stack(self.output_grads, out=slot.output_grads)  # last layer first, as the tensor hooks fire
        torch.cat(self.flat, out=slot.before)
        self.outputs.clear()
        self.output_grads.clear()

    def after_step(self) -> None:
        torch.cat(self.flat, out=self.slots[self.filled % SLOTS].after)
        self.filled += 1
        self.notify.send_bytes(b"c" if self.check_next else b"s")
        self.check_next = False

    def flush(self) -> None:
        """Wait until the worker has read every filled slot (the end of a run: its numbers are all written)."""
        if self.filled == 0:  # the first call: wait for the worker's start-up, through one empty slot
            self.filled = 1
            self.notify.send_bytes(b"s")
        while self.counter[0] < self.filled:
            time.sleep(50e-6)

    def close(self) -> None:
        self.notify.send_bytes(b"q")
        self.notify.close()
        self.process.join(timeout=10)


def time_loop(cfg, task, steps: int, every: int, probes) -> float:
    """bench_overhead.py's plain loop (`probes` None), or its handmade loop with these probes."""
    if probes is None:
        return bench.time_plain(cfg, task, steps)
    return bench.time_handmade(cfg, task, steps, every, make_probes=lambda run: probes.rebind(run) or probes)


def rebind_inline(self, run) -> None:
    self.__init__([layer for _, layer in run.layers], list(run.model.parameters()))


def rebind_handed(self, run) -> None:
    self.layers, self.params = [layer for _, layer in run.layers], list(run.model.parameters())
    self.flat = [p.detach().view(-1) for p in self.params]


handmade.Handmade.rebind = rebind_inline
Handed.rebind = rebind_handed


def check(cfg, task, handed: Handed) -> float:
    """Largest relative difference between the worker's numbers and inline's, on one logging step of one model."""
    run = bench.make_run(cfg, task, probes=False, sinks=[])
    inline = handmade.Handmade([layer for _, layer in run.layers], list(run.model.parameters()))
    handed.rebind(run)
    inline.attach(), handed.attach()
    x, y = run.batches.next()
    loss = task.loss(run.model(task.inputs(x)), y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ours = inline.after_backward()
    handed.after_backward()
    run.optimizer.step()
    ours = (*ours, inline.after_step())
    handed.check_next = True
    handed.after_step()
    theirs = handed.results.get()
    flat = lambda values: [v for group in values for v in (group if isinstance(group, list) else [group])]  # noqa: E731
    return max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip(flat(ours), flat(theirs)))


def bench_config(name: str, repeats: int, context, tmp: str, scale: float) -> None:
    overrides, steps = bench.CONFIGS[name]
    steps = max(2, int(steps * scale))
    cfg = bench.compose_cfg(overrides)
    gradexp_cfgs = {every: bench.compose_cfg(overrides + [f"log.every={every}"]) for every in (1, 25)}
    task = bench.build.task(cfg, bench.build.device(cfg))
    run = bench.make_run(cfg, task, probes=False, sinks=[])
    layers = [layer for _, layer in run.layers]
    batch, width = cfg.train.batch_size, cfg.model.width
    handed = Handed(layers, list(run.model.parameters()), batch, width, context)
    inline = handmade.Handmade(layers, list(run.model.parameters()))
    print(f"{name}: worker started in {handed.started_s:.2f} s (spawned; its imports); "
          f"its numbers against inline's: largest relative difference {check(cfg, task, handed):.1e}")
    for every in (1, 25):
        variants = {"plain": lambda n: time_loop(cfg, task, n, every, None),
                    "gradexp": lambda n: bench.time_gradexp(gradexp_cfgs[every], task, n, "default",
                                                            tempfile.mkdtemp(dir=tmp)),
                    "inline": lambda n: time_loop(cfg, task, n, every, inline),
                    "worker": lambda n: time_loop(cfg, task, n, every, handed)}
        for timed in variants.values():
            timed(min(steps, 20))  # warm-up
        times = {v: [] for v in variants}
        handed.waits = 0
        for r in range(repeats):
            names = list(variants)
            for v in names[r % len(names):] + names[:r % len(names)]:
                times[v].append(variants[v](steps))
        plain = statistics.median(times["plain"])
        ratios = "; ".join(f"{v} {statistics.median(times[v]) / plain:.3f}" for v in ("gradexp", "inline", "worker"))
        print(f"  every {every:>2}: plain {plain:.3f} s ({plain / steps * 1e6:.0f} us a step); {ratios} "
              f"(the worker's ring was full {handed.waits} times in {repeats} runs)")
    handed.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="mlp,mlp20", help="comma-separated subset of mlp,mlp20")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale bench_overhead.py's steps per run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    context = torch.multiprocessing.get_context("spawn")
    print(f"1 torch thread; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.repeats} repeats, "
          f"rotating order, medians; ratios to the plain loop")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            bench_config(name, args.repeats, context, tmp, args.steps_scale)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
