"""Shared fixtures: compose real configs with Hydra's compose API, tiny enough to train in a second."""
from __future__ import annotations

import pytest
from rich.console import Console

import gradexp

TINY = ["train.steps=4", "train.eval_every=2", "log.every=1", "train.batch_size=16", "model.width=8", "model.depth=2"]


def compose_config(overrides: list[str] = (), tiny: bool = True):
    return gradexp.compose([*(TINY if tiny else []), *overrides])


@pytest.fixture
def quiet_console():
    return Console(quiet=True)


@pytest.fixture
def run_tiny(tmp_path, quiet_console):
    """run_tiny(overrides) -> (outcome, run_dir): trains a tiny composed experiment in tmp_path."""
    from gradexp.training.run import run_experiment

    def run(overrides: list[str] = (), tiny: bool = True, name: str = "run"):
        cfg = compose_config(list(overrides), tiny=tiny)
        run_dir = str(tmp_path / name)
        return run_experiment(cfg, run_dir=run_dir, overrides=list(overrides), console=quiet_console), run_dir

    return run


class Capture:
    """A sink that keeps every logged value by step: what a test compares with its oracle."""

    def __init__(self) -> None:
        self.steps: dict[int, dict] = {}

    def log(self, step, values):
        self.steps.setdefault(step, {}).update(values)

    def close(self, outcome):
        pass
