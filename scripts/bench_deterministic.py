"""What train.deterministic=true and periodic checkpoints cost: steps/s per model with the switch off and on,
and the time to write one checkpoint. Meant for an idle machine with CUDA (on CPU the switch changes little).

    python scripts/bench_deterministic.py                 # 2000 steps per run, device=auto
    python scripts/bench_deterministic.py --steps 50      # a quick check that it works
"""
from __future__ import annotations

import argparse
import tempfile
import time

from hydra import compose, initialize_config_module
from rich.console import Console

from gradexp.config.schema import register_schema
from gradexp.training.run import run_experiment

MODELS = {
    "mlp d=20": ["model=mlp", "model.depth=20", "model.width=256"],
    "cnn d=3": ["model=cnn", "model.depth=3", "model.width=64"],
    "lstm d=2": ["model=lstm", "model.depth=2", "model.width=128", "data=seq_digits"],
}


def config(overrides: list[str]):
    register_schema()
    with initialize_config_module(version_base="1.3", config_module="gradexp.configs"):
        return compose(config_name="config", overrides=overrides)


def steps_per_s(overrides: list[str]) -> float:
    cfg = config([*overrides, "train.checkpoint_every=0"])
    with tempfile.TemporaryDirectory() as run_dir:
        outcome = run_experiment(cfg, run_dir=f"{run_dir}/run", overrides=[], console=Console(quiet=True))
    return outcome.perf["steps_per_s"]


def checkpoint_ms(overrides: list[str]) -> float:
    """Milliseconds for one checkpoint of the model after a short run (optimizer state filled)."""
    cfg = config([*overrides, "train.steps=5", "train.checkpoint_every=0"])
    with tempfile.TemporaryDirectory() as run_dir:
        import gradexp.training.run as experiment

        saved = {}
        original = experiment.Checkpointer

        class Timed(original):  # time the save the interrupted-run path would do, on the real run
            def maybe_save(self, steps):
                if steps == 5:
                    started = time.perf_counter()
                    self.save(steps)
                    saved["ms"] = (time.perf_counter() - started) * 1e3

        experiment.Checkpointer = Timed
        try:
            run_experiment(cfg, run_dir=f"{run_dir}/run", overrides=[], console=Console(quiet=True))
        finally:
            experiment.Checkpointer = original
    return saved["ms"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    common = [f"train.steps={args.steps}", f"device={args.device}", "log.every=10", "train.eval_every=1000000"]
    print(f"{'model':10} {'steps/s':>9} {'deterministic':>14} {'cost':>7} {'checkpoint ms':>14}")
    for name, overrides in MODELS.items():
        fast = steps_per_s([*common, *overrides])
        slow = steps_per_s([*common, *overrides, "train.deterministic=true"])
        ms = checkpoint_ms([*common, *overrides])
        print(f"{name:10} {fast:9.0f} {slow:14.0f} {fast / slow:6.2f}x {ms:14.1f}")


if __name__ == "__main__":
    main()
