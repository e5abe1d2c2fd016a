"""A run folder is the user's: refusals undo only what this invocation created; resume re-applies only gradexp's
own keys and refuses another model's checkpoint before writing; a failed write ends the run 'failed' with the last
checkpoint intact; a resumed run's images, histograms and scalars equal an uninterrupted run's (issue 11)."""
from __future__ import annotations

import errno
import glob
import json
import os
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from omegaconf import OmegaConf

from gradexp.training import checkpoint

from gradexp.cli import folders
from gradexp.training.run import WriteFailed
from gradexp.cli.argv import hydra_args
from gradexp.training.resume import ResumeError
from tests.test_resume import LONG, StopAfter, resume, scalars, start, summary


def images_and_histograms(run_dir: str) -> tuple[dict, dict]:
    acc = EventAccumulator(run_dir, size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    images = {t: [(e.step, e.encoded_image_string) for e in acc.Images(t)] for t in tags["images"]}
    histos = {t: [(e.step, e.histogram_value) for e in acc.Histograms(t)] for t in tags["histograms"]}
    return images, histos


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["log.histograms_every=2"], ["model=gru", "data.seq_len=5", "log.bptt_every=4"]])
def test_resumed_images_histograms_and_scalars_equal_an_uninterrupted_run(tmp_path, quiet_console, extra):
    overrides = [*LONG, *extra]
    start(str(tmp_path / "ref"), overrides, quiet_console)
    start(str(tmp_path / "run"), overrides, quiet_console, stop=StopAfter(7))
    resume(str(tmp_path / "run"), overrides, quiet_console)
    ref_images, ref_histos = images_and_histograms(str(tmp_path / "ref"))
    images, histos = images_and_histograms(str(tmp_path / "run"))
    assert "grad_flow/heatmap" in ref_images and (len(ref_histos) > 0 or "bptt_grad_norm" in str(list(ref_images)))
    assert images == ref_images  # step-0 column present, the first session's images purged
    assert histos == ref_histos
    assert scalars(str(tmp_path / "run")) == scalars(str(tmp_path / "ref"))
    assert summary(str(tmp_path / "run")) == summary(str(tmp_path / "ref"))


@pytest.mark.parametrize("tampered,reason", [
    ("+hydra.callbacks.x._target_=builtins.open", "Hydra's own"),
    ("model._target_=shutil.copyfile", "only the command line may name"),
    ("seed=${oc.env:HOME}", "interpolations"),
    ("+foo=1", "not a key"),
    ("model=../../etc/passwd", "plain option name"),
])
def test_resume_refuses_a_tampered_run_folder(tmp_path, tampered, reason):
    hydra_dir = tmp_path / "run" / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text(f"- train.steps=3\n- '{tampered}'\n")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ResumeError, match=reason) as err:
        hydra_args([f"resume={tmp_path / 'run'}"])
    assert "\n" not in str(err.value)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def saved_run(tmp_path):
    hydra_dir = tmp_path / "run" / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text("- train.steps=3\n")
    return str(tmp_path / "run")


def test_resume_keeps_hydras_options_in_front_of_the_overrides(tmp_path):
    """`gradexp run --config-dir X resume=R`: Hydra's parser takes options only before the overrides."""
    run = saved_run(tmp_path)
    tail = [f"resume='{run}'", f"hydra.run.dir='{run}'", "hydra.output_subdir=null"]
    assert hydra_args(["--config-dir", "/cfg", f"resume={run}"]) == ["--config-dir", "/cfg", "train.steps=3", *tail]
    assert hydra_args([f"resume={run}", "-cd", "/cfg", "--info", "seed=1"]) == [
        "-cd", "/cfg", "train.steps=3", "seed=1", *tail, "--info"]  # a bare --info last: it would take an override
    assert hydra_args(["--info", "searchpath", "seed=1"]) == ["--info", "searchpath", "seed=1"]
    assert hydra_args(["--config-dir=/cfg", f"resume={run}"])[0] == "--config-dir=/cfg"
    assert hydra_args(["train.steps=5", "--config-dir", "/cfg", "-m", "seed=1,2"]) == [  # not resuming: only reordered
        "--config-dir", "/cfg", "-m", "train.steps=5", "seed=1,2"]


@pytest.mark.parametrize("recorded, needs", [
    ([("/my cfg", "file", "command-line")], "--config-dir '/my cfg'"),
    ([("/p", "file", "main")], "--config-path /p"),
])
def test_a_run_composed_with_a_config_dir_resumes_only_with_one_and_is_told_the_command(tmp_path, recorded, needs):
    """Without it Hydra said "Could not find 'model/wide'" and no more. The option is never taken from the folder (a
    config source can run code through Hydra's callbacks): the command is named instead."""
    run = saved_run(tmp_path)
    sources = [{"path": "hydra.conf", "schema": "pkg", "provider": "hydra"}, *(
        {"path": path, "schema": schema, "provider": provider} for path, schema, provider in recorded)]
    (tmp_path / "run" / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml(
        {"hydra": {"job": {"config_name": "config"}, "runtime": {"config_sources": sources}}}))
    with pytest.raises(ResumeError) as err:
        hydra_args([f"resume={run}"])
    flag = needs.split()[0]
    assert str(err.value) == (f"resume={run}: the run was composed with {flag}; "
                              f"resume it with: gradexp run {needs} resume={run}")
    (tmp_path / "run" / "summary.json").write_text('{"status": "completed"}')  # finished: that is said first
    with pytest.raises(ResumeError, match="that run is completed; there is nothing to resume"):
        hydra_args([f"resume={run}"])
    short = {"--config-dir": "-cd", "--config-path": "-cp"}[flag]
    for given in ([flag, "/elsewhere"], [f"{flag}=/elsewhere"], [short, "/elsewhere"]):  # any dir: the user's choice
        assert hydra_args([*given, f"resume={run}"])[:len(given)] == given


@pytest.mark.parametrize("path, name", [(123, "config"), (["a"], "config"), ({"a": 1}, "config"), ("/c", 7),
                                        ("/c", ["a"]), (None, "config")])
def test_a_tampered_hydra_record_never_gives_a_traceback(tmp_path, path, name):
    """Found by an adversarial test: a number where Hydra writes a path reached shlex.join: a 31-line TypeError."""
    run = saved_run(tmp_path)
    sources = [{"path": path, "schema": "file", "provider": "command-line"}]
    (tmp_path / "run" / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml(
        {"hydra": {"job": {"config_name": name}, "runtime": {"config_sources": sources}}}))
    for given in ([], ["--config-dir", "/elsewhere"]):
        assert hydra_args([*given, f"resume={run}"])[-3:] == [f"resume='{run}'", f"hydra.run.dir='{run}'",
                                                              "hydra.output_subdir=null"]


def test_the_resume_hint_prints_a_recorded_path_as_what_it_is(tmp_path):
    """An escape code or a newline from the folder's record reached the terminal as such (an adversarial test)."""
    import yaml

    run = saved_run(tmp_path)
    sources = [{"path": "/c\x1b[2J\nx", "schema": "file", "provider": "command-line"}]
    (tmp_path / "run" / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"job": {"config_name": "config"}, "runtime": {"config_sources": sources}}}))
    with pytest.raises(ResumeError) as err:
        hydra_args([f"resume={run}"])
    message = str(err.value)
    assert "\x1b" not in message and "\n" not in message and "/c\\x1b[2J\\nx" in message


@pytest.mark.parametrize("spelling", ["+resume", "++resume"])
def test_every_spelling_of_resume_resumes_and_never_rewrites_the_runs_record(tmp_path, spelling):
    run = saved_run(tmp_path)
    assert hydra_args([f"{spelling}={run}"])[-3:] == [f"resume='{run}'", f"hydra.run.dir='{run}'", "hydra.output_subdir=null"]
    for run_dir in (f"hydra.run.dir={run}", f"++hydra.run.dir={run}"):
        with pytest.raises(ResumeError, match="drop -m/--multirun and hydra"):
            hydra_args([f"{spelling}={run}", run_dir])


def test_resume_with_another_models_checkpoint_leaves_the_run_untouched(tmp_path, quiet_console):
    run_dir, other = str(tmp_path / "run"), str(tmp_path / "other")
    start(run_dir, LONG, quiet_console, stop=StopAfter(6))
    start(other, [*LONG, "model.width=9"], quiet_console, stop=StopAfter(6))
    os.replace(os.path.join(other, checkpoint.CHECKPOINT_NAME), os.path.join(run_dir, checkpoint.CHECKPOINT_NAME))
    before = {p: open(p, "rb").read() for p in glob.glob(os.path.join(run_dir, "**"), recursive=True)
              if os.path.isfile(p)}
    with pytest.raises(ResumeError, match="written by a run of another config"):
        resume(run_dir, LONG, quiet_console)
    after = {p: open(p, "rb").read() for p in glob.glob(os.path.join(run_dir, "**"), recursive=True)
             if os.path.isfile(p)}
    assert after == before  # no new event file, summary.json still 'interrupted'


def test_a_run_failing_mid_training_reports_its_real_steps(tmp_path, quiet_console, monkeypatch):
    import gradexp.training.loop as train_module

    calls = {"n": 0}
    real = train_module.evaluate

    def failing_evaluate(run):
        calls["n"] += 1
        if calls["n"] == 2:  # eval_every=3: the second evaluation follows update 6
            raise RuntimeError("planted")
        return real(run)

    monkeypatch.setattr(train_module, "evaluate", failing_evaluate)
    with pytest.raises(RuntimeError, match="planted"):
        start(str(tmp_path / "run"), LONG, quiet_console)
    result = summary(str(tmp_path / "run"))
    assert result["status"] == "failed" and result["steps"] == 6 and "planted" in result["error"]


def test_disk_full_ends_failed_keeps_the_last_checkpoint_and_no_temp_files(tmp_path, quiet_console, monkeypatch):
    run_dir = str(tmp_path / "run")
    real_save, saves = torch.save, {"n": 0}

    def save_until_full(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:  # the checkpoint at step 10 finds the disk full, half-way through
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f.name)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    with pytest.raises(WriteFailed) as err:
        start(run_dir, LONG, quiet_console)
    assert str(err.value) == f"cannot write {run_dir}/checkpoint.pt: No space left on device"
    assert checkpoint.load(os.path.join(run_dir, checkpoint.CHECKPOINT_NAME))["step"] == 5
    assert not glob.glob(os.path.join(run_dir, "*tmp*")) and not glob.glob(os.path.join(run_dir, ".*tmp*"))
    result = summary(run_dir)
    assert result["status"] == "failed" and result["steps"] == 10 and "No space left" in result["error"]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)  # space freed
    assert resume(run_dir, LONG, quiet_console).status == "completed"


def test_a_killed_run_without_checkpoint_starts_over_with_its_files_moved_aside(tmp_path, quiet_console):
    run_dir = str(tmp_path / "run")
    start(run_dir, [*LONG, "train.checkpoint_every=0"], quiet_console, stop=StopAfter(3))
    os.remove(os.path.join(run_dir, checkpoint.CHECKPOINT_NAME))  # as if killed before its first checkpoint
    old_summary = open(os.path.join(run_dir, "summary.json")).read()
    assert resume(run_dir, [*LONG, "train.checkpoint_every=0"], quiet_console).status == "completed"
    assert open(os.path.join(run_dir, "attempt-1", "summary.json")).read() == old_summary
    assert glob.glob(os.path.join(run_dir, "attempt-1", "events.out.tfevents.*"))
    assert json.load(open(os.path.join(run_dir, "summary.json")))["steps"] == 13


def test_undo_removes_only_what_this_invocation_created(tmp_path):
    mine = tmp_path / "keep" / "mydir"
    mine.mkdir(parents=True)
    (tmp_path / "keep" / "notes.txt").write_text("user's")
    folders.created.remember(str(mine))
    (mine / ".hydra").mkdir()  # what Hydra writes before gradexp refuses a bad value
    (mine / ".hydra" / "config.yaml").write_text("x")
    folders.undo()
    assert mine.is_dir() and not list(mine.iterdir()) and (tmp_path / "keep" / "notes.txt").exists()

    fresh = tmp_path / "new" / "date" / "time"
    folders.created.remember(str(fresh))
    fresh.mkdir(parents=True)
    (fresh / ".hydra").mkdir()
    folders.undo()
    assert not (tmp_path / "new").exists() and (tmp_path / "keep").is_dir()


def test_undo_keeps_a_folder_that_received_anything_else(tmp_path):
    fresh = tmp_path / "run"
    folders.created.remember(str(fresh))
    fresh.mkdir()
    (fresh / "summary.json").write_text("{}")
    folders.undo()
    assert (fresh / "summary.json").exists()


def test_resume_keeps_a_folder_name_with_quotes_and_spaces_literal(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_dir = tmp_path / "it's a run" / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text("- train.steps=3\n")
    run = str(tmp_path / "it's a run")
    args = hydra_args([f"resume={run}"])
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(args)}
    assert parsed["resume"] == run and parsed["hydra.run.dir"] == run


@pytest.mark.parametrize("planted", ["fifo", "aliases"])
def test_a_sweep_folder_whose_multirun_yaml_is_planted_is_another_sweep_at_once(tmp_path, planted):
    """Found by an adversarial test: a FIFO named multirun.yaml blocked the sweep's start past SIGTERM, and a file of
    nested YAML aliases grew past 500 MB; both are read with the run folder's limits, and are not this sweep."""
    path = tmp_path / "multirun.yaml"
    if planted == "fifo":
        os.mkfifo(path)
    else:
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
        path.write_text("\n".join(lines) + "\n")
    assert folders._same_sweep(str(tmp_path), config=None) is False


@pytest.mark.parametrize("subdir, output_subdir, refused", [
    ("${hydra.job.num}_${hydra.job.override_dirname}", ".hydra", None),  # gradexp's own
    ("${hydra.job.id}", None, None), ("lr_${optimizer.lr}", "hydra_cfg/inner", None), ("${hydra:job.num}", ".hydra", None),
    ("fixed", ".hydra", "hydra.sweep.subdir: 'fixed' (allowed: a folder per job"),
    ("../x_${hydra.job.num}", ".hydra", "hydra.sweep.subdir: '../x_${hydra.job.num}' (allowed: a folder inside"),
    ("/abs/${hydra.job.num}", ".hydra", "hydra.sweep.subdir: '/abs/${hydra.job.num}' (allowed: a folder inside"),
    ("${hydra.job.num}", "../out", "hydra.output_subdir: '../out' (allowed: a folder inside the run folder"),
    ("${hydra.job.num}", "/etc", "hydra.output_subdir: '/etc'"), ("${hydra.job.num}", ".", "hydra.output_subdir: '.'"),
])
def test_hydras_subfolders_that_may_differ_per_job_are_taken_and_others_refused(subdir, output_subdir, refused):
    """A review found sensible subdirs refused (lr_${optimizer.lr}, ${hydra:job.num}) by a list of known names: any
    interpolation may differ per job; a constant, absolute or `..` one is refused (tests/test_user_owns.py runs it)."""
    from omegaconf import OmegaConf

    config = OmegaConf.create({"hydra": {"output_subdir": output_subdir, "sweep": {"subdir": subdir}}})
    if refused is None:
        folders.check_subfolders(config, sweep=True)
    elif subdir == "fixed":  # a sweep of one job may name its folder (tests/test_sole_writer.py does)
        one = OmegaConf.create({"hydra": {"output_subdir": output_subdir, "sweep": {"subdir": subdir},
                                          "sweeper": {"_target_": "hydra._internal.core_plugins.BasicSweeper",
                                                      "params": None}, "overrides": {"task": ["seed=1"]}}})
        folders.check_subfolders(one, sweep=True)
        one.hydra.overrides.task = ["seed=1,2"]
        with pytest.raises(folders.Refused, match=re.escape(f"invalid value for {refused}")):
            folders.check_subfolders(one, sweep=True)
    else:
        with pytest.raises(folders.Refused, match=re.escape(f"invalid value for {refused}")):
            folders.check_subfolders(config, sweep=True)


def _basic_sweep(subdir: str, task: list[str]):
    from omegaconf import OmegaConf

    return OmegaConf.create({"hydra": {"output_subdir": ".hydra", "sweep": {"subdir": subdir},
                                       "sweeper": {"_target_": "hydra._internal.core_plugins.BasicSweeper",
                                                   "params": None}, "overrides": {"task": task}}})


@pytest.mark.parametrize("subdir, task, taken", [
    ("${train.steps}", ["seed=1,2", "train.steps=20"], False),  # found by an adversarial test: one folder, two jobs
    ("${seed}", ["seed=1,2", "activation=relu,tanh"], False),    # two jobs for each seed
    ("${seed}", ["seed=1,2", "activation=relu"], True),
    ("s${seed}_${activation}", ["seed=1,2", "activation=relu,tanh"], True),
    ("lr_${optimizer.lr}", ["+optimizer.lr=0.1,0.2"], True),
    ("${hydra:job.override_dirname}", ["seed=1,2"], True), ("${hydra.job.num}", ["seed=1,2", "lr=1,2"], True),
    ("${hydra:runtime.choices.activation}", ["activation=relu,tanh"], True),  # a swept group, named by its choice
    ("${hydra:runtime.choices.activation}", ["activation=relu,tanh", "seed=1,2"], False),
])
def test_a_sweep_subdir_must_differ_for_every_job_of_a_basic_sweep(subdir, task, taken):
    """An interpolation alone is not enough under the basic sweeper, which says which keys vary: subdir=${train.steps}
    had the second job rewrite the first's .hydra/ record, find its summary and skip itself, and the sweep exit 0."""
    config = _basic_sweep(subdir, task)
    if taken:
        folders.check_subfolders(config, sweep=True)
    else:
        with pytest.raises(folders.Refused, match=re.escape(f"invalid value for hydra.sweep.subdir: {subdir!r}")):
            folders.check_subfolders(config, sweep=True)
