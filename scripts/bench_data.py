"""The input pipeline and the instruments on real-size image shapes: ResNet-20 on 32x32 RGB images (the CIFAR-10
shape). CIFAR-10 itself is used when it is in data.root already (--cifar-root); otherwise a generated image folder
of the same shape (--images N random-texture PNGs in 10 classes, in a temporary folder) stands in.

  1. steps/s with data.workers = 0, 1, 2 (data.augment=standard, so every setting goes through the DataLoader and
     does the same work; plus workers 0 without augmentation, batches cut in place), instruments off;
  2. the instruments' overhead at the default log.every on the same model, two ways: (a) gradexp's loop with the
     default probes and sinks against a hand-written loop (scripts/bench_overhead.py's two timers), interleaved,
     median of repeats; (b) within one run, the share of wall time the perf meter books to instrumentation
     (summary.json perf.instrumentation_share), which a machine whose load changes between runs disturbs less.
Usage: python scripts/bench_data.py [--steps 30] [--repeats 3] [--batch 32] [--images 2000] [--cifar-root DIR]"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_overhead import compose_cfg, make_run, time_gradexp, time_plain  # noqa: E402
from gradexp.sinks.summary import SummarySink  # noqa: E402
from gradexp.sinks.tensorboard import TensorBoardSink  # noqa: E402
from gradexp.training.loop import Outcome  # noqa: E402

from gradexp import build  # noqa: E402
from gradexp.training.loop import train  # noqa: E402


def write_images(root: str, n: int) -> None:
    """n 32x32 RGB PNGs, 10 class folders; each a class-coloured smooth texture plus noise."""
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        label = i % 10
        os.makedirs(os.path.join(root, f"c{label}"), exist_ok=True)
        base = torch.rand(3, 4, 4, generator=gen) * 0.5 + label / 20
        img = torch.nn.functional.interpolate(base[None], size=32, mode="bilinear")[0]
        img = (img + 0.1 * torch.rand(3, 32, 32, generator=gen)).clamp(0, 1)
        Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(os.path.join(root, f"c{label}", f"{i}.png"))


def steps_per_s(overrides: list[str], steps: int) -> float:
    cfg = compose_cfg(overrides)
    task = build.task(cfg, build.device(cfg))
    run = make_run(cfg, task, probes=False, sinks=[])
    run.batches = build.batches(cfg, task, build.device(cfg))
    for _ in range(3):  # start the workers (and fill their queues) before timing
        run.batches.next()
    settings = build.settings(cfg)
    settings.steps, settings.eval_every, settings.log_every = steps, steps + 1, steps + 1
    t0 = time.perf_counter()
    train(run, settings)
    return steps / (time.perf_counter() - t0)


def instrument_share(cfg, task, steps: int, folder: str) -> float:
    """perf.instrumentation_share of one run with the default probes and sinks."""
    sinks = [TensorBoardSink(folder), SummarySink(folder, [], [])]
    run = make_run(cfg, task, probes=True, sinks=sinks)
    settings = build.settings(cfg)
    settings.steps, settings.eval_every = steps, steps
    outcome = train(run, settings)
    for sink in sinks:
        sink.close(Outcome(status="completed"))
    return outcome.perf["instrumentation_share"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--overhead-steps", type=int, default=51, help="logging steps 0, 25 and 50 at log.every=25")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--cifar-root", default=None, help="a data.root holding cifar10/cifar-10-binary.tar.gz")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cifar_root:
            data = ["data=cifar10", f"data.root={args.cifar_root}", "data.n_train=10000", "data.n_val=1000"]
        else:
            write_images(os.path.join(tmp, "images"), args.images)
            data = ["data=image_folder", f"data.root={os.path.join(tmp, 'images')}"]
        base = ["model=resnet", "model.depth=3", f"train.batch_size={args.batch}", "device=cpu", *data]
        print(f"{data[0]}, ResNet-20, batch {args.batch}, {torch.get_num_threads()} torch threads")
        steps_per_s(base, 2)  # warm-up: allocator, kernels, lazy imports
        print(f"  workers 0, no augmentation: {steps_per_s(base, args.steps):.2f} steps/s")
        for workers in (0, 1, 2):
            rate = steps_per_s([*base, f"data.workers={workers}", "data.augment=standard"], args.steps)
            print(f"  workers {workers}, augment=standard: {rate:.2f} steps/s")
        cfg = compose_cfg(base)
        task = build.task(cfg, build.device(cfg))
        time_plain(cfg, task, 5)  # warm-up of both timers: the first run of a model here took up to 6x longer
        time_gradexp(cfg, task, 5, "default", tempfile.mkdtemp(dir=tmp))
        times = {"plain": [], "default": []}
        for r in range(args.repeats):
            for variant in (("plain", "default") if r % 2 == 0 else ("default", "plain")):
                run_tmp = tempfile.mkdtemp(dir=tmp)
                times[variant].append(time_plain(cfg, task, args.overhead_steps) if variant == "plain" else
                                      time_gradexp(cfg, task, args.overhead_steps, "default", run_tmp))
        plain, default = statistics.median(times["plain"]), statistics.median(times["default"])
        print(f"  instruments at log.every={cfg.log.every}: (a) {default / plain:.3f}x a plain loop "
              f"({args.overhead_steps} steps, plain {plain:.2f} s, median of {args.repeats})")
        shares = [instrument_share(cfg, task, args.overhead_steps, tempfile.mkdtemp(dir=tmp))
                  for _ in range(args.repeats)]
        share = 100 * statistics.median(shares)
        print(f"  instruments at log.every={cfg.log.every}: (b) {share:.1f} % of a run's wall time "
              f"({args.overhead_steps} steps, median of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
