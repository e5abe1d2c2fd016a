"""The command line at the edges, as a user meets it (subprocesses, marked slow): bad input is one line
and exit 2 with nothing left behind; Ctrl-C then resume gives one clean TensorBoard curve; a sweep with a
failing and a diverging job keeps every other result."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.test_resume import scalars

pytestmark = pytest.mark.slow
FAST = ["train.steps=8", "log.every=2", "train.eval_every=4", "model.width=8", "model.depth=2", "device=cpu"]


def gradexp(cwd, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradexp", "run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, **kwargs)


def summaries(root) -> dict[str, dict]:
    out = {}
    for path in glob.glob(os.path.join(str(root), "**", "summary.json"), recursive=True):
        with open(path) as f:
            out[os.path.basename(os.path.dirname(path))] = json.load(f)
    return out


@pytest.mark.parametrize("args", [["optimizer.lr=0"], ["model.depth=abc"], ["model=resnet50"], ["model.dpth=3"],
                                  ["model.depth=["], ["model=rnn", "model.residual=true"], ["resume=nowhere"],
                                  ["hydra.run.dir=${oc.env:GRADEXP_TEST_UNSET}"], ["--foo"], ["--cfg", "jobs"]])
def test_bad_input_is_one_line_exit_2_and_leaves_no_run(tmp_path, args):
    result = gradexp(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gradexp: ") and "Traceback" not in result.stderr
    assert not glob.glob(str(tmp_path / "outputs" / "*" / "*"))  # no run folder


def test_an_existing_run_folder_is_refused_not_overwritten(tmp_path):
    assert gradexp(tmp_path, *FAST, "hydra.run.dir=run").returncode == 0
    before = (tmp_path / "run" / "summary.json").read_text()
    again = gradexp(tmp_path, *FAST, "hydra.run.dir=run")
    assert again.returncode == 2 and "never overwrites" in again.stderr
    # a finished run is not offered resume=, which would be refused in turn (found by a new user)
    assert "finished run (completed)" in again.stderr and "resume=" not in again.stderr
    assert (tmp_path / "run" / "summary.json").read_text() == before


def interrupt(cwd, args, sig=signal.SIGINT, after: float = 0.0, env=None) -> subprocess.CompletedProcess:
    """Start `gradexp run ARGS`, wait for its first periodic checkpoint (+ `after` s), send `sig`."""
    proc = subprocess.Popen([sys.executable, "-m", "gradexp", "run", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    checkpoint = os.path.join(str(cwd), "run", "checkpoint.pt")
    start = os.path.getmtime(checkpoint) if os.path.exists(checkpoint) else 0.0
    while not os.path.exists(checkpoint) or os.path.getmtime(checkpoint) == start:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(after)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_then_resume_gives_one_clean_curve(tmp_path, sig, code):
    args = ["train.steps=100000", "log.every=5", "train.eval_every=50", "train.checkpoint_every=40", "device=cpu"]
    stopped = interrupt(tmp_path, [*args, "hydra.run.dir=run"], sig, after=0.5)
    assert stopped.returncode == code and "Traceback" not in stopped.stderr, stopped.stderr
    first = summaries(tmp_path)["run"]
    assert first["status"] == "interrupted"
    assert "resume with: gradexp run resume=run\n" in stopped.stderr  # the command run next, as printed

    refused = gradexp(tmp_path, "resume=run", "train.steps=50")
    assert refused.returncode == 2 and "train.steps=50" in refused.stderr  # a changed config is refused

    again = interrupt(tmp_path, ["resume=run", "train.steps=100000"], after=0.5)  # the run's own value: accepted
    assert again.returncode == 130, again.stderr
    final = summaries(tmp_path)["run"]
    assert final["status"] == "interrupted" and final["steps"] > first["steps"]
    logged = scalars(str(tmp_path / "run"))
    for tag, points in logged.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), tag  # strictly increasing: no duplicates, in order
    assert [step for step, _ in logged["loss/train"]] == list(range(0, final["steps"], 5))  # and no gap


def test_sweep_keeps_every_result_when_jobs_fail_or_diverge(tmp_path):
    # rnn.MLP passes validation (family "mlp") but cannot be instantiated: a planted bug
    result = gradexp(tmp_path, "-m", *FAST, "optimizer=sgd", "optimizer.lr=0.01,1e4,0",
                     "model._target_=gradexp.models.mlp.MLP,gradexp.models.rnn.MLP")
    assert result.returncode == 1  # the sweep reports its failures at the end
    statuses = {name: s["status"] for name, s in summaries(tmp_path).items()}
    assert len(statuses) == 6
    by_job = {name.split("_")[0]: status for name, status in statuses.items()}
    assert by_job == {"0": "completed", "1": "failed", "2": "diverged", "3": "failed", "4": "failed", "5": "failed"}
    failed = [s for s in summaries(tmp_path).values() if s["status"] == "failed"]
    assert all(s["error"] for s in failed)


def test_a_run_from_the_users_config_dir_resumes_with_the_command_it_prints(tmp_path):
    """--config-dir X holds model=deep_mlp: the printed `resume with:` line repeats X, and runs as printed."""
    import shlex

    (tmp_path / "my configs" / "model").mkdir(parents=True)
    (tmp_path / "my configs" / "model" / "deep_mlp.yaml").write_text("defaults:\n  - mlp\ndepth: 3\nwidth: 8\n")
    args = ["--config-dir", str(tmp_path / "my configs"), "model=deep_mlp", "train.steps=100000",
            "train.checkpoint_every=40", "device=cpu", "hydra.run.dir=run"]
    stopped = interrupt(tmp_path, args, after=0.3)
    assert stopped.returncode == 130, stopped.stderr
    first = summaries(tmp_path)["run"]["steps"]
    printed = next(line for line in stopped.stderr.splitlines() if line.startswith("resume with: gradexp run "))
    command = shlex.split(printed[len("resume with: gradexp run "):])
    assert command[:2] == ["--config-dir", str(tmp_path / "my configs")]
    again = interrupt(tmp_path, [*command, "train.steps=100000"], after=0.3)
    assert again.returncode == 130 and "Traceback" not in again.stderr, again.stderr
    assert summaries(tmp_path)["run"]["steps"] > first  # continued the same run, from its own config dir


NET = ("import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
       "        self.lin = torch.nn.Linear(64, 10)\n    def forward(self, x):\n        return self.lin(x.flatten(1))\n")


def test_a_users_model_resumes_with_the_command_it_prints(tmp_path):
    """model=custom: the printed `resume with:` line names the class again (resuming takes it only from the command
    line), and runs as printed; without it, one line says what to add."""
    import shlex

    (tmp_path / "mynets.py").write_text(NET)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    args = ["model=custom", "model._target_=mynets.Net", "train.steps=100000", "train.checkpoint_every=40",
            "device=cpu", "hydra.run.dir=run"]
    stopped = interrupt(tmp_path, args, after=0.3, env=env)
    assert stopped.returncode == 130, stopped.stderr
    printed = next(line for line in stopped.stderr.splitlines() if line.startswith("resume with: gradexp run "))
    command = shlex.split(printed[len("resume with: gradexp run "):])
    assert command == ["resume=run", "model._target_=mynets.Net"]
    bare = gradexp(tmp_path, "resume=run", env=env)
    assert bare.returncode == 2 and "add model._target_=mynets.Net to resume" in bare.stderr, bare.stderr
    assert len(bare.stderr.strip().splitlines()) == 1
    first = summaries(tmp_path)["run"]["steps"]
    again = interrupt(tmp_path, [*command, "train.steps=100000"], after=0.3, env=env)
    assert again.returncode == 130 and "Traceback" not in again.stderr, again.stderr
    assert summaries(tmp_path)["run"]["steps"] > first


def test_resume_never_imports_code_the_run_folder_names(tmp_path):
    """A run folder is untrusted input. Found in the seventh session: with PYTHONPATH=. (the README's way to a model in
    the current folder), an overrides.yaml naming outputs.<run>.evil.Net imported a module planted in the run folder."""
    run = tmp_path / "outputs" / "run1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model=custom\n- model._target_=outputs.run1.evil.Net\n")
    marker = tmp_path / "ran"
    (run / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + NET)
    refused = gradexp(tmp_path, "resume=outputs/run1", env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert refused.returncode == 2 and not marker.exists(), refused.stderr
    assert "only the command line may name" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_ctrl_c_in_a_sweep_says_to_re_run_the_sweep_which_finishes_it(tmp_path):
    """The printed way on is the sweep's own command: it continues the interrupted job and runs the one not started."""
    args = ["-m", "activation=relu,tanh", "train.steps=100000", "train.checkpoint_every=40", "device=cpu",
            "hydra.sweep.dir=sw"]
    proc = subprocess.Popen([sys.executable, "-m", "gradexp", "run", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while not glob.glob(str(tmp_path / "sw" / "0_*" / "checkpoint.pt")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with: the same gradexp run -m command" in err and "resume with: gradexp run resume=" not in err
    assert len(glob.glob(str(tmp_path / "sw" / "*_activation=*"))) == 1  # job 1 never started


def test_slurm_refusing_the_submission_is_bad_input_in_one_line(capsys):
    """Found by a new user: sbatch refusing gpus_per_node=1 on a cluster without GPUs read 'a SLURM job ended without
    a result ... re-run the same command to continue the sweep', exit 1; re-running can only fail the same way."""
    from gradexp.cli import app

    refused = type("FailedJobError", (Exception,), {"__module__": "submitit.core.utils"})(
        "sbatch: error: Invalid generic resource (gres) specification\n")
    assert app._report(refused, full=False) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SLURM refused the sweep's jobs: sbatch: error: Invalid generic" in err
    died = type("UncompletedJobError", (Exception,), {"__module__": "submitit.core.utils"})("Job 12 was cancelled")
    assert app._report(died, full=False) == 1 and "ended without a result" in capsys.readouterr().err
