"""checkpoint.pt: everything needed to continue a run exactly where it stopped.

Holds model, optimizer, scheduler, loss scaler (mixed precision), RNG states (torch/numpy/python, CUDA when used), the number of
updates done, the data position (Batches.state_dict) and the summary sink's first/last values.
Written atomically (temp file + rename): a crash or a second Ctrl-C mid-write leaves the previous
checkpoint intact. Read with torch.load(weights_only=True), so a file cannot run code when loaded."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from gradexp.config.schema import first_line
from gradexp.sinks.files import write_atomically
from gradexp.training.artefacts import CHECKPOINT_NAME
from gradexp.training.reproducible import rng_state, set_rng_state
from gradexp.training.loop import Run

FORMAT = "gradexp-checkpoint-1"   # tag that tells our file from any other torch file
KEYS = ("format", "step", "model", "optimizer", "scheduler", "rng", "batches", "summary")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; str() is the one line the user sees."""


def fingerprint(cfg: Any) -> str:
    """The run's whole config (all but `resume=`, which names the folder), hashed: a checkpoint keeps it, so that
    another run's checkpoint.pt put in this folder is refused even where its shapes fit this run's model."""
    tree = OmegaConf.to_container(cfg, resolve=False)  # as written, as resume compares it (an ${oc.env:...} may move)
    tree.pop("resume", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=repr).encode()).hexdigest()


def capture(run: Run, step: int, sink_states: dict[str, Any], config: str) -> dict[str, Any]:
    """The state after `step` updates (step = the index of the next update to run). sink_states: sink name ->
    its state_dict; the summary's under its own key (older checkpoints hold only that one). config: fingerprint()."""
    return {
        "format": FORMAT,
        "config": config,
        "step": step,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
        "rng": rng_state(),
        "batches": run.batches.state_dict(),
        "precision": run.precision.state_dict(),  # the loss scale and skipped-step count (mixed precision)
        "summary": sink_states["summary"],
        "sinks": {name: state for name, state in sink_states.items() if name != "summary"},
    }


def save(path: str, state: dict[str, Any]) -> None:
    try:
        write_atomically(path, lambda f: torch.save(state, f), binary=True)  # the previous checkpoint stays on error
    except RuntimeError as err:
        if isinstance(err.__context__, OSError):
            raise err.__context__ from None  # torch's zip writer wraps the OSError (e.g. ENOSPC) of the write
        raise


def load(path: str) -> dict[str, Any]:
    """Loaded on the CPU: RNG and generator states must be CPU tensors; load_state_dict moves the rest."""
    if os.path.lexists(path) and not os.path.isfile(path):  # a folder, a FIFO (whose open would block), a device
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a regular file")
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path} (the run stopped before its first checkpoint)")
    try:
        with warnings.catch_warnings():  # torch warns of a foreign pickle protocol before it refuses the file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text would advise weights_only=False: for a planted file, running
        # its code (found by an adversarial test); gradexp never loads a checkpoint that way
        raise CheckpointError(f"cannot read checkpoint {path}: truncated, not a torch file, or holding objects other "
                              "than tensors and plain data (a checkpoint is only ever loaded with weights_only=True)") \
            from err
    except Exception as err:  # noqa: BLE001  torch's weights-only unpickler fails on foreign bytes with KeyError,
        # IndexError, ... (found by an adversarial test: 'hello world' gave a 57-line traceback); a file that is not
        # a torch checkpoint is bad input whatever the error
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a torch file "
                              f"({first_line(err)})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT or any(k not in state for k in KEYS):
        raise CheckpointError(f"{path} is not a gradexp checkpoint (expected format {FORMAT!r})")
    return state


def restore(run: Run, state: dict[str, Any], total_steps: int, config: str) -> int:
    """Load `state` into the freshly built run of config fingerprint `config`; returns the step to continue from. A
    checkpoint of another run (or a tampered one) raises CheckpointError, in one line, before anything is written.
    Checkpoints of gradexp before 0.2.1 hold no fingerprint: their model and optimizer must fit, as then."""
    if state.get("config", config) != config:
        raise CheckpointError("it was written by a run of another config (it is not this run's checkpoint.pt)")
    step = state["step"]
    if type(step) is not int or not 0 <= step <= total_steps:  # a forged step would end the run 'completed' at once
        raise CheckpointError(f"its step {step!r} is not one of this run's (0 to train.steps={total_steps})")
    check_optimizer_state(run.optimizer, state["optimizer"])
    try:  # one batch per update: a step the data position does not match is not one this run wrote
        run.batches.check_drawn(step, state["batches"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"its step {step} does not match its data position ({first_line(err)})") from None
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        if run.scheduler is not None and state["scheduler"] is not None:
            run.scheduler.load_state_dict(state["scheduler"])
        run.batches.load_state_dict(state["batches"])
        run.precision.load_state_dict(state.get("precision") or {})  # older checkpoints: none was kept
        set_rng_state(state["rng"])
        return step
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        raise CheckpointError(f"the checkpoint does not fit this run's model and optimizer "
                              f"({first_line(err)})") from None


def check_optimizer_state(optimizer: torch.optim.Optimizer, saved: Any) -> None:
    """CheckpointError unless `saved` is a state this run's optimizer could have written: in every param group the
    config's settings (betas, weight decay, maximize, ...) and an lr its schedule can reach (0 to the group's
    initial_lr; the config's lr without a schedule), and per parameter tensors of its shape or single numbers.
    load_state_dict takes whatever it is given: a forged lr='abc' failed mid-step with a traceback, and lr=-5
    trained by gradient ascent (found by an adversarial test)."""
    mine = optimizer.state_dict()
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or len(groups) != len(mine["param_groups"]) or \
            not isinstance(saved.get("state"), dict):
        raise CheckpointError("its optimizer state is not one this run's optimizer writes")
    for own, theirs in zip(mine["param_groups"], groups):
        needed = {"lr", "params"} | ({"initial_lr"} & set(own))
        if not isinstance(theirs, dict) or not needed <= set(theirs) <= set(own):  # older torch: fewer keys
            raise CheckpointError("its optimizer's settings are not this run's optimizer's")
        for key, value in theirs.items():
            if key != "lr" and (type(value) is not type(own[key]) or value != own[key]):
                raise CheckpointError(f"its optimizer's {key} {value!r} is not this run's ({own[key]!r})")
        _check_lr(theirs["lr"], own.get("initial_lr"), own["lr"])
    shapes = [p.shape for group in optimizer.param_groups for p in group["params"]]
    for index, values in saved["state"].items():
        if type(index) is not int or not 0 <= index < len(shapes) or not isinstance(values, dict) or not all(
                (isinstance(v, torch.Tensor) and (v.shape == shapes[index] or v.numel() == 1))
                or (type(v) in (int, float)) for v in values.values()):
            raise CheckpointError(f"its optimizer state for parameter {index!r} does not fit this run's model")


def _check_lr(lr: Any, initial: Any, configured: float) -> None:
    ceiling = initial if initial is not None else configured  # a schedule never goes above its base lr
    if type(lr) is not float or not (0.0 <= lr <= ceiling * (1 + 1e-9) and (initial is not None or lr == configured)):
        raise CheckpointError(f"its optimizer's lr {lr!r} is not one this run's optimizer reaches "
                              f"({'0 to ' if initial is not None else ''}{ceiling!r})")


class Checkpointer:
    """Writes checkpoint.pt every `every` updates (0: never periodically) and on demand."""

    def __init__(self, run_dir: str, run: Run, every: int, sink_states: Callable[[], dict[str, Any]], config: str):
        self.path = os.path.join(run_dir, CHECKPOINT_NAME)
        self.run, self.every, self.sink_states, self.config = run, every, sink_states, config

    def maybe_save(self, steps_done: int) -> None:
        if self.every and steps_done % self.every == 0:
            self.save(steps_done)

    def save(self, steps_done: int) -> None:
        self.run.drain_sinks()  # the sinks' state must hold every step logged so far (bit-identical resume)
        save(self.path, capture(self.run, steps_done, self.sink_states(), self.config))
