"""Which folders a `gradexp run` may write into, decided before Hydra writes anything, and the undo of a refusal.

`FolderGuard` is a Hydra callback (configs/config.yaml, hydra.callbacks): Hydra calls it after composing the
config and before it creates the run (or sweep) folder and writes .hydra/ there. It refuses a folder that holds
a run unless this invocation resumes that run, refuses a path it cannot write, and remembers what did not exist
yet, so that a run refused later removes exactly what this invocation created and nothing the user owned."""
from __future__ import annotations

import os
import re
import shutil
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from gradexp.cli import launchers
from gradexp.config.schema import first_line
from gradexp.training import exclusive
from gradexp.training.artefacts import run_artefacts

HYDRA_OWN = (".hydra", "gradexp.log", "multirun.yaml")  # what Hydra writes before the task starts


class Refused(BaseException):
    """Bad input found inside a Hydra callback. Hydra turns an Exception raised there into a warning and goes on,
    so this is a BaseException; run_app prints it as one line and exits 2."""


class _Created:
    """What this invocation is about to create: the topmost missing folder and the Hydra files it adds."""

    def __init__(self) -> None:
        self.target: Optional[str] = None     # the run or sweep folder
        self.topmost: Optional[str] = None    # the highest folder on its path that did not exist (None: it existed)
        self.existing: set[str] = set()       # entries of target that were there before

    def remember(self, target: str) -> None:
        self.target, self.topmost = target, topmost_missing(target)
        self.existing = set(os.listdir(target)) if os.path.isdir(target) else set()

    def forget(self) -> None:
        """Nothing for undo() to remove: the folder turned out to be another process's (training/exclusive.py), and
        what looked like this invocation's files may be that run's."""
        self.target = self.topmost = None


created = _Created()
_held: list[str] = []  # run folders FolderGuard holds for this process (training/exclusive.py)


def let_go() -> None:
    """Release the run folder FolderGuard took: at the run's end, and after any ending of `gradexp run` (run_app),
    since a refused or failed run may not reach on_run_end and an in-process caller goes on living."""
    while _held:
        exclusive.release(_held.pop())


def holds_run(folder: str) -> bool:
    """Hydra's record of a run (.hydra/) or any file a run writes (training/artefacts.py)."""
    return os.path.isdir(folder) and (os.path.exists(os.path.join(folder, ".hydra")) or bool(run_artefacts(folder)))


def topmost_missing(path: str) -> Optional[str]:
    """The highest folder on `path` that does not exist yet (`path` itself, an ancestor, or None)."""
    missing = None
    while not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def check_writable(key: str, folder: str) -> None:
    """The nearest existing folder on the path must be a folder this process can write into."""
    path = folder
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise Refused(f"invalid value for {key}: {folder!r} ({path} is a file; allowed: a folder path)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise Refused(f"invalid value for {key}: {folder!r} ({path} is not writable; allowed: a writable folder)")


def make_folder(key: str, folder: str) -> None:
    """Create the folder now, as Hydra would a moment later: where the system refuses (a path under /proc, a full or
    read-only file system that os.access cannot see, as root), the refusal names the key instead of Hydra's bare
    OSError. What it creates is remembered (`created`), so undo() removes it after a refusal."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise Refused(f"invalid value for {key}: {folder!r} (cannot create it: {err.strerror or err}; allowed: a "
                      f"folder path this process can create)") from None


def refuse_existing_run(folder: str) -> None:
    from gradexp.sinks.summary import read_summary
    from gradexp.training.resume import FINISHED

    status = (read_summary(folder) or {}).get("status")
    if status in FINISHED:  # resume= would be refused in turn: nothing left to do (found by a new user)
        raise Refused(f"{folder} already holds a finished run ({status}); gradexp never overwrites one: choose "
                      "another hydra.run.dir")
    raise Refused(f"{folder} already holds a run; gradexp never overwrites one, it only continues it: "
                  f"gradexp run resume={folder} (or choose another hydra.run.dir)")


def _folder(config: Any, key: str) -> str:
    """The absolute folder `key` names. One that cannot be resolved (${oc.env:UNSET}) is bad input: raised from a
    callback as an Exception, Hydra would print it as a warning and go on."""
    try:
        folder = os.path.abspath(str(OmegaConf.select(config, key)))
    except Exception as err:  # noqa: BLE001  any resolver's error: one line naming the key
        typed = OmegaConf.to_container(config, resolve=False)
        for part in key.split("."):
            typed = typed.get(part) if isinstance(typed, dict) else None
        raise Refused(f"invalid value for {key}: {typed!r} ({first_line(err)}; allowed: a folder path)") from None
    if "${" in folder:  # an escaped \${...}: Hydra resolves the folder's name a second time when it makes it
        raise Refused(f"invalid value for {key}: {folder!r} (allowed: a folder path without '${{': Hydra would "
                      f"resolve it again and write somewhere else)")
    return folder


def check_subfolders(config: Any, sweep: bool) -> None:
    """Hydra writes .hydra/ to hydra.output_subdir (under the run folder) and each sweep job into hydra.sweep.subdir
    (under the sweep folder), before any job's code runs. Found by an adversarial test: an absolute or `..` path
    there rewrote another run's .hydra/ record, and a sweep.subdir the same for every job (`fixed`) had job 2 find
    job 1's summary and skip itself, a sweep half run and reported complete. A subdir with an interpolation may differ
    per job (${hydra.job.num}, or a swept key's value: lr=${optimizer.lr}), and is taken as it is; so is any subdir
    of a sweep of one job."""
    raw = OmegaConf.to_container(config.hydra, resolve=False)
    keys = [("hydra.output_subdir", raw.get("output_subdir"))]
    if sweep:
        keys.append(("hydra.sweep.subdir", (raw.get("sweep") or {}).get("subdir")))
    for key, value in keys:
        if value is None and key == "hydra.output_subdir":
            continue
        path = str(value)
        if not path or os.path.isabs(path) or ".." in path.replace("\\", "/").split("/") or path == ".":
            raise Refused(f"invalid value for {key}: {value!r} (allowed: a folder inside the "
                          f"{'sweep' if key == 'hydra.sweep.subdir' else 'run'} folder, without '..'"
                          f"{'' if key == 'hydra.sweep.subdir' else ', or null'})")
    if sweep and not _names_each_job(str(keys[1][1]), config) and launchers.sweep_jobs(config) != 1:
        raise Refused(f"invalid value for hydra.sweep.subdir: {keys[1][1]!r} (allowed: a folder per job, named with "
                      "${hydra.job.num}, ${hydra.job.override_dirname} or every swept key: one folder for several "
                      "jobs would have each job find the last one's run)")


CHOICES = "hydra.runtime.choices."  # ${hydra:runtime.choices.model}: the option a job took for the group `model`
# interpolations Hydra resolves to a different value in every job of a sweep
JOB_UNIQUE = {"hydra.job.num", "hydra.job.id", "hydra.job.override_dirname"}


def _names_each_job(subdir: str, config: Any) -> bool:
    """Whether a sweep's subdir differs from job to job: it interpolates a key Hydra makes unique per job, or every key
    the basic sweeper sweeps over more than one value. Found by an adversarial test: subdir=${train.steps} had an
    interpolation and one value for every job, and the second job rewrote the first's .hydra/ record and skipped
    itself. A key that only interpolates a swept key in turn is not followed: name the swept key itself. Under
    another sweeper (which keys it varies is not known here) any interpolation is taken, as it may differ per job."""
    referenced = {("hydra." if resolver else "") + key
                  for resolver, key in re.findall(r"\$\{\s*(hydra:)?\s*([\w.\-]+)\s*\}", subdir)}
    referenced |= {key[len(CHOICES):] for key in referenced if key.startswith(CHOICES)}  # a swept group's choice
    if referenced & JOB_UNIQUE:
        return True
    swept = launchers.swept_keys(config)
    if swept is None:
        return "${" in subdir
    return bool(swept) and swept <= referenced


class FolderGuard(Callback):
    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        check_subfolders(config, sweep=False)
        run_dir = _folder(config, "hydra.run.dir")
        check_writable("hydra.run.dir", run_dir)
        resuming = OmegaConf.select(config, "resume") is not None  # resume.prepare checks it names this folder
        if holds_run(run_dir) and not resuming:
            refuse_existing_run(run_dir)
        created.remember(run_dir)
        make_folder("hydra.run.dir", run_dir)
        self._hold(run_dir, resuming)

    def _hold(self, run_dir: str, resuming: bool) -> None:
        """The folder is this process's before Hydra writes .hydra/ into it: two runs started into one new folder at
        once would otherwise both write it, the refused one last. Held until on_run_end (the process's exit at the
        latest). What another process made is not undone: undo() would take its .hydra/ for this invocation's."""
        try:
            if exclusive.hold(run_dir):
                _held.append(run_dir)
        except exclusive.FolderInUse as err:
            created.forget()
            raise Refused(str(err)) from None
        if holds_run(run_dir) and not resuming:  # empty at the first look: another run wrote it meanwhile
            created.forget()
            let_go()
            refuse_existing_run(run_dir)

    def on_run_end(self, *args: Any, **kwargs: Any) -> None:
        let_go()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        check_subfolders(config, sweep=True)
        sweep_dir = _folder(config, "hydra.sweep.dir")
        check_writable("hydra.sweep.dir", sweep_dir)
        try:
            launchers.check(OmegaConf.select(config, "hydra.launcher"))
        except launchers.LauncherError as err:
            raise Refused(str(err)) from None
        empty = launchers.empty_sweep(config)
        if empty is not None:  # Hydra would launch 0 jobs, exit 0, and leave a folder holding only multirun.yaml
            raise Refused(f"invalid value for the sweep: {empty} gives no value (allowed: a sweep of at least one)")
        oversized = launchers.oversized_sweep(config)
        if oversized is not None:
            raise Refused(f"invalid value for the sweep: {oversized} asks for more than {launchers.MAX_SWEEP_JOBS:,} "
                          f"jobs (allowed: at most {launchers.MAX_SWEEP_JOBS:,} in one sweep)")
        if holds_run(sweep_dir) or not _same_sweep(sweep_dir, config):
            raise Refused(f"{sweep_dir} already holds another run or sweep; gradexp writes into it only to "
                          "re-run that same sweep (or choose another hydra.sweep.dir)")
        created.remember(sweep_dir)
        make_folder("hydra.sweep.dir", sweep_dir)
        if str(OmegaConf.select(config, "hydra.launcher._target_", default="")).endswith("SlurmLauncher"):
            launchers.slurm_sweep = sweep_dir  # a signal to this process goes on to the sweep's jobs


def _same_sweep(sweep_dir: str, config: Any) -> bool:
    """True for a new folder, or one whose multirun.yaml records the same sweep overrides as this invocation."""
    from gradexp.training.resume import load_run_yaml

    saved_path = os.path.join(sweep_dir, "multirun.yaml")
    if not os.path.lexists(saved_path):
        return True
    try:  # with the run folder's limits: a FIFO or a file of nested aliases there hung the sweep past SIGTERM
        saved = load_run_yaml(saved_path)["hydra"]["overrides"]["task"]
    except Exception:  # unreadable or foreign: not a sweep gradexp can continue
        return False
    return saved == OmegaConf.to_container(config.hydra.overrides.task, resolve=False)


def undo() -> None:
    """After a refusal: remove the Hydra files this invocation added to the target, then the folders it created,
    each only while empty. A folder that existed before, and anything the user put anywhere, stay."""
    target = created.target
    if target is None:
        return
    if os.path.isdir(target):
        added = set(os.listdir(target)) - created.existing
        if not added <= set(HYDRA_OWN):
            return  # something else was written: not a plain refusal, keep everything
        for name in added:
            path = os.path.join(target, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if created.topmost is None:
        return
    path = target
    while not os.path.isdir(path) and path != created.topmost:  # made only part of the way (a name too long)
        path = os.path.dirname(path)
    while True:  # the created folders, innermost first, each only if empty
        try:
            os.rmdir(path)
        except OSError:
            return
        if path == created.topmost:
            return
        path = os.path.dirname(path)
