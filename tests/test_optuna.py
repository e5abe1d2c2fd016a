"""`gradexp run -m experiment=lr_edge` (hydra/sweeper=optuna, the optional extra `optuna`): each trial returns its
final objective.metric, Optuna's best is the best of the trials' summary.json values, and `gradexp report` lists
every trial. Skipped without hydra-optuna-sweeper installed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed "
                    "(pip install 'gradexp[optuna]')")


@pytest.mark.slow
def test_optuna_preset_returns_each_trials_objective_and_report_lists_the_trials(tmp_path):
    command = [sys.executable, "-m", "gradexp", "run", "-m", "experiment=lr_edge", "hydra.sweeper.n_trials=3",
               "train.steps=4", "model.depth=3", "model.width=8", "train.eval_every=2", "log.every=2",
               "device=cpu", "hydra.sweep.dir=sweep"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "setup plugin" not in done.stdout + done.stderr  # alembic's 7 INFO lines (found by a new user's walkthrough)
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert len(summaries) == 3
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    values = [s["final"]["acc/val"] if s["status"] == "completed" else float("-inf") for s in summaries]
    assert best.best_value == max(values)  # objective acc/val, maximised, exactly as each trial recorded it
    report = subprocess.run([sys.executable, "-m", "gradexp", "report", "sweep", "--format", "json"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    rows = json.loads(report.stdout)
    assert len(rows) == 3 and {str(r["optimizer.lr"]) for r in rows} == {
        str(p.name.split("optimizer.lr=")[1].split(",")[0]) for p in (tmp_path / "sweep").glob("[0-9]*_*")}
