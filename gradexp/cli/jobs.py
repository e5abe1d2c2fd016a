"""A sweep job whose folder already holds files: re-running the same sweep, or SLURM requeueing the job.

Hydra has no sweep resume, and SLURM restarts a requeued job from the top, in the same folder. Both call the task
again for a folder gradexp wrote before; the one rule for existing run folders (cli/folders.py) says gradexp
writes there only to continue that same run. FolderGuard has already checked that the sweep is the same one
(multirun.yaml), so each job decides here what continuing means:

  completed, diverged          -> skip (nothing left to do; its summary.json stands)
  a checkpoint, not failed     -> resume from it (interrupted, requeued, or killed after a periodic checkpoint)
  failed                       -> rerun, the old files moved aside into attempt-N/
  a run's files, no checkpoint -> start over (killed before its first checkpoint), old files in attempt-N/
  none of a run's files        -> a fresh job (Hydra's .hydra/ and a user's own files stay where they are)"""
from __future__ import annotations

import os
from typing import Any, Optional

SKIP, RESUME, FRESH = "skip", "resume", "fresh"


def decide(run_dir: str) -> str:
    """SKIP, RESUME or FRESH for the job folder `run_dir`; moves old files aside before a FRESH rerun."""
    from gradexp.sinks.summary import read_summary
    from gradexp.training import checkpoint, resume  # torch: only inside a job (Tab completion imports this module)

    summary = read_summary(run_dir)
    status = None if summary is None else summary.get("status")
    if status in resume.FINISHED:
        return SKIP
    has_checkpoint = os.path.exists(os.path.join(run_dir, checkpoint.CHECKPOINT_NAME))
    if has_checkpoint and status != "failed":
        return RESUME
    if _left_files(run_dir):
        resume.move_aside(run_dir)
    return FRESH


def _left_files(run_dir: str) -> bool:
    """Files of an earlier attempt: what a run writes (a user's own files in the folder are not an attempt's)."""
    from gradexp.training.artefacts import run_artefacts

    return bool(run_artefacts(run_dir))


def objective(summary: Optional[dict[str, Any]], metric: str, direction: str) -> float:
    """The value a sweeper (Optuna) optimises: summary.json's final `metric`. A diverged or failed job, or one
    without that value, gets the worst value of `direction` (inf when minimising): Optuna records it as a
    complete, worst trial instead of failing the whole search."""
    worst = float("inf") if direction == "minimize" else float("-inf")
    if summary is None or summary.get("status") != "completed":
        return worst
    final = summary.get("final")
    value = final.get(metric) if isinstance(final, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else worst
