"""Side by side in one process: steps/s of eager vs train.compile=true, in fp32 and bf16, with the instruments off
and at the default log.every; hence compiled/eager speed-ups and the instruments' overhead under compile and bf16.

Variants rotate order each repeat and the median over repeats is reported. Compilation is kept out of the timing:
each run first trains `--warmup` steps (compiling on the first ordinary one), then the timed steps continue the same
run (train(start_step=warmup)). Each compiled variant starts from torch._dynamo.reset(), so every build compiles
its own graph rather than hitting dynamo's recompile limit.

    python scripts/bench_compile_amp.py                      # default MLP on digits, CPU
    python scripts/bench_compile_amp.py --device cuda --steps 400"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradexp.config.schema import compose, validate
from gradexp.training import factory
from gradexp.training.loop import train

OFF = ["log.every=100000", "log.bptt_every=0", "train.eval_every=100000"]  # only the last step logs


def variants(device: str) -> dict[str, list[str]]:
    out = {}
    for precision in ("fp32", "bf16"):
        for compiled in (False, True):
            for probes in ("off", "on"):
                name = f"{precision} {'compiled' if compiled else 'eager'} instruments {probes}"
                out[name] = [f"device={device}", f"train.precision={precision}", f"train.compile={str(compiled).lower()}",
                             "train.eval_every=100000", *(OFF if probes == "off" else [])]
    return out


def steps_per_s(overrides: list[str], warmup: int, steps: int) -> float:
    if "train.compile=true" in overrides:
        torch._dynamo.reset()
    cfg = compose([*overrides, f"train.steps={warmup + steps}"])
    validate(cfg)
    run = factory.run(cfg)
    settings = factory.settings(cfg)
    warm = factory.settings(cfg)
    warm.steps = warmup
    train(run, warm)
    if run.task.x_train.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(run, settings, start_step=warmup)
    if run.task.x_train.is_cuda:
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra overrides for every variant, e.g. model.depth=20")
    args = parser.parse_args()
    table = {name: [*ov, *args.overrides] for name, ov in variants(args.device).items()}
    rates: dict[str, list[float]] = {name: [] for name in table}
    names = list(table)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(steps_per_s(table[name], args.warmup, args.steps))
    median = {name: statistics.median(v) for name, v in rates.items()}
    print(f"torch {torch.__version__}, device {args.device}, {args.steps} timed steps, median of {args.repeats}")
    for name, rate in median.items():
        print(f"  {name:36s} {rate:8.1f} steps/s")
    for precision in ("fp32", "bf16"):
        for probes in ("off", "on"):
            ratio = median[f"{precision} compiled instruments {probes}"] / median[f"{precision} eager instruments {probes}"]
            print(f"  {precision} compiled/eager, instruments {probes}: {ratio:.2f}x")
        for mode in ("eager", "compiled"):
            off, on = median[f"{precision} {mode} instruments off"], median[f"{precision} {mode} instruments on"]
            print(f"  {precision} {mode}: instruments cost {off / on - 1:+.0%} of the step time")


if __name__ == "__main__":
    main()
