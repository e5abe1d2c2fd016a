"""Interrupt and resume: a run stopped at any step and resumed ends exactly like the same run uninterrupted
(summary metrics and every logged scalar), with one clean TensorBoard curve; bad checkpoints fail clearly."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import time

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradexp.training import checkpoint
from gradexp.config.schema import ConfigError
from gradexp.training.run import run_experiment
from gradexp.training.resume import ResumeError
from tests.conftest import compose_config

# 13 steps: checkpoints at 5 and 10, logging every 2nd step, eval every 3rd; cosine schedule and momentum
# make the optimizer and scheduler state matter
LONG = ["train.steps=13", "train.checkpoint_every=5", "log.every=2", "train.eval_every=3",
        "schedule=cosine", "optimizer=sgd", "optimizer.lr=0.05", "device=cpu"]


class StopAfter:
    """Stands in for gradexp.training.interrupt.Interrupts: the request arrives after `n` updates."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    @property
    def requested(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


class Killed(BaseException):
    """A second Ctrl-C: the process is gone mid-run, only periodic checkpoints remain."""


class KillAfter(StopAfter):
    @property
    def requested(self) -> bool:
        if StopAfter.requested.fget(self):
            raise Killed
        return False


def start(run_dir: str, overrides: list[str], console, stop=None):
    cfg = compose_config(overrides)
    os.makedirs(os.path.join(run_dir, ".hydra"))
    OmegaConf.save(cfg, os.path.join(run_dir, ".hydra", "config.yaml"))  # what Hydra records
    kwargs = {} if stop is None else {"stop": stop}
    return run_experiment(cfg, run_dir=run_dir, overrides=overrides, console=console, **kwargs)


def resume(run_dir: str, overrides: list[str], console):
    cfg = compose_config([*overrides, f"resume='{run_dir}'"])
    return run_experiment(cfg, run_dir=run_dir, overrides=overrides, console=console)


def scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def summary(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as f:
        data = json.load(f)
    data.pop("perf")
    return data


@pytest.fixture
def reference(tmp_path_factory, quiet_console):
    run_dir = str(tmp_path_factory.mktemp("ref") / "run")
    start(run_dir, LONG, quiet_console)
    return summary(run_dir), scalars(run_dir)


@pytest.mark.slow
def test_recurrent_run_resumes_exactly(tmp_path, quiet_console):
    """GRU with a step schedule and adam: recurrent weights, per-time-step probes, another optimizer state."""
    overrides = [*LONG, "model=gru", "data.seq_len=5", "schedule=step", "schedule.step_size=4", "optimizer=adam"]
    start(str(tmp_path / "ref"), overrides, quiet_console)
    start(str(tmp_path / "run"), overrides, quiet_console, stop=StopAfter(7))
    resume(str(tmp_path / "run"), overrides, quiet_console)
    assert summary(str(tmp_path / "run")) == summary(str(tmp_path / "ref"))
    assert scalars(str(tmp_path / "run")) == scalars(str(tmp_path / "ref"))


@pytest.mark.slow
def test_transformer_with_warmup_resumes_exactly(tmp_path, quiet_console):
    """A post-LN transformer under warmup chained with cosine: the chained scheduler's state and attn_entropy."""
    overrides = [*LONG, "model=transformer", "model.norm_position=post", "data=recall", "data.n_train=64",
                 "data.n_val=16", "schedule.warmup_steps=6", "optimizer=adam", "optimizer.lr=0.003"]
    start(str(tmp_path / "ref"), overrides, quiet_console)
    start(str(tmp_path / "run"), overrides, quiet_console, stop=StopAfter(4))
    resume(str(tmp_path / "run"), overrides, quiet_console)
    assert summary(str(tmp_path / "run")) == summary(str(tmp_path / "ref"))
    assert scalars(str(tmp_path / "run")) == scalars(str(tmp_path / "ref"))
    assert "attn_entropy/layers.0" in scalars(str(tmp_path / "ref"))


@pytest.mark.parametrize("stop_at", [1, 4, 5, 9, 12])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, quiet_console, reference, stop_at):
    run_dir = str(tmp_path / "run")
    outcome = start(run_dir, LONG, quiet_console, stop=StopAfter(stop_at))
    assert outcome.status == "interrupted" and outcome.steps == stop_at
    assert summary(run_dir)["status"] == "interrupted"
    assert checkpoint.load(os.path.join(run_dir, checkpoint.CHECKPOINT_NAME))["step"] == stop_at
    assert resume(run_dir, LONG, quiet_console).status == "completed"
    assert summary(run_dir) == reference[0]
    assert scalars(run_dir) == reference[1]  # same steps, same values, each step once, in order


def test_killed_run_resumes_from_the_last_periodic_checkpoint(tmp_path, quiet_console, reference):
    run_dir = str(tmp_path / "run")
    with pytest.raises(Killed):
        start(run_dir, LONG, quiet_console, stop=KillAfter(8))  # logged up to step 7, checkpoint at 5
    assert checkpoint.load(os.path.join(run_dir, checkpoint.CHECKPOINT_NAME))["step"] == 5
    resume(run_dir, LONG, quiet_console)
    logged = scalars(run_dir)
    assert logged == reference[1]  # the points of steps 5..7 from the first session were purged
    assert summary(run_dir) == reference[0]


def test_resume_refuses_a_changed_config_and_a_finished_run(tmp_path, quiet_console):
    run_dir = str(tmp_path / "run")
    start(run_dir, LONG, quiet_console, stop=StopAfter(3))
    with pytest.raises(ResumeError, match="train.steps=20"):
        resume(run_dir, [*LONG, "train.steps=20"], quiet_console)
    config = os.path.join(run_dir, ".hydra", "config.yaml")
    kept = open(config).read()
    with open(config, "w") as f:  # edited by hand: "these overrides change it" named overrides no one gave
        f.write(kept.replace("seed: 0", "seed: 7"))
    with pytest.raises(ResumeError, match=r"differs from the run's .hydra/config.yaml: seed=0 \(the run has 7\)"):
        resume(run_dir, LONG, quiet_console)
    with open(config, "w") as f:
        f.write(kept)
    resume(run_dir, LONG, quiet_console)
    with pytest.raises(ResumeError, match="completed"):
        resume(run_dir, LONG, quiet_console)


def test_a_folder_holding_a_run_is_never_overwritten(tmp_path, quiet_console):
    run_dir = str(tmp_path / "run")
    start(run_dir, LONG, quiet_console)
    before = open(os.path.join(run_dir, "summary.json")).read()
    with pytest.raises(ConfigError, match="never overwrites"):
        run_experiment(compose_config(LONG), run_dir=run_dir, overrides=LONG, console=quiet_console)
    assert open(os.path.join(run_dir, "summary.json")).read() == before


# b"hello world\n" and a passwd file: found by an adversarial test, torch's weights-only unpickler failed with
# KeyError / IndexError, which gave a traceback
@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"hello world\n", b"root:x:0:0:root:/root:/bin/bash\n",
                                     None, "folder"])
def test_truncated_or_foreign_checkpoint_is_a_clear_error(tmp_path, quiet_console, content):
    path = str(tmp_path / checkpoint.CHECKPOINT_NAME)
    if content is None:
        torch.save({"model": {}}, path)  # a torch file, but not ours
    elif content == "folder":
        os.mkdir(path)  # "no checkpoint ... stopped before its first checkpoint" was not the reason
    else:
        with open(path, "wb") as f:
            f.write(content)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    assert ("not a regular file" in str(err.value)) == (content == "folder")


class _Payload:
    def __reduce__(self):  # unpickled, it would run this
        return (os.system, ("touch PWNED",))


def test_a_planted_pickle_is_refused_in_one_line_that_never_advises_an_unsafe_load(tmp_path, recwarn, monkeypatch):
    """Found by an adversarial test and a new user: torch's error text, passed on, advised weights_only=False (for a
    planted file, running its code), after two lines of torch's warning about the pickle protocol."""
    import pickle

    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / checkpoint.CHECKPOINT_NAME)
    with open(path, "wb") as f:
        pickle.dump(_Payload(), f, protocol=4)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert "weights_only=True" in message and "False" not in message and "\n" not in message
    assert not (tmp_path / "PWNED").exists() and not recwarn.list


def test_truncated_real_checkpoint(tmp_path, quiet_console):
    run_dir = str(tmp_path / "run")
    start(run_dir, LONG, quiet_console, stop=StopAfter(6))
    path = os.path.join(run_dir, checkpoint.CHECKPOINT_NAME)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ResumeError, match="truncated"):
        resume(run_dir, LONG, quiet_console)


@pytest.mark.slow
def test_fp16_run_resumes_exactly_with_its_loss_scale(tmp_path, quiet_console):
    """The scaler's scale and skipped-step count travel in checkpoint.pt: a fixed overflowing scale skips every
    step, so the count after resuming must continue, not restart."""
    overrides = [*LONG, "data=blobs", "train.precision=fp16", "train.loss_scale=1e30"]
    start(str(tmp_path / "ref"), overrides, quiet_console)
    start(str(tmp_path / "run"), overrides, quiet_console, stop=StopAfter(7))
    resume(str(tmp_path / "run"), overrides, quiet_console)
    assert summary(str(tmp_path / "run")) == summary(str(tmp_path / "ref"))
    skipped = summary(str(tmp_path / "run"))["amp"]["skipped_steps"]
    assert skipped == 13 and type(skipped) is int  # a count, not 13.0
    # the overflowed gradients' norms are NaN/inf on every logging step: compared by their spelling (nan != nan)
    spelled = [{tag: [(s, repr(v)) for s, v in series] for tag, series in scalars(str(tmp_path / d)).items()}
               for d in ("run", "ref")]
    assert spelled[0] == spelled[1]


def test_a_session_resumed_in_the_second_its_predecessor_began_writes_a_file_that_sorts_after(tmp_path):
    from gradexp.outcome import Outcome
    from gradexp.sinks.tensorboard import TensorBoardSink
    earlier = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.9"
    (tmp_path / earlier).write_bytes(b"")  # counter 9: this process's next writer is 10 or more, which sorts first
    sink = TensorBoardSink(str(tmp_path), purge_step=3)
    sink.close(Outcome(status="completed"))
    events = sorted(name for name in os.listdir(tmp_path) if name.startswith("events."))
    assert len(events) == 2 and events[0] == earlier


def test_a_resumed_session_whose_file_already_sorts_last_does_not_wait(tmp_path):
    from gradexp.outcome import Outcome
    from gradexp.sinks.tensorboard import TensorBoardSink
    earlier = f"events.out.tfevents.{int(time.time()) - 5:010d}.{socket.gethostname()}.{os.getpid()}.9"
    (tmp_path / earlier).write_bytes(b"")
    started = time.monotonic()
    sink = TensorBoardSink(str(tmp_path), purge_step=3)
    assert time.monotonic() - started < 0.5
    sink.close(Outcome(status="completed"))
    events = sorted(name for name in os.listdir(tmp_path) if name.startswith("events."))
    assert len(events) == 2 and events[0] == earlier


@pytest.mark.parametrize("kind", ["fifo", "folder", "link"])
def test_a_summary_that_is_not_a_plain_file_is_refused_before_resuming(tmp_path, quiet_console, kind):
    """A FIFO, a folder or a link in place of summary.json: not the run's own. It was found only when the resumed run
    ended (exit 1) or silently replaced; now refused at once, and the folder is left as it was."""
    from gradexp.training.resume import ResumeError

    run_dir = str(tmp_path / "run")
    start(run_dir, LONG, quiet_console, stop=StopAfter(6))
    summary = os.path.join(run_dir, "summary.json")
    os.remove(summary)
    make = {"fifo": os.mkfifo, "folder": os.mkdir, "link": lambda p: os.symlink(str(tmp_path / "else.json"), p)}
    make[kind](summary)
    before = sorted(os.listdir(run_dir))
    with pytest.raises(ResumeError, match="summary.json is there but is not a file the run wrote"):
        resume(run_dir, LONG, quiet_console)
    assert sorted(os.listdir(run_dir)) == before and os.path.lexists(summary)


def test_another_runs_checkpoint_is_refused_even_where_its_shapes_fit(tmp_path, quiet_console):
    """Found by an adversarial test: a checkpoint copied from a run with another learning rate (same shapes) was
    resumed, and the run trained on with that run's state while its config said otherwise. The checkpoint carries
    the config's fingerprint; the folder is left as it was."""
    donor, run_dir = str(tmp_path / "donor"), str(tmp_path / "run")
    start(donor, [*LONG, "optimizer.lr=0.2"], quiet_console, stop=StopAfter(6))
    start(run_dir, LONG, quiet_console, stop=StopAfter(6))
    shutil.copy(os.path.join(donor, checkpoint.CHECKPOINT_NAME), os.path.join(run_dir, checkpoint.CHECKPOINT_NAME))
    before = {name: open(os.path.join(run_dir, name), "rb").read() for name in ("summary.json", "checkpoint.pt")}
    with pytest.raises(ResumeError, match="written by a run of another config"):
        resume(run_dir, LONG, quiet_console)
    assert before == {name: open(os.path.join(run_dir, name), "rb").read() for name in before}


def _forge(group: dict, state: dict, change: str) -> None:
    if change == "state shape":
        state[0]["exp_avg"] = torch.zeros(3)
    else:
        key, value = change.split("=")
        group[key] = eval(value)  # noqa: S307 (the test's own literals)


@pytest.mark.parametrize("change,says", [
    ("lr='abc'", "lr 'abc'"), ("lr=-5.0", "lr -5.0"), ("lr=1.0", "lr 1.0"), ("betas=(0.5, 0.999)", "betas (0.5, 0.999)"),
    ("maximize=True", "maximize True"), ("weight_decay=1e30", "weight_decay 1e+30"),
    ("state shape", "parameter 0 does not fit")])
def test_a_forged_optimizer_state_is_refused_and_the_folder_kept(tmp_path, quiet_console, change, says):
    """Found by an adversarial test: load_state_dict took a forged checkpoint's param groups as they were; lr='abc'
    failed mid-step with a traceback (and the run was marked failed), lr=-5 trained by gradient ascent."""
    run_dir = str(tmp_path / "run")
    overrides = [*LONG, "optimizer=adam"]
    start(run_dir, overrides, quiet_console, stop=StopAfter(6))
    path = os.path.join(run_dir, checkpoint.CHECKPOINT_NAME)
    state = torch.load(path, weights_only=True)
    _forge(state["optimizer"]["param_groups"][0], state["optimizer"]["state"], change)
    torch.save(state, path)
    before = {name: open(os.path.join(run_dir, name), "rb").read() for name in ("summary.json", "checkpoint.pt")}
    with pytest.raises(ResumeError, match=re.escape(says)) as refused:
        resume(run_dir, overrides, quiet_console)
    assert "\n" not in str(refused.value)
    assert before == {name: open(os.path.join(run_dir, name), "rb").read() for name in before}


@pytest.mark.parametrize("forged", ["step", "stream"])
@pytest.mark.parametrize("extra", [[], ["data.workers=1"]], ids=["batches", "loader"])
def test_a_forged_step_that_its_data_position_does_not_match_is_refused(tmp_path, quiet_console, extra, forged):
    """Found by an adversarial test: a checkpoint's step set to train.steps ended the run 'completed' after the few
    updates it had done. One batch per update: the data position says how many were done. A data position that is
    no mapping is refused in the same line (a review: an AttributeError, or a traceback)."""
    run_dir = str(tmp_path / "run")
    overrides = [*LONG, *extra]
    start(run_dir, overrides, quiet_console, stop=StopAfter(6))
    path = os.path.join(run_dir, checkpoint.CHECKPOINT_NAME)
    state = torch.load(path, weights_only=True)
    if forged == "step":
        state["step"] += 1
    elif extra:
        state["batches"]["stream"] = [1, 2]
    else:
        state["batches"] = torch.zeros(2)
    torch.save(state, path)
    with pytest.raises(ResumeError, match=f"its step {state['step']} does not match its data position") as refused:
        resume(run_dir, overrides, quiet_console)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("key,value", [("scale", "abc"), ("scale", -1.0), ("scale", math.nan),
                                       ("growth_interval", 0), ("_growth_tracker", -2), ("backoff_factor", 2.0)])
def test_a_tampered_loss_scaler_state_is_refused(key, value):
    """Found by an adversarial test: a scale of 'abc' failed inside torch, -1 and NaN were used silently."""
    from gradexp.training.precision import Precision

    precision = Precision("fp16", "dynamic", torch.device("cpu"))
    state = {"scaler": {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                        "_growth_tracker": 0}, "skipped": 0}
    precision.load_state_dict(state)  # as a run writes it
    state["scaler"][key] = value
    with pytest.raises(ValueError, match=f"loss scaler's {key}"):
        precision.load_state_dict(state)


BOMB = "".join(f"zz_{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 9)}]\n" for i in range(8))  # 9^8 leaves


def test_yaml_aliases_in_the_folders_hydra_record_are_refused_at_once(tmp_path, quiet_console):
    """Found by an adversarial test: six levels of nested aliases in .hydra/config.yaml (1.8 KB) took 54 s and 686 MB
    to load, seven ~5 minutes and 3.5 GB. Hydra writes no alias: the file is refused in one line, nothing touched."""
    from gradexp.training.resume import trusted_overrides

    run_dir = str(tmp_path / "run")
    start(run_dir, LONG, quiet_console, stop=StopAfter(6))
    config = os.path.join(run_dir, ".hydra", "config.yaml")
    with open(config, "a") as f:
        f.write(BOMB)
    with pytest.raises(ResumeError, match=r"config.yaml: cannot read it \(it holds YAML aliases; Hydra writes none\)"):
        resume(run_dir, LONG, quiet_console)
    overrides = tmp_path / "overrides.yaml"
    os.mkfifo(overrides)  # found by an adversarial test: a FIFO there read "no .hydra/overrides.yaml there"
    with pytest.raises(ResumeError, match="not a regular file"):
        trusted_overrides(str(overrides))
    os.remove(overrides)
    overrides.write_text("- &a train.steps=3\n- *a\n")
    with pytest.raises(ResumeError, match="holds YAML aliases"):
        trusted_overrides(str(overrides))
