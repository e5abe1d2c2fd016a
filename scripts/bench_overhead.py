"""Overhead of gradexp's loop and instruments against a plain hand-written PyTorch loop.

Same model (same seed), data, optimizer and loss in every variant, timed in one process, interleaved
(each repeat runs every variant once, in rotating order), median of the repeats:
  plain  a hand-written loop: batch, forward, loss, zero_grad, backward, step (and one evaluation at the end)
  off    gradexp's train() with no probes and no sinks (the loop, clip policy, non-finite guard, perf meter)
  default  gradexp's train() with the default probes, TensorBoard + summary sinks, the configured log.every
  all    every instrument on every step (log.every=1, histograms and bptt every step)
Ratios are variant / plain. Usage:
  python scripts/bench_overhead.py [--repeats 5] [--steps-scale 1.0] [--only mlp,mlp20,lstm] [--threads N]
                                   [--override KEY=VALUE ...] [--out F.json]"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from rich.console import Console
from rich.table import Table

from gradexp.training import factory as build
from gradexp.config.schema import register_schema
from gradexp.probes.base import Instruments
from gradexp.sinks.summary import SummarySink
from gradexp.sinks.tensorboard import TensorBoardSink
from gradexp.outcome import Outcome
from gradexp.training.loop import Run, evaluate, train

# name -> (overrides, steps per timed run)
CONFIGS = {
    "mlp": ([], 500),
    "mlp20": (["model.depth=20", "model.width=256", "train.batch_size=128"], 200),
    "lstm": (["model=lstm", "data=adding", "data.seq_len=100"], 100),
}
VARIANTS = ("plain", "off", "default", "all")
EVERYTHING = ["log.every=1", "log.histograms_every=1", "log.bptt_every=1"]


def compose_cfg(overrides: list[str]):
    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="gradexp.configs"):
        return compose(config_name="config", overrides=overrides)


def make_run(cfg, task, probes: bool, sinks: list) -> Run:
    """The run factory's Run; `probes=False` leaves it without instruments (the "off" variant)."""
    run = build.run(cfg, sinks)
    if not probes:
        run.instruments = Instruments([], run.model)
    return run


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_plain(cfg, task, steps: int) -> float:
    run = make_run(cfg, task, probes=False, sinks=[])
    model, opt, batches = run.model, run.optimizer, run.batches
    sync(task.x_train.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = batches.next()
        loss = task.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    evaluate(run)
    sync(task.x_train.device)
    return time.perf_counter() - t0


def time_gradexp(cfg, task, steps: int, variant: str, tmp: str) -> float:
    instrumented = variant != "off"
    sinks = [TensorBoardSink(tmp), SummarySink(tmp, [], [])] if instrumented else []
    run = make_run(cfg, task, probes=instrumented, sinks=sinks)
    settings = build.settings(cfg)
    settings.steps, settings.eval_every = steps, steps  # evaluate once, at the end, like the plain loop
    if variant == "off":
        settings.log_every = steps  # only the first and last step log (the loss)
    sync(task.x_train.device)
    t0 = time.perf_counter()
    train(run, settings)
    sync(task.x_train.device)
    elapsed = time.perf_counter() - t0
    for sink in sinks:  # one-off end-of-run work (heatmap render, summary file) is not per-step overhead
        sink.close(Outcome(status="completed"))
    return elapsed


def bench_config(name: str, repeats: int, scale: float, tmp: str, extra: list[str]) -> dict[str, float]:
    overrides, steps = CONFIGS[name]
    overrides = overrides + extra
    steps = max(2, int(steps * scale))
    cfgs = {v: compose_cfg(overrides + (EVERYTHING if v == "all" else [])) for v in VARIANTS}
    task = build.task(cfgs["plain"], build.device(cfgs["plain"]))
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    time_plain(cfgs["plain"], task, min(steps, 20))  # warm-up: allocator, kernels, lazy imports
    for r in range(repeats):
        for v in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]:  # rotate the order
            run_tmp = tempfile.mkdtemp(dir=tmp)
            t = time_plain(cfgs[v], task, steps) if v == "plain" else time_gradexp(cfgs[v], task, steps, v, run_tmp)
            times[v].append(t)
    medians = {v: statistics.median(ts) for v, ts in times.items()}
    return {"steps": steps, "log_every": cfgs["default"].log.every, "plain_s": medians["plain"],
            **{v: medians[v] / medians["plain"] for v in VARIANTS[1:]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply each config's step count")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--out", default="bench_overhead.json")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every configuration (e.g. log.every=25); repeatable")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            results[name] = bench_config(name, args.repeats, args.steps_scale, tmp, args.override)
    table = Table(title=f"gradexp overhead vs a plain loop (median of {args.repeats}, device {torch.device('cuda' if torch.cuda.is_available() else 'cpu')})")
    for col in ("config", "steps", "log.every", "plain s", "(a) off", "(b) default", "(c) all"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(name, str(r["steps"]), str(r["log_every"]), f"{r['plain_s']:.3f}",
                      f"{r['off']:.3f}", f"{r['default']:.3f}", f"{r['all']:.3f}")
    Console().print(table)
    Path(args.out).write_text(json.dumps({"repeats": args.repeats, "torch": torch.__version__,
                                          "threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
