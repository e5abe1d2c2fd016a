"""Overhead of gradexp's loop and instruments against a plain hand-written PyTorch loop.

Same model (same seed), data, optimizer and loss in every variant, timed in one process, interleaved
(each repeat runs every variant once, in rotating order), median of the repeats:
  plain  a hand-written loop: batch, forward, loss, zero_grad, backward, step (and one evaluation at the end)
  off    gradexp's train() with no probes and no sinks (the loop, clip policy, non-finite guard, perf meter)
  default  gradexp's train() with the default probes, TensorBoard + summary sinks, the configured log.every
  all    every instrument on every step (log.every=1, histograms and bptt every step)
  handmade  the plain loop with the default probes' four families hand-written as tightly as eager PyTorch allows, on
         gradexp's logging steps (scripts/handmade.py): the floor under (b). MLP configs only (it stacks the hidden
         layers' outputs, which must share a shape)
Ratios are variant / plain. `transformer` is gradexp's own family (4 blocks, d_model 128). The monitor_* configs time gradexp.Monitor on a user-style loop instead (a model gradexp
does not build: a residual CNN, and torch's own 4-block nn.TransformerEncoder with d_model 128): plain is the same
loop without the Monitor, default is the Monitor at its default interval (every=25), all is every=1.
Usage:
  python scripts/bench_overhead.py [--repeats 5] [--steps-scale 1.0] [--only mlp,mlp20,lstm] [--threads N]
                                   [--override KEY=VALUE ...] [--out F.json]"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
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

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # scripts/ itself
import handmade  # noqa: E402

# name -> (overrides, steps per timed run)
CONFIGS = {
    "mlp": ([], 500),
    "mlp20": (["model.depth=20", "model.width=256", "train.batch_size=128"], 200),
    "lstm": (["model=lstm", "data=adding", "data.seq_len=100"], 100),
    # gradexp's own family: 4 blocks, d_model 128, 4 heads, on the copy task (T = 30); attn_entropy is on by default
    "transformer": (["model=transformer", "model.depth=4", "model.width=128", "data=copy"], 100),
}
MONITOR_CONFIGS = {"monitor_cnn": 200, "monitor_transformer": 50}  # name -> steps per timed run
VARIANTS = ("plain", "off", "default", "all", "handmade")
HANDMADE = ("mlp", "mlp20")  # configs whose hidden layers share one output shape
MONITOR_EVERY = {"default": 25, "all": 1}
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
        loss = task.loss(model(task.inputs(x)), y)  # token ids one-hot, as the loop feeds them
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    evaluate(run)
    sync(task.x_train.device)
    return time.perf_counter() - t0


def time_handmade(cfg, task, steps: int, every: int | None = None, make_probes=None) -> float:
    """The plain loop, with scripts/handmade.py's probes (or those `make_probes(run)` gives: scripts/bench_worker.py)
    on the steps gradexp logs at (0, every log.every-th or `every`-th, last)."""
    run = make_run(cfg, task, probes=False, sinks=[])
    model, opt, batches = run.model, run.optimizer, run.batches
    probes = make_probes(run) if make_probes else handmade.Handmade([layer for _, layer in run.layers],
                                                                    list(model.parameters()))
    every = every or cfg.log.every
    sync(task.x_train.device)
    t0 = time.perf_counter()
    for step in range(steps):
        logging = step % every == 0 or step == steps - 1
        if logging:
            probes.attach()
        x, y = batches.next()
        loss = task.loss(model(task.inputs(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if logging:
            probes.after_backward()
        opt.step()
        if logging:
            probes.after_step()
            loss.item()  # the loss, read as gradexp's logging steps read it
    if hasattr(probes, "flush"):
        probes.flush()  # computed elsewhere (a worker process): its numbers are part of the run
    evaluate(run)
    sync(task.x_train.device)
    return time.perf_counter() - t0


def time_variant(cfg, task, steps: int, variant: str, tmp: str) -> float:
    if variant == "plain":
        return time_plain(cfg, task, steps)
    if variant == "handmade":
        return time_handmade(cfg, task, steps)
    return time_gradexp(cfg, task, steps, variant, tmp)


def time_gradexp(cfg, task, steps: int, variant: str, tmp: str) -> float:
    instrumented = variant != "off"
    sinks = [TensorBoardSink(tmp), SummarySink(tmp, [], [])] if instrumented else []
    run = make_run(cfg, task, probes=instrumented, sinks=sinks)
    run.instruments.last_step = steps - 1  # as in a run of `steps` steps: the interval probes (bptt) run at its end too
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
    variants = VARIANTS if name in HANDMADE else VARIANTS[:-1]
    cfgs = {v: compose_cfg(overrides + (EVERYTHING if v == "all" else [])) for v in variants}
    task = build.task(cfgs["plain"], build.device(cfgs["plain"]))
    times: dict[str, list[float]] = {v: [] for v in variants}
    time_plain(cfgs["plain"], task, min(steps, 20))  # warm-up: allocator, kernels, lazy imports
    for r in range(repeats):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:  # rotate the order
            times[v].append(time_variant(cfgs[v], task, steps, v, tempfile.mkdtemp(dir=tmp)))
    medians = {v: statistics.median(ts) for v, ts in times.items()}
    return {"steps": steps, "log_every": cfgs["default"].log.every, "plain_s": medians["plain"],
            **{v: medians[v] / medians["plain"] if v in medians else math.nan for v in VARIANTS[1:]}}


class _ResidualCNN(torch.nn.Module):
    def __init__(self, channels: int = 16, blocks: int = 4):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = torch.nn.ModuleList([torch.nn.Conv2d(channels, channels, 3, padding=1) for _ in range(blocks)])
        self.head = torch.nn.Linear(channels, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        for conv in self.blocks:
            h = h + torch.relu(conv(h))
        return self.head(h.mean(dim=(2, 3)))


class _Transformer(torch.nn.Module):
    """torch's own encoder: 4 blocks, d_model 128, 4 heads, on a 32-token sequence classification."""

    def __init__(self, width: int = 128, depth: int = 4):
        super().__init__()
        self.embed = torch.nn.Embedding(16, width)
        layer = torch.nn.TransformerEncoderLayer(width, 4, dim_feedforward=4 * width, batch_first=True, dropout=0.0)
        self.encoder = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = torch.nn.Linear(width, 16)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def _user_setup(name: str, dev: torch.device):
    torch.manual_seed(0)
    if name == "monitor_cnn":
        model, x = _ResidualCNN(), torch.randn(512, 1, 8, 8)
    else:
        model, x = _Transformer(), torch.randint(0, 16, (512, 32))
    return model.to(dev), x.to(dev), torch.randint(0, 10, (len(x),)).to(dev)


def time_user_loop(name: str, steps: int, every: int, tmp: str, dev: torch.device = torch.device("cpu")) -> float:
    """The loop a user writes (batch, forward, loss, backward, step, zero_grad), with a Monitor when every > 0."""
    import gradexp

    model, x, y = _user_setup(name, dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = gradexp.Monitor(model, run_dir=tmp, every=every, optimizers=[opt]) if every else None
    step = monitor.step if monitor else contextlib.nullcontext
    sync(dev)
    t0 = time.perf_counter()
    for i in range(steps):
        batch = slice((i * 32) % len(x), (i * 32) % len(x) + 32)
        with step():
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if monitor:
                monitor.record(loss=loss)
    sync(dev)
    elapsed = time.perf_counter() - t0
    if monitor:
        monitor.close()  # the end-of-run summary and verdict are not per-step overhead
    return elapsed


def bench_monitor(name: str, repeats: int, scale: float, tmp: str, dev: torch.device) -> dict[str, float]:
    steps = max(2, int(MONITOR_CONFIGS[name] * scale))
    variants = ("plain", "default", "all")
    times: dict[str, list[float]] = {v: [] for v in variants}
    time_user_loop(name, min(steps, 10), 0, tmp, dev)  # warm-up
    for r in range(repeats):
        for v in variants[r % 3:] + variants[:r % 3]:
            times[v].append(time_user_loop(name, steps, MONITOR_EVERY.get(v, 0), tempfile.mkdtemp(dir=tmp), dev))
    medians = {v: statistics.median(ts) for v, ts in times.items()}
    return {"steps": steps, "log_every": MONITOR_EVERY["default"], "plain_s": medians["plain"], "off": math.nan,
            "default": medians["default"] / medians["plain"], "all": medians["all"] / medians["plain"],
            "handmade": math.nan}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply each config's step count")
    parser.add_argument("--only", default=",".join([*CONFIGS, *MONITOR_CONFIGS]),
                        help="comma-separated subset of " + ",".join([*CONFIGS, *MONITOR_CONFIGS]))
    parser.add_argument("--out", default="bench_overhead.json")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every configuration (e.g. log.every=25); repeatable")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    dev = build.device(compose_cfg(args.override))  # the device every configuration runs on (--override device=cuda)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            if name in MONITOR_CONFIGS:
                results[name] = bench_monitor(name, args.repeats, args.steps_scale, tmp, dev)
            else:
                results[name] = bench_config(name, args.repeats, args.steps_scale, tmp, args.override)
    table = Table(title=f"gradexp overhead vs a plain loop (median of {args.repeats}, device {dev})")
    for col in ("config", "steps", "log.every", "plain s", "(a) off", "(b) default", "(c) all", "handmade"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(name, str(r["steps"]), str(r["log_every"]), f"{r['plain_s']:.3f}",
                      *(f"{r[v]:.3f}" if not math.isnan(r[v]) else "–" for v in VARIANTS[1:]))
    Console().print(table)
    Path(args.out).write_text(json.dumps({"repeats": args.repeats, "torch": torch.__version__, "device": str(dev),
                                          "threads": torch.get_num_threads(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
