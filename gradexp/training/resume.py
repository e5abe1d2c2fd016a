"""`gradexp run resume=<run folder>`: continue an interrupted run in place, with the config it started with.

Two halves. Before Hydra starts, `hydra_args` rewrites the command line: the run's own overrides
(from its .hydra/overrides.yaml), the folder as hydra.run.dir, and hydra.output_subdir=null so Hydra
does not rewrite the run's .hydra/ record. Inside the run, `prepare` refuses a folder that already
holds a result (re-running never overwrites), refuses overrides that change the saved config, and
loads the checkpoint."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from omegaconf import OmegaConf

from gradexp.training import checkpoint
from gradexp.config.schema import ConfigError
from gradexp.sinks.summary import SUMMARY_NAME

PREFIX = "resume="
FINISHED = ("completed", "diverged")  # a run with one of these has nothing left to do


class ResumeError(ConfigError):
    """Bad input around resuming or re-using a run folder: one line, exit 2."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        self.key, self.value, self.allowed = "resume", None, message


def hydra_args(args: list[str]) -> list[str]:
    """The command line Hydra should see for `resume=FOLDER [OVERRIDES]` (unchanged without resume=)."""
    given = [a for a in args if a.startswith(PREFIX)]
    if not given:
        return args
    folder = given[-1][len(PREFIX):]
    if any(a in ("-m", "--multirun") or a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in args):
        raise ResumeError(f"resume={folder} continues one run in its own folder: drop -m/--multirun and hydra.*.dir")
    saved = os.path.join(folder, ".hydra", "overrides.yaml")
    if not os.path.isfile(saved):
        raise ResumeError(f"resume={folder}: not a gradexp run folder (no .hydra/overrides.yaml there)")
    original = [str(o) for o in OmegaConf.load(saved)]
    extra = [a for a in args if not a.startswith(PREFIX) and a not in original]
    path = os.path.abspath(folder)
    return [*original, *extra, f"{PREFIX}{_quoted(path)}", f"hydra.run.dir={_quoted(path)}", "hydra.output_subdir=null"]


def _quoted(path: str) -> str:
    """A Hydra override value that keeps spaces, '=' and ',' in a path literal."""
    return f"'{path}'" if "'" not in path else path


def prepare(cfg: Any, run_dir: str) -> Optional[dict[str, Any]]:
    """None for a fresh run; the checkpoint state to restore for resume=. Raises ResumeError (exit 2)."""
    status = _status(run_dir)
    if cfg.resume is None:
        if status is not None:
            raise ResumeError(f"{run_dir} already holds a run (status {status}); gradexp never overwrites one "
                              f"(resume={run_dir} continues an interrupted run)")
        return None
    if not os.path.samefile(cfg.resume, run_dir):
        raise ResumeError(f"resume={cfg.resume} must run in that folder, not {run_dir}")
    if status in FINISHED:
        raise ResumeError(f"resume={cfg.resume}: that run is {status}; there is nothing to resume")
    _check_same_config(cfg, run_dir)
    try:
        return checkpoint.load(os.path.join(run_dir, checkpoint.CHECKPOINT_NAME))
    except checkpoint.CheckpointError as err:
        raise ResumeError(f"resume={cfg.resume}: {err}") from err


def _status(run_dir: str) -> Optional[str]:
    path = os.path.join(run_dir, SUMMARY_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return str(json.load(f).get("status"))
    except (OSError, ValueError):
        return "unreadable"


def _check_same_config(cfg: Any, run_dir: str) -> None:
    saved_path = os.path.join(run_dir, ".hydra", "config.yaml")
    if not os.path.isfile(saved_path):
        raise ResumeError(f"resume={cfg.resume}: not a gradexp run folder (no .hydra/config.yaml there)")
    saved = _flat(OmegaConf.to_container(OmegaConf.load(saved_path)))
    now = _flat(OmegaConf.to_container(cfg))
    changed = [f"{k}={now.get(k)!r} (the run has {saved.get(k)!r})"
               for k in sorted(set(saved) | set(now)) if k != "resume" and now.get(k) != saved.get(k)]
    if changed:
        raise ResumeError(f"resume keeps the run's config; these overrides change it: {', '.join(changed)}")


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"steps": 5}} -> {"train.steps": 5}"""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_flat(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def restore(run: Any, summary: Any, state: Optional[dict[str, Any]]) -> int:
    """Put the checkpoint into the freshly built run and summary sink; the step to start from (0 when fresh)."""
    if state is None:
        return 0
    summary.load_state_dict(state["summary"])
    return checkpoint.restore(run, state)
