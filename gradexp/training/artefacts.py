"""The files a run writes into its folder, by name: what makes a folder hold a run (cli/folders.py, gradexp.Monitor)
and what moves into attempt-N/ when a run starts over (resume.move_aside). Anything else in a run folder is not a
run's: the user's own files, Hydra's multirun.yaml. Torch-free: `gradexp run` checks folders before importing it."""
from __future__ import annotations

import os

from gradexp.sinks.files import TEMPORARY_MARK
from gradexp.sinks.summary import SUMMARY_NAME

CHECKPOINT_NAME = "checkpoint.pt"
EVENTS_PREFIX = "events.out.tfevents."  # TensorBoard's event files


def is_run_artefact(name: str) -> bool:
    """summary.json, checkpoint.pt, an event file, or the temporary file of an atomic write cut short (sinks/files.py)."""
    return (name in (SUMMARY_NAME, CHECKPOINT_NAME) or name.startswith(EVENTS_PREFIX)
            or (name.startswith(".") and TEMPORARY_MARK in name))


def run_artefacts(folder: str) -> list[str]:
    """The names in `folder` that a run wrote there, sorted; [] for a folder that does not exist."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(name for name in names if is_run_artefact(name))
