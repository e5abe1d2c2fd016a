"""One process writes into a run folder at a time (training/exclusive.py): a second run into a folder being written,
such as two resumes of one interrupted run started together, is refused in one line before it touches anything."""
from __future__ import annotations

import os

import pytest

from gradexp.training.exclusive import FolderInUse, sole_writer
from tests.test_resume import LONG, StopAfter, resume, start


def test_a_folder_being_written_is_refused_and_free_again_afterwards(tmp_path):
    with sole_writer(str(tmp_path)):
        with pytest.raises(FolderInUse) as err:
            with sole_writer(str(tmp_path)):  # a second open of the folder: another writer, as far as flock goes
                pass
        assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    with sole_writer(str(tmp_path)):  # released when the first run's block ended
        pass
    with sole_writer(str(tmp_path / "not yet made")):  # nothing to keep out of a folder that does not exist
        pass
    assert os.listdir(tmp_path) == []  # no lock file: nothing added to the folder


def test_a_resume_while_the_run_is_still_writing_is_refused_and_changes_nothing(tmp_path, quiet_console):
    run_dir = str(tmp_path / "run")
    start(run_dir, LONG, quiet_console, stop=StopAfter(6))
    before = {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir)
              if os.path.isfile(os.path.join(run_dir, name))}
    with sole_writer(run_dir):  # the first resume, still running
        with pytest.raises(FolderInUse):
            resume(run_dir, LONG, quiet_console)
    after = {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir)
             if os.path.isfile(os.path.join(run_dir, name))}
    assert after == before
