"""One process writes into a run folder at a time (training/exclusive.py): a second run into a folder being written,
such as two resumes of one interrupted run started together, is refused in one line before it touches anything."""
from __future__ import annotations

import contextlib
import fcntl
import os

import pytest

from gradexp.training.exclusive import FolderInUse, sole_writer
from tests.test_resume import LONG, StopAfter, resume, start


@contextlib.contextmanager
def held_by_another(folder: str):
    """The folder locked as another process would lock it: a descriptor of its own (flock tells them apart)."""
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        os.close(fd)


def test_a_folder_being_written_is_refused_and_free_again_afterwards(tmp_path):
    with held_by_another(str(tmp_path)):
        with pytest.raises(FolderInUse) as err:
            with sole_writer(str(tmp_path)):
                pass
        assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    with sole_writer(str(tmp_path)):  # released when the other run ended
        pass
    with sole_writer(str(tmp_path / "not yet made")):  # nothing to keep out of a folder that does not exist
        pass
    assert os.listdir(tmp_path) == []  # no lock file: nothing added to the folder


def test_a_resume_while_the_run_is_still_writing_is_refused_and_changes_nothing(tmp_path, quiet_console):
    run_dir = str(tmp_path / "run")
    start(run_dir, LONG, quiet_console, stop=StopAfter(6))
    before = {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir)
              if os.path.isfile(os.path.join(run_dir, name))}
    with held_by_another(run_dir):  # the first resume, still running
        with pytest.raises(FolderInUse):
            resume(run_dir, LONG, quiet_console)
    after = {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir)
             if os.path.isfile(os.path.join(run_dir, name))}
    assert after == before


def test_a_forked_child_outliving_the_run_does_not_keep_the_folder(tmp_path):
    """A DataLoader worker is a fork: it shares the lock's descriptor, and flock lets go only when every copy is
    closed. The child closes its copy at the fork, so the folder is free once the run's block ends."""
    import signal
    import time

    ready_r, ready_w = os.pipe()
    with sole_writer(str(tmp_path)):
        child = os.fork()
        if child == 0:  # the worker, still alive after the run
            os.write(ready_w, b"1")  # running: the fork's hooks have run
            time.sleep(30)
            os._exit(0)
        os.read(ready_r, 1)
    try:
        with sole_writer(str(tmp_path)):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_nested_hold_of_the_same_folder_is_the_same_hold(tmp_path):
    """The sweep job holds its folder (cli/app.py) and run_experiment holds it again: no conflict with itself."""
    with sole_writer(str(tmp_path)):
        with sole_writer(str(tmp_path / ".")):
            pass
        with pytest.raises(BlockingIOError):  # still held after the inner block: another process is kept out
            with held_by_another(str(tmp_path)):
                pass


@pytest.mark.slow
def test_a_requeued_sweep_job_leaves_a_folder_another_process_writes_untouched(tmp_path):
    """The job holds its folder before it decides anything: were the run still writing there, a requeue would have
    moved its files aside and recorded it failed. It is refused instead, and nothing in the folder changes."""
    from tests.test_cli_edges import FAST
    from tests.test_sweep_jobs import run_sweep
    from tests.test_tampered_checkpoint import files

    args = [*FAST, "train.checkpoint_every=2", "seed=1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "hydra.sweep.subdir=job"]
    assert run_sweep(tmp_path, args).returncode == 0
    job = tmp_path / "sweep" / "job"
    os.remove(job / "summary.json")  # as if still running: a checkpoint, no summary yet
    before = files(str(job))
    with held_by_another(str(job)):
        again = run_sweep(tmp_path, args)
    assert again.returncode == 1 and "being written by another gradexp process" in again.stderr, again.stderr
    assert files(str(job)) == before


def test_a_new_run_into_a_folder_another_run_is_starting_in_writes_nothing_there(tmp_path, capsys):
    """Runs started together into one new folder: the folder is held before Hydra writes .hydra/, so the one that
    does not get it is refused in one line and the other's record is the only one (it was the refused run's, written
    last, before)."""
    from gradexp.cli import main as cli

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with held_by_another(str(run_dir)):  # the other run, which made the folder and holds it
        assert cli.main(["run", "train.steps=2", f"hydra.run.dir={run_dir}"]) == 2
    assert os.listdir(run_dir) == [] and "is being written by another gradexp process" in capsys.readouterr().err
    assert cli.main(["run", "train.steps=2", "log.every=1", f"hydra.run.dir={run_dir}"]) == 0  # free again: it runs
    assert (run_dir / ".hydra").is_dir() and (run_dir / "summary.json").exists()


def test_a_refused_run_lets_go_of_the_folder_it_held(tmp_path):
    """FolderGuard holds the folder from before Hydra writes; a run refused later (a bad value) still lets go of it when
    `gradexp run` returns, so another process may use the folder while this one lives on (an in-process caller)."""
    from gradexp.cli import folders, main as cli

    run_dir = tmp_path / "run"
    assert cli.main(["run", "train.batch_size=100000", f"hydra.run.dir={run_dir}"]) == 2
    assert folders._held == []
    run_dir.mkdir()
    with held_by_another(str(run_dir)):  # another process takes it at once: nothing of ours is left holding it
        pass
