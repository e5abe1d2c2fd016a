"""`gradexp run` as a hostile user meets it (subprocesses, marked slow): a refusal never removes or rewrites a folder
it did not create, an existing run is refused before anything is written, a full disk ends the run 'failed' in one
line, and a signal at any moment of start-up leaves a consistent summary.json (issue 11)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from gradexp.training import checkpoint
from tests.test_cli_edges import FAST, gradexp, summaries

pytestmark = pytest.mark.slow


def one_line_refusal(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def snapshot(root) -> dict[str, bytes]:
    out = {}
    for folder, _, files in os.walk(str(root)):
        out[folder] = b""
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.join(folder, name)] = f.read()
    return out


def test_a_bad_value_keeps_the_users_existing_folders(tmp_path):
    (tmp_path / "keep" / "mydir").mkdir(parents=True)
    one_line_refusal(gradexp(tmp_path, "model.depth=0", "hydra.run.dir=keep/mydir"))
    assert (tmp_path / "keep" / "mydir").is_dir() and not list((tmp_path / "keep" / "mydir").iterdir())


def test_an_interrupted_or_killed_run_is_refused_before_hydra_rewrites_it(tmp_path):
    assert gradexp(tmp_path, *FAST, "train.checkpoint_every=2", "hydra.run.dir=run").returncode == 0
    os.remove(tmp_path / "run" / "summary.json")  # as if killed: no summary yet
    before = snapshot(tmp_path / "run")
    line = one_line_refusal(gradexp(tmp_path, *FAST, "model.width=16", "hydra.run.dir=run"))
    assert "resume=" in line
    assert snapshot(tmp_path / "run") == before
    assert gradexp(tmp_path, "resume=run").returncode == 0  # still resumable


def test_resuming_a_tampered_folder_writes_nothing(tmp_path):
    assert gradexp(tmp_path, *FAST, "train.steps=2", "hydra.run.dir=run").returncode == 0
    os.remove(tmp_path / "run" / "summary.json")
    with open(tmp_path / "run" / ".hydra" / "overrides.yaml", "a") as f:
        f.write("- +hydra.callbacks.x._target_=builtins.open\n- +hydra.callbacks.x.file=pwned\n"
                "- +hydra.callbacks.x.mode=w\n")
    line = one_line_refusal(gradexp(tmp_path, "resume=run"))
    assert "hydra.callbacks" in line and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("target", ["afile", "afile/under"])
def test_an_unusable_run_dir_is_one_line(tmp_path, target):
    (tmp_path / "afile").write_text("the user's")
    line = one_line_refusal(gradexp(tmp_path, *FAST, f"hydra.run.dir={target}"))
    assert "hydra.run.dir" in line and (tmp_path / "afile").read_text() == "the user's"


@pytest.mark.parametrize("key, multirun", [("hydra.run.dir", False), ("hydra.sweep.dir", True)])
def test_an_escaped_interpolation_in_the_folder_is_refused(tmp_path, key, multirun):
    """'dol\\${oc.env:HOME}': gradexp saw the folder 'dol${oc.env:HOME}', Hydra resolved it once more and wrote into
    dol/root; refused in one line, nothing made."""
    sweep = ["-m", "model.depth=1,2"] if multirun else []
    line = one_line_refusal(gradexp(tmp_path, *sweep, *FAST, f"{key}={tmp_path}/dol\\${{oc.env:HOME}}"))
    assert line.startswith(f"gradexp: invalid value for {key}: ") and "without '${'" in line
    assert not [p for p in os.listdir(tmp_path) if p.startswith("dol")]


def test_hydras_own_subfolders_stay_inside_the_run_and_one_per_job(tmp_path):
    """Found by an adversarial test: hydra.sweep.subdir or hydra.output_subdir outside the run folder rewrote another
    run's .hydra/ record before any job ran (a finished run was then 'skipped', an interrupted one no longer resumed),
    and a sweep.subdir the same for every job had job 2 skip itself on job 1's summary. Refused in one line, before
    Hydra writes anything."""
    assert gradexp(tmp_path, *FAST, "train.steps=2", "hydra.run.dir=foreign").returncode == 0
    before = snapshot(tmp_path / "foreign")
    sweep = ["-m", "seed=1,2", *FAST, "hydra.sweep.dir=sw"]
    for args, key in [((*sweep, f"hydra.sweep.subdir={tmp_path}/foreign"), "hydra.sweep.subdir"),
                      ((*sweep, "hydra.sweep.subdir=../foreign"), "hydra.sweep.subdir"),
                      ((*sweep, "hydra.sweep.subdir=fixed"), "hydra.sweep.subdir"),
                      ((*FAST, "hydra.run.dir=new", f"hydra.output_subdir={tmp_path}/foreign/.hydra"),
                       "hydra.output_subdir"),
                      ((*FAST, "model.depth=0", "hydra.run.dir=new", "hydra.output_subdir=../outside"),
                       "hydra.output_subdir")]:
        line = one_line_refusal(gradexp(tmp_path, *args))
        assert line.startswith(f"gradexp: invalid value for {key}: ") and "allowed: a folder" in line, line
    assert snapshot(tmp_path / "foreign") == before
    assert sorted(os.listdir(tmp_path)) == ["foreign"]  # no sw/, new/ or outside/


def test_a_run_dir_made_only_part_of_the_way_leaves_no_folder_behind(tmp_path):
    """30 levels of 200-character names: the system makes the first ~20 and then refuses ('File name too long'); the
    refusal removes the empty folders this invocation made, as it does for any refused run."""
    deep = tmp_path / "deep"
    target = os.path.join(str(deep), *["a" * 200] * 30)
    line = one_line_refusal(gradexp(tmp_path, *FAST, f"hydra.run.dir={target}"))
    assert "hydra.run.dir" in line and not deep.exists() and os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no folder can be created")
@pytest.mark.parametrize("key, multirun", [("hydra.run.dir", False), ("hydra.sweep.dir", True)])
def test_a_folder_the_system_will_not_create_is_refused_naming_the_key(tmp_path, key, multirun):
    """os.access says yes to root everywhere; the mkdir itself says no. One line naming the key, not a bare OSError."""
    sweep = ["-m", "model.depth=1,2"] if multirun else []
    args = [*sweep, *FAST, f"{key}=/proc/gradexp-nope/run"]
    line = one_line_refusal(gradexp(tmp_path, *args))
    assert line.startswith(f"gradexp: invalid value for {key}: '/proc/gradexp-nope/run' (cannot create it: ")


@contextlib.contextmanager
def tmpfs(path, options: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; ENOSPC is injected in tests/test_run_folder.py instead")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode:
        pytest.skip("this machine refuses to mount a tmpfs (container without CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def test_a_read_only_output_folder_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m"):
        line = one_line_refusal(gradexp(tmp_path, *FAST, "hydra.run.dir=ro/run"))
        assert "not writable" in line


def test_a_full_disk_ends_failed_keeps_the_checkpoint_and_resumes_once_freed(tmp_path):
    args = ["train.steps=400", "log.every=1", "log.histograms_every=1", "train.checkpoint_every=20",
            "model.width=16", "device=cpu", "hydra.run.dir=disk/run"]
    with tmpfs(tmp_path / "disk", "size=600k"):
        result = gradexp(tmp_path, *args)
        lines = [line for line in result.stderr.splitlines() if line.startswith("gradexp:")]
        assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "No space left on device" in lines[0] and str(tmp_path / "disk" / "run") in lines[0]
        run = tmp_path / "disk" / "run"
        assert checkpoint.load(str(run / checkpoint.CHECKPOINT_NAME))["step"] > 0
        assert not [p for p in run.iterdir() if "tmp" in p.name]
        subprocess.run(["mount", "-o", "remount,size=64m", str(tmp_path / "disk")], check=True)  # space freed
        resumed = gradexp(tmp_path, "resume=disk/run")
        assert resumed.returncode == 0, resumed.stderr
        assert summaries(tmp_path / "disk")["run"]["status"] == "completed"


def test_a_refused_sweep_leaves_nothing_behind(tmp_path):
    (tmp_path / "mine").mkdir()
    result = gradexp(tmp_path, "-m", *FAST, "model.depth=abc,3")
    one_line_refusal(result)
    assert not (tmp_path / "multirun").exists()
    one_line_refusal(gradexp(tmp_path, "-m", *FAST, "model.depth=abc,3", "hydra.sweep.dir=mine"))
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())
    assert "model.depth=range(4,2) gives no value" in one_line_refusal(
        gradexp(tmp_path, "-m", *FAST, "model.depth=range(4,2)", "hydra.sweep.dir=empty"))  # was: exit 0, 0 jobs
    assert not (tmp_path / "empty").exists()
    # found by an adversarial test: an empty glob ran 0 jobs, exit 0; a range of 10^11 values filled 24 GB
    assert "activation=glob(zz*) gives no value" in one_line_refusal(
        gradexp(tmp_path, "-m", *FAST, "activation=glob(zz*)", "hydra.sweep.dir=empty"))
    assert "asks for more than 100,000 jobs" in one_line_refusal(
        gradexp(tmp_path, "-m", *FAST, "model.depth=range(1,99999999999)", "hydra.sweep.dir=empty"))
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("delay", [0.5, 1.5, 2.5, 3.5])
def test_a_signal_during_start_up_leaves_a_consistent_summary(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-m", "gradexp", "run", *FAST, "train.steps=100000",
                             "hydra.run.dir=run"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    if (tmp_path / "run").exists():
        assert summaries(tmp_path)["run"]["status"] == "interrupted", err
        assert proc.returncode == 143


def test_a_sweep_dir_holding_another_sweep_is_refused_untouched(tmp_path):
    assert gradexp(tmp_path, "-m", *FAST, "train.steps=2", "optimizer.lr=0.01", "hydra.sweep.dir=sw").returncode == 0
    before = snapshot(tmp_path / "sw")
    line = one_line_refusal(gradexp(tmp_path, "-m", *FAST, "train.steps=2", "optimizer.lr=0.1",
                                    "hydra.sweep.dir=sw"))
    assert "another run or sweep" in line and snapshot(tmp_path / "sw") == before
