"""A checkpoint is untrusted input: a tampered one is refused in one line when the run resumes, before anything in
the folder changes (a forged summary `path` would have sent summary.json over any file; a forged data position
looped forever; a forged step ended the run 'completed' at once)."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from gradexp.training import checkpoint
from gradexp.training.resume import ResumeError
from tests.test_resume import LONG, StopAfter, resume, start


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> str:
    """One run stopped after 6 of 13 steps, with its checkpoint: each test tampers with a copy of it."""
    from rich.console import Console

    run_dir = str(tmp_path_factory.mktemp("stopped") / "run")
    start(run_dir, LONG, Console(quiet=True), stop=StopAfter(6))
    return run_dir


def copy_of(stopped_run: str, tmp_path) -> str:
    run_dir = str(tmp_path / "run")
    shutil.copytree(stopped_run, run_dir)
    return run_dir


def files(folder: str) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.join(root, name)] = f.read()
    return out


def tamper(path: str, change) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, path)


TAMPERINGS = {
    "summary path": (lambda s: s["summary"].update(path="/tmp/victim.json"), "unknown field 'path'"),
    "summary first a list": (lambda s: s["summary"].update(first=[1.0]), "bad 'first'"),
    "summary not a mapping": (lambda s: s.update(summary="abc"), "not a mapping"),
    "sinks not a mapping": (lambda s: s.update(sinks=[1]), "not a mapping"),
    "an unknown sink": (lambda s: s["sinks"].update(other={}), "unknown sink"),
    "views history a string": (lambda s: s["sinks"].update(views={"history": "x"}), "sink states"),
    "heatmap rows of strings": (lambda s: s["sinks"].update(tensorboard={"t": ([0], [["x"]])}), "TensorBoard heatmap"),
    "views rows of strings": (lambda s: s["sinks"].update(views={"history": {0: {"a": "x"}}}), "views"),
    "theory written not a bool": (lambda s: s["sinks"].update(theory={"written": "yes"}), "theory sink"),
    "heatmap rows of two lengths": (lambda s: s["sinks"].update(tensorboard={"t": ([0, 1], [[1.0, 2.0], [1.0]])}),
                                    "TensorBoard heatmap"),
    "views step past int64": (lambda s: s["sinks"].update(views={"history": {10 ** 30: {"a": 1.0}}}), "views"),
    "views step negative": (lambda s: s["sinks"].update(views={"history": {-7: {}}}), "views"),
    "skipped steps a list": (lambda s: s.update(precision={"scaler": None, "skipped": [1, 2]}), "skipped-step count"),
    "skipped steps NaN": (lambda s: s.update(precision={"scaler": None, "skipped": float("nan")}), "skipped-step"),
    "step past the end": (lambda s: s.update(step=10 ** 9), "step 1000000000"),
    "step negative": (lambda s: s.update(step=-5), "step -5"),
    "data position past the end": (lambda s: s["batches"].update(position=10 ** 12), "position 1000000000000"),
}


@pytest.mark.parametrize("name", TAMPERINGS)
def test_a_tampered_checkpoint_is_refused_and_the_folder_is_unchanged(tmp_path, quiet_console, name, stopped_run):
    change, reason = TAMPERINGS[name]
    run_dir = copy_of(stopped_run, tmp_path)
    tamper(os.path.join(run_dir, checkpoint.CHECKPOINT_NAME), change)
    before = files(str(tmp_path))
    with pytest.raises(ResumeError, match=reason) as err:
        resume(run_dir, LONG, quiet_console)
    assert "\n" not in str(err.value)
    assert files(str(tmp_path)) == before and not os.path.exists("/tmp/victim.json")


@pytest.mark.parametrize("planted", ["summary.json", ".hydra/config.yaml", "attempt-1"])
def test_a_damaged_run_folder_resumes_or_is_refused_in_one_line(tmp_path, quiet_console, planted, stopped_run):
    """A summary.json holding a list is the run's own file, rewritten as it resumes from its checkpoint; a config.yaml
    that is not YAML is refused; beside a dangling link where attempt-1/ would go, a run killed before its first
    checkpoint starts over with its old files in attempt-2/."""
    run_dir = copy_of(stopped_run, tmp_path)
    target = os.path.join(run_dir, planted)
    if planted == "attempt-1":
        os.remove(os.path.join(run_dir, checkpoint.CHECKPOINT_NAME))
        os.symlink(str(tmp_path / "nowhere"), target)
        resume(run_dir, LONG, quiet_console)  # starts over, the old files in attempt-2/
        assert os.path.isdir(os.path.join(run_dir, "attempt-2")) and os.path.islink(target)
        return
    with open(target, "w") as f:
        f.write("[]" if planted == "summary.json" else "{{{ bad")
    if planted == "summary.json":
        assert resume(run_dir, LONG, quiet_console).status == "completed"
        return
    before = files(str(tmp_path))
    with pytest.raises(ResumeError) as err:
        resume(run_dir, LONG, quiet_console)
    assert "\n" not in str(err.value) and files(str(tmp_path)) == before
