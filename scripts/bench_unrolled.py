"""What one bptt step costs on a recurrent model, by phase: the training step on the fused kernels against the same
step with the bptt probe attached (the unrolled path, hooks on every h_t, the per-step norms), timed in one
process, interleaved, min and median of the repeats. The config is scripts/bench_overhead.py's (default: `lstm`,
T=100, B=64, H=64), so the last column says what bptt's steps add to its (b) default column: two unrolled steps
(log.bptt_every=100 and the last step) in a 100-step run.
Usage:
  python scripts/bench_unrolled.py [--repeats 30] [--threads 1] [--override model=gru ...]"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # scripts/ itself: reuse the benchmark's configurations
import bench_overhead as bench  # noqa: E402
from gradexp.probes.bptt import BpttGradNorms  # noqa: E402

PHASES = ("forward", "backward", "norms", "optimizer")


def one_step(run, batch, probe: BpttGradNorms | None) -> dict[str, float]:
    """One training step, phase by phase (seconds); `probe` attaches bptt as the loop does on its steps."""
    x, y = batch
    marks = [time.perf_counter()]
    if probe is not None:
        with probe.watch(run.model):
            loss = run.task.loss(run.model(run.task.inputs(x)), y)
    else:
        loss = run.task.loss(run.model(run.task.inputs(x)), y)
    marks.append(time.perf_counter())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    marks.append(time.perf_counter())
    if probe is not None:
        [profile.tolist() for profile in probe.after_backward(run.model).values()]  # the host transfer, as logged
    marks.append(time.perf_counter())
    run.optimizer.step()
    marks.append(time.perf_counter())
    return dict(zip(PHASES, (b - a for a, b in zip(marks, marks[1:]))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="lstm", choices=["lstm"])  # the benchmark's recurrent config; model=gru etc.
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides, steps = bench.CONFIGS[args.only]
    cfg = bench.compose_cfg(overrides + args.override)
    run = bench.make_run(cfg, None, probes=False, sinks=[])
    probe = BpttGradNorms(run.model.watched_layers())
    batch = run.batches.next()
    times: dict[str, list[dict[str, float]]] = {"fused": [], "bptt": []}
    for _ in range(3):  # warm-up: allocator, kernels, the unrolled path's buffers
        one_step(run, batch, None), one_step(run, batch, probe)
    for r in range(args.repeats):
        for name in (("fused", "bptt") if r % 2 else ("bptt", "fused")):
            times[name].append(one_step(run, batch, probe if name == "bptt" else None))
    print(f"{args.only}, {args.repeats} interleaved repeats, ms (min / median)")
    print(f"{'phase':10s} {'fused':>15s} {'bptt':>15s} {'bptt - fused':>13s}")
    medians = {}
    for phase in (*PHASES, "total"):
        row = {}
        for name, rows in times.items():
            values = [sum(t.values()) if phase == "total" else t[phase] for t in rows]
            row[name] = (min(values) * 1e3, statistics.median(values) * 1e3)
        medians[phase] = row["bptt"][1] - row["fused"][1]
        print(f"{phase:10s} {row['fused'][0]:6.2f} / {row['fused'][1]:6.2f} {row['bptt'][0]:6.2f} / "
              f"{row['bptt'][1]:6.2f} {medians[phase]:+13.2f}")
    fused_total = statistics.median(sum(t.values()) for t in times["fused"])
    print(f"two bptt steps in a {steps}-step run add {2 * medians['total'] / (steps * fused_total * 1e3):.3f} "
          f"of its fused training time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
