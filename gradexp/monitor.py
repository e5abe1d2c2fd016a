"""gradexp.Monitor: gradexp's instruments on the user's own model and training loop.

    monitor = gradexp.Monitor(model, run_dir="runs/mine", optimizers=[opt])
    for x, y in loader:
        with monitor.step():                      # one optimizer update; hooks exist only on logging steps
            loss = loss_fn(model(x), y)
            loss.backward()
            monitor.clip_grad_norm_(model.parameters(), 1.0)   # optional: clips, and the clip telemetry sees it
            opt.step(); opt.zero_grad()
            monitor.record(loss=loss)
    monitor.close()                               # summary.json with the verdict; TensorBoard events beside it

The run folder gets the same TensorBoard tags, summary.json and verdict as `gradexp run`, so `gradexp report` reads it.

The phases of a logging step are found without the user's help: the gradients are read "before clipping" at the
first of `clip_grad_norm_` / `clip_grad_value_` / `gradients_ready()` / the first optimizer's pre-step hook, "after
clipping" at the first optimizer pre-step hook, and the parameters "after the update" when the step's `with` ends
(after every optimizer has stepped). An optimizer step skipped by an AMP GradScaler (inf/NaN gradients) fires no
pre-step hook: that step logs no update ratio, and amp/skipped_steps (design.md's tag) counts the skipped updates seen
so far (on logging steps; it is logged on every logging step of a loop with a scaler). Everything a step did between backward
passes accumulates, as the gradients do: gradient accumulation and a module called twice (weight sharing) pool
every call's activations and activation gradients.

Under torch.distributed (DDP) the parameter gradients are already the global ones (DDP averages them); the
activation statistics of each rank's shard are combined across ranks (squared norms summed, moments pooled), and
only rank 0 writes the run folder."""
from __future__ import annotations

import contextlib
import datetime
import math
import os
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from gradexp.analysis.advice import Factors
from gradexp.analysis.diagnose import diagnose
from gradexp.config.registry import ACTIVATIONS, PROBES, resolve
from gradexp.config.schema import ConfigError, DiagnoseConf
from gradexp.outcome import Outcome
from gradexp.probes.base import Instruments, ProbeContext, only_on, per_tag, to_host
from gradexp.probes.layers import depths_of, watched_layers
from gradexp.sinks.summary import SummarySink
from gradexp.sinks.tb_views import TensorBoardViews
from gradexp.sinks.tensorboard import TensorBoardSink
from gradexp.sinks.writer import SinkWriter
from gradexp.training.artefacts import run_artefacts
from gradexp.training.clip import ClipPolicy

# the probes that need nothing but the layer list and the model (bptt needs gradexp's recurrent layers); attn_entropy
# is built only where a watched layer declares attention (gradexp's transformer blocks), else it is left out
DEFAULT_PROBES = ("grad_norm", "act_grad_norm", "act_stats", "update_ratio", "clip", "attn_entropy")
OWN_FAMILY = "own"  # Factors.family of a model gradexp did not build: the advice offers no gradexp override


class _LossScale:
    """A user's GradScaler's scale as the activation-gradient probes divide it out (probes/base.py
    ProbeContext.loss_scale): the one this step's backward ran with, 0-d on its device (no host sync); None while the
    scaler is disabled or before its first scale(). Noted as the backward reaches the model's output: a step the
    scaler skips is read only when its `with` ends, after scaler.update() has already halved the scale."""

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.scaler = scaler
        self.noted: Optional[Tensor] = None

    def __call__(self) -> Optional[Tensor]:
        if not self.scaler.is_enabled():
            return None
        return self.noted if self.noted is not None else self.scaler._get_scale_async()  # get_scale() would sync

    def note(self, _grad: Tensor) -> None:
        """A tensor hook on the model's output: the first thing the backward does."""
        scale = self.scaler._get_scale_async() if self.scaler.is_enabled() else None
        self.noted = None if scale is None else scale.clone()

    @contextlib.contextmanager
    def noted_in(self, model: nn.Module) -> Iterator[None]:
        """For one logging step: the scale noted at its backward (a model whose output is no tensor: read later)."""
        def on_output(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.requires_grad:
                output.register_hook(self.note)

        self.noted = None
        handle = model.register_forward_hook(only_on(model, on_output))  # not a deepcopy's output
        try:
            yield
        finally:
            handle.remove()


class Monitor:
    """Instruments for one training run of the user's model; see the module docstring for the whole loop.

    model: any nn.Module. run_dir: a new (or empty) folder, created; default runs/monitor-<time> under the current
    directory. every: the logging interval in updates (step 0 and every `every`-th). watch: fnmatch patterns of
    module names to watch (default: the layer contract's discovery, gradexp/probes/layers.py). optimizers: the
    optimizer(s) whose step() ends the gradient phase (several, or one with several param groups, are fine, if they
    step on the gradients of the step's backward; a GAN's alternating updates are one Monitor per network).
    probes: the probe kinds to run (gradexp/config/registry.py PROBES). activation: the activation's option name
    (saturation rules), if the layers declare where it is. sinks: extra objects with log(step, values) and
    close(outcome), e.g. to read the values in a test. steps: the updates planned, if known, so that the last one
    is logged too (as `gradexp run` does). optimizer.step(closure) works too (the gradients are read when the closure
    returns). step_hooks=False: no optimizer pre-step hook; the caller says when the update begins (before_update())
    and when it did not happen (update_skipped()), as a framework that drives the step itself does
    (integrations/lightning.py). scaler: the torch.amp.GradScaler the loop scales its loss with, if any: the
    activation gradients the hooks see are scaled by it (the parameter gradients are read after `scaler.unscale_`),
    so the Monitor divides its scale out of them."""

    def __init__(self, model: nn.Module, run_dir: Optional[str] = None, every: int = 25,
                 watch: Sequence[str] = (), optimizers: Iterable[torch.optim.Optimizer] = (),
                 probes: Sequence[str] = DEFAULT_PROBES, activation: Optional[str] = None, sinks: Sequence = (),
                 steps: Optional[int] = None, step_hooks: bool = True,
                 scaler: Optional[torch.amp.GradScaler] = None):
        check_options(every, probes, activation)
        optimizers, sinks = _check_arguments(model, run_dir, watch, optimizers, sinks, steps, step_hooks, scaler)
        # a DDP-wrapped model is watched through the module it wraps: the same tags as one process
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.model, self.every, self.planned = model, every, steps
        self.optimizers = optimizers
        self.step_hooks = step_hooks  # False: the caller calls before_update() and update_skipped() itself
        self.layers = watched_layers(model, list(watch), key="watch")  # refuses a model with nothing to watch, a pattern matching nothing
        self._depths = depths_of(model, self.layers)  # where they lie in the model (a watched subset skips some)
        self.clip = ClipPolicy(mode="none", max_norm=0.0, norm_type=2.0, value=0.0)
        self._probe_names, self._activation = tuple(probes), activation
        self._loss_scale = None if scaler is None else _LossScale(scaler)
        self.instruments = self._instruments()
        self.writes = _rank() == 0
        self.run_dir = run_dir or os.path.join("runs", f"monitor-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}")
        own = self._own_sinks()
        self.sinks = [*own, *sinks]
        # the run folder's sinks write on their own thread (sinks/writer.py); the caller's sinks see each step's values
        # at once, on the caller's thread
        self.writer, self._callers_sinks = SinkWriter(own), list(sinks)
        self.outcome = Outcome()
        self.steps = 0           # updates done (`with step()` blocks that ended normally)
        self.skipped_steps = 0   # of those, updates an AMP scaler skipped (no optimizer stepped), on every step
        # optimizer steps taken, counted by post-step hooks that live as long as the Monitor (a counter: no device
        # work, no sync): an ordinary step whose update a scaler skipped is counted too (found by a researcher: a
        # count of the skips that fell on logging steps, 3 of 8). The caller says so itself with step_hooks=False.
        self._updates, self._skipped_now = 0, False
        self._count_hooks = [opt.register_step_post_hook(self.note_update) for opt in optimizers if step_hooks]
        # a fused optimizer (Adam(fused=True)) takes a GradScaler's skip inside its own kernel: the scaler calls its
        # step() either way, with found_inf, and the post-step hook fires. Each step's found_inf is kept (no sync)
        # and read at the next logging step (a review: a skipped logging step ended the run "diverged")
        self._found_inf: list[tuple[int, Tensor]] = []  # (step, found_inf) of each fused optimizer step
        self._recorded: dict[str, Tensor] = {}
        self._phase = "idle"     # idle | forward (logging step, before clipping) | backward | clipped | skipped | ordinary
        self._clip_norm: Optional[Tensor] = None
        # with several optimizers, the parameters autograd accumulated a gradient into after the update was announced
        # (a later backward): an optimizer stepping on those is refused (refuse_a_second_backward)
        self._accumulated: Optional[set[int]] = None
        self._accumulate_hooks: list = []
        self._closed = False

    def _instruments(self) -> Instruments:
        context = ProbeContext(layers=self.layers, activation=self._activation, clip=self.clip,
                               loss_scale=self._loss_scale)
        built = [resolve(PROBES[name].target).from_context(context) for name in self._probe_names]
        if "clip" in self._probe_names:  # the policy's mode is set by the first clip call, after the probes are built
            from gradexp.probes.clip_telemetry import ClipTelemetry
            built = [ClipTelemetry(self.clip) if name == "clip" else p for name, p in zip(self._probe_names, built)]
        return Instruments([p for p in built if p is not None], self.model)

    def _own_sinks(self) -> list:
        if not self.writes:
            return []
        _refuse_a_used_folder(self.run_dir)
        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as err:  # under a file, a name too long, under /proc: a raw OSError (adversarial test)
            raise ConfigError("run_dir", os.fspath(self.run_dir), f"a folder path this process can create "
                              f"({err.strerror or err})") from None
        names = [name for name, _ in self.layers]
        tensorboard = TensorBoardSink(self.run_dir)
        hparams = {"model": type(self.model).__name__, "log.every": self.every, "monitor": True}
        at = self._depths.per_layer
        self._summary = SummarySink(self.run_dir, [f"model={type(self.model).__name__}"], names, depths=at)
        # views before tensorboard, which closes the writer they share
        return [TensorBoardViews(tensorboard.writer, hparams, names, at), tensorboard, self._summary]

    # ---- the step -------------------------------------------------------------------------------------------

    def is_logging_step(self) -> bool:
        return self.steps % self.every == 0 or self.steps == (self.planned or 0) - 1

    @contextlib.contextmanager
    def step(self) -> Iterator["Monitor"]:
        """One optimizer update (forward, backward(s), clipping, optimizer step(s)). On logging steps the hooks live
        inside the `with` only and are removed whatever happens; an exception drops this step's values."""
        if self._closed:
            raise RuntimeError("this Monitor is closed")
        if self._phase != "idle":  # else the inner step ended the outer one's phase: record() then blamed the user
            raise RuntimeError("Monitor.step() inside another `with monitor.step():`: one step() per update, not nested")
        if not self.is_logging_step():
            self._phase, updates, self._skipped_now = "ordinary", self._updates, False
            try:
                yield self
            finally:
                self._phase = "idle"
            self._recorded.clear()
            if not self._closed:  # closed from inside the step (close(interrupted=True)): the step is dropped
                self.steps += 1
                self.skipped_steps += self._skipped_now or bool(self._count_hooks and self._updates == updates)
            return
        self.instruments.begin(self.steps)
        self._phase, self._clip_norm = "forward", None
        try:
            noted = self._loss_scale.noted_in(self.model) if self._loss_scale else contextlib.nullcontext()
            with self.instruments.watch(), self._optimizer_hooks(), noted:
                yield self
                if self._closed:  # by a preemption handler inside the step (close(interrupted=True)): dropped
                    return
                self.gradients_ready()
                if not self.optimizers and self.step_hooks and self._phase == "backward":
                    # no optimizer to hook: the update is not seen (no update ratio, no skipped step), the
                    # gradients and the clip are (found by an adversarial test: every step logged as an AMP skip)
                    self.instruments.after_clip(self._clip_norm)
                    self._phase = "unseen"
            self._after_update()
        except BaseException:
            self.instruments = self._instruments()  # a fresh set: no probe keeps this step's half-gathered state
            self._recorded.clear()
            raise
        finally:
            self._phase = "idle"
        self.steps += 1

    def gradients_ready(self) -> None:
        """Say that the gradients are complete, before clipping them yourself (clip_grad_norm_ does it for you).
        Does nothing outside a logging step or once already said."""
        if self._phase == "forward":
            self.instruments.after_backward()
            self._phase = "backward"

    def before_update(self, *_: Any) -> None:
        """The gradients are final (clipped) and the optimizer is about to update: the first optimizer's pre-step hook
        calls it, or the caller with step_hooks=False. Does nothing outside a logging step or once already said."""
        self.gradients_ready()
        if self._phase == "backward":
            self.instruments.after_clip(self._clip_norm)
            self._phase = "clipped"
            if self.optimizers:  # the rate this update uses: a scheduler stepped inside the `with` moves it on after
                self.instruments.pending["lr"] = float(self.optimizers[0].param_groups[0]["lr"])  # a host number
            if len(self.optimizers) > 1:
                self._watch_for_a_second_backward()

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        """The optimizer's pre-step hook. optimizer.step(closure) runs it before the closure's backward, so then the
        closure is wrapped to say before_update() once it has returned: the gradients read are those of the
        closure's first evaluation, at the parameters the update starts from (LBFGS evaluates it again later)."""
        # torch hands the hook step()'s own args, the optimizer first: (optimizer, closure?)
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        _refuse_scaled_gradients(optimizer)
        if closure is None:
            self.refuse_a_second_backward(optimizer)
            self.before_update()
            return None

        def measured() -> Any:
            loss = closure()
            self.refuse_a_second_backward(optimizer)
            self.before_update()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": measured}
        return (args[0], measured, *args[2:]), kwargs

    def _watch_for_a_second_backward(self) -> None:
        """The gradients of a logging step are read once, when its first optimizer is about to step. A second
        optimizer is fine on those gradients (several optimizers after one backward, each clipped, unscaled or
        all-reduced in place as it likes); on the gradients of another backward (a GAN's D step, then its G step) its
        parameters' gradients, and its update, would be silently missing (found by a user). So, until the step ends,
        autograd's post-accumulate hook notes every parameter a backward accumulates a gradient into: only a backward
        fires it (a review found version counters refusing a clip between two optimizers' steps)."""
        self._accumulated = set()
        params = {id(p): p for p in _parameters(self.optimizers) if p.requires_grad}  # a shared one once
        self._accumulate_hooks = [p.register_post_accumulate_grad_hook(lambda q: self._accumulated.add(id(q)))
                                  for p in params.values()]

    def refuse_a_second_backward(self, optimizer: torch.optim.Optimizer) -> None:
        """Alternating updates are one step() each, on one Monitor per network (_watch_for_a_second_backward). The
        optimizer pre-step hook calls it, or the caller with step_hooks=False (integrations/lightning.py)."""
        if self._accumulated and any(id(p) in self._accumulated for p in _parameters([optimizer])):
            number = next(i for i, o in enumerate(self.optimizers, 1) if o is optimizer)
            raise RuntimeError(
                f"Monitor: optimizer {number} of {len(self.optimizers)} stepped on the gradients of another backward "
                "inside one step(): alternating updates (a GAN's D and G steps) are one `with monitor.step():` each, "
                "on one Monitor per network, e.g. Monitor(D, optimizers=[opt_d]) and Monitor(G, optimizers=[opt_g])")

    def update_skipped(self) -> None:
        """The update of this step did not happen (an AMP scaler found inf/NaN gradients): said by the caller with
        step_hooks=False, on any step."""
        if self._phase == "clipped":
            self._phase = "skipped"
        elif self._phase == "ordinary":
            self._skipped_now = True

    def note_update(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """The optimizer stepped: its post-step hook calls it, or the caller with step_hooks=False (the Lightning
        callback's hook). A fused optimizer's step may have been a scaler's skip: its found_inf is kept to read."""
        self._updates += 1
        found = getattr(optimizer, "found_inf", None)
        if isinstance(found, Tensor):
            self._found_inf.append((self.steps, found))

    def _read_found_inf(self, now: Optional[int] = None) -> tuple[int, bool]:
        """(the steps before step `now` a fused optimizer skipped, whether it skipped step `now`), in one transfer. A
        step is skipped once however many fused optimizers it has (a review: two counted each skip twice)."""
        found, self._found_inf = self._found_inf, []
        if not found:
            return 0, False
        device = found[0][1].device
        flags = torch.stack([f.reshape(()).to(device, torch.float32) for _, f in found]).gt(0).tolist()
        skipped = {step for (step, _), flag in zip(found, flags) if flag}
        return len(skipped - {now}), now in skipped

    def _after_update(self) -> None:
        earlier, now = self._read_found_inf(self.steps)
        self.skipped_steps += earlier
        if now and self._phase == "clipped":  # a fused optimizer's step that was a scaler's skip
            self._phase = "skipped"
        if self._phase == "clipped":
            self.instruments.after_step()
        elif self._phase != "unseen":  # no optimizer stepped after backward (or update_skipped()): a scaler skipped it
            self.skipped_steps += 1
        if self._loss_scale is not None or self.skipped_steps:  # a count, as gradexp run logs it (it logged a 1 flag,
            self.instruments.pending["amp/skipped_steps"] = float(self.skipped_steps)  # which summary.json kept as is)
        values = self._collect()
        updated = self._phase == "clipped" or (self._phase == "unseen" and self._loss_scale is None)
        self._watch_for_nonfinite(values, updated=updated)
        self.writer.log(self.steps, values)
        for sink in self._callers_sinks:
            sink.log(self.steps, values)

    def _watch_for_nonfinite(self, values: dict[str, Any], updated: bool) -> None:
        """The first logged step whose loss, or whose gradient where the optimizer used it, is NaN/Inf: the run
        diverged (an AMP scaler's skipped step is no divergence: it threw that gradient away). The user's loop goes on;
        the summary says where it went wrong (not replayed: the Monitor cannot re-run the user's step)."""
        if self.outcome.nonfinite is not None:
            return
        watched = ["loss/train"] + (["grad_norm/total"] if updated else [])
        for tag in watched:
            value = values.get(tag)
            if isinstance(value, float) and not math.isfinite(value):
                self.outcome.nonfinite = {"step": self.steps, "phase": None, "layer": None, "tensor": tag,
                                          "replayed": False}
                return

    @contextlib.contextmanager
    def _optimizer_hooks(self) -> Iterator[None]:
        handles = [opt.register_step_pre_hook(self._pre_step) for opt in self.optimizers if self.step_hooks]
        try:
            yield
        finally:
            for handle in [*handles, *self._accumulate_hooks]:
                handle.remove()
            self._accumulated, self._accumulate_hooks = None, []

    # ---- what the user hands over ---------------------------------------------------------------------------

    def record(self, **values: Any) -> None:
        """Training metrics of this step, e.g. record(loss=loss, acc=acc) -> loss/train, acc/train (tensors stay on
        the device: no host sync; only logging steps transfer them)."""
        if self._phase == "idle":
            raise RuntimeError("Monitor.record() belongs inside `with monitor.step():`, the step it describes")
        if self._phase == "ordinary":
            return
        for name, value in values.items():
            self._recorded[f"{name}/train"] = _one_number(name, value)

    def clip_grad_norm_(self, parameters: Iterable[nn.Parameter], max_norm: float, norm_type: float = 2.0) -> Tensor:
        """torch.nn.utils.clip_grad_norm_, with the gradients read before it and the clip telemetry kept."""
        _positive("clip_grad_norm_(max_norm=...)", max_norm, finite=True)
        _positive("clip_grad_norm_(norm_type=...)", norm_type, finite=False)
        self.clip.mode, self.clip.max_norm, self.clip.norm_type = "norm", float(max_norm), float(norm_type)
        self.gradients_ready()
        self._clip_norm = self.clip.apply([p for p in parameters])
        return self._clip_norm

    def clip_grad_value_(self, parameters: Iterable[nn.Parameter], clip_value: float) -> None:
        """torch.nn.utils.clip_grad_value_, with the gradients read before it and the clip telemetry kept."""
        _positive("clip_grad_value_(clip_value=...)", clip_value, finite=True)
        self.clip.mode, self.clip.value = "value", float(clip_value)  # before the gradients are read: value mode counts entries
        self.gradients_ready()
        self.clip.apply([p for p in parameters])

    # ---- collection and the end ---------------------------------------------------------------------------

    def _collect(self) -> dict[str, Any]:
        """The step's values in one host transfer (under DDP, after one all_reduce for the per-shard quantities)."""
        values = {**self._recorded, **self.instruments.pending}
        self.instruments.pending, self._recorded = {}, {}
        if self.optimizers and "lr" not in values:  # no update announced (a scaler skipped it): the rate as it stands
            values["lr"] = float(self.optimizers[0].param_groups[0]["lr"])
        if _world() > 1:
            values = global_values(per_tag(values))
        return to_host(values)

    def close(self, error: Optional[BaseException] = None, interrupted: bool = False) -> Outcome:
        """Write summary.json (with the verdict) and close the TensorBoard files. `error`: the run failed;
        `interrupted`: it was stopped (Ctrl-C) before its loop ended."""
        if self._closed:
            return self.outcome
        if self._phase != "idle" and error is None and not interrupted:
            # "completed" with a step half taken, whose values were lost: refused. A preemption handler's
            # close(interrupted=True) (or close(error)) inside a step drops that step and ends the run (a review)
            raise RuntimeError("Monitor.close() inside `with monitor.step():`: close it after the step has ended, or "
                               "close(interrupted=True) to stop the run there (the open step is dropped)")
        self._closed = True
        for handle in self._count_hooks:
            handle.remove()
        self.skipped_steps += self._read_found_inf()[0]  # the ordinary steps since the last logging one
        self.outcome.steps = self.steps
        ended = "diverged" if self.outcome.nonfinite is not None else "completed"
        self.outcome.status = "failed" if error is not None else "interrupted" if interrupted else ended
        if error is not None:
            self.outcome.error = f"{type(error).__name__}: {error}"
        self.outcome.perf = {"amp_skipped_steps": self.skipped_steps}
        try:
            self.writer.close(raise_error=error is None)  # every logged step written before the summary is built
        except Exception as failed:  # a write failed on the writer thread: the run failed, its files still close
            self.outcome.status, self.outcome.error, error = "failed", f"{type(failed).__name__}: {failed}", failed
            write_error: Optional[BaseException] = failed
        else:
            write_error = None
        if self.writes:
            factors = Factors(family=OWN_FAMILY, depth=self._depths.model, activation=self._activation or "identity",
                              clip=self.clip.mode, theory_note="the user's own model (no theory for this model; it "
                              "covers gradexp's model=mlp only)")
            self.outcome.verdict = diagnose(self._summary.build(self.outcome), factors, DiagnoseConf())
        for sink in self.sinks:
            sink.close(self.outcome)
        if write_error is not None:
            raise write_error
        return self.outcome

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """A Ctrl-C inside the `with` is an interrupted run, not a completed one; an exception, a failed one, and so
        is sys.exit() with an error code (found by an adversarial test: 'completed'); sys.exit(0) ends it normally."""
        if isinstance(error, KeyboardInterrupt):
            self.close(interrupted=True)
        elif isinstance(error, SystemExit) and error.code in (0, None):
            self.close()
        else:
            self.close(error)


def _refuse_scaled_gradients(optimizer: torch.optim.Optimizer) -> None:
    """A fused optimizer (Adam(fused=True)) stepped by a GradScaler that has not unscaled its gradients divides the
    scale out inside its own kernel (the scaler hands it optimizer.grad_scale): every gradient read here is the scale
    times too large (found by an adversarial test: x1024, in silence). The README's recipe unscales first."""
    if getattr(optimizer, "grad_scale", None) is not None:
        raise RuntimeError("Monitor: the GradScaler stepped a fused optimizer on gradients it had not unscaled, which "
                           "the Monitor would read the scale times too large: call scaler.unscale_(optimizer) and "
                           "monitor.gradients_ready() before scaler.step(optimizer)")


def _parameters(optimizers: Iterable[torch.optim.Optimizer]) -> Iterator[Tensor]:
    return (p for optimizer in optimizers for group in optimizer.param_groups for p in group["params"])


def check_options(every: Any, probes: Sequence[str], activation: Optional[str]) -> None:
    """ConfigError for an `every`, `probes` or `activation` the Monitor (and the Lightning callback) cannot use."""
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError("every", every, "a whole number >= 1")
    if isinstance(probes, str):  # iterated, it named its first character as an unknown probe
        raise ConfigError("probes", probes, "a list of probe names, e.g. ['grad_norm']")
    for name in probes:
        if name not in PROBES:
            raise ConfigError("probes", name, f"one of {', '.join(PROBES)}")
    if activation is not None and activation not in ACTIVATIONS:  # else close() fails in the advice, no summary
        raise ConfigError("activation", activation, f"None | {' | '.join(ACTIVATIONS)}")


def _check_arguments(model: Any, run_dir: Any, watch: Any, optimizers: Any, sinks: Any, steps: Any, step_hooks: Any,
                     scaler: Any) -> tuple[list, list]:
    """ConfigError (one line) for an argument the Monitor cannot work with, before any folder is made: found by an
    adversarial test, each gave a traceback, some only at the first step, after the run folder existed. Returns the
    optimizers and the sinks as lists (an iterator is read once)."""
    if not isinstance(model, nn.Module):
        raise ConfigError("model", _argument(model), "an nn.Module")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise ConfigError("run_dir", _argument(run_dir), "a folder path, or None for runs/monitor-<time>")
    if run_dir is not None and os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError("run_dir", os.fspath(run_dir), "a new or empty folder (this is a file)")
    for name, value in (("watch", watch), ("optimizers", optimizers), ("sinks", sinks)):
        if isinstance(value, str) or (name != "optimizers" and not isinstance(value, Iterable)):
            raise ConfigError(name, _argument(value), "a list (a string would be read one character at a time)")
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    elif not isinstance(optimizers, Iterable) or isinstance(optimizers, nn.Module):
        raise ConfigError("optimizers", _argument(optimizers), "a torch.optim.Optimizer, or a list of them")
    optimizers, sinks = list(optimizers), list(sinks)
    for optimizer in optimizers:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError("optimizers", _argument(optimizer), "torch.optim.Optimizer objects")
    for sink in sinks:
        if not (callable(getattr(sink, "log", None)) and callable(getattr(sink, "close", None))):
            raise ConfigError("sinks", _argument(sink), "objects with log(step, values) and close(outcome)")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ConfigError("steps", _argument(steps), "a whole number >= 1, or None")
    if not isinstance(step_hooks, bool):
        raise ConfigError("step_hooks", _argument(step_hooks), "True | False")
    if scaler is not None and not all(callable(getattr(scaler, m, None)) for m in ("is_enabled", "get_scale")):
        raise ConfigError("scaler", _argument(scaler), "a torch.amp.GradScaler, or None")
    return optimizers, sinks


def _positive(name: str, value: Any, finite: bool) -> None:
    """A clip threshold as gradexp run's clip.* keys allow it: -1 reversed the gradients, NaN was taken."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and value > 0 and (value < math.inf or not finite)):
        raise ConfigError(name, _argument(value), "a finite number > 0" if finite else "a number > 0 (inf for the max)")


def _one_number(name: str, value: Any) -> Tensor:
    """A recorded value as a 0-d tensor (on its device: no host sync), or ConfigError for one that is not a single
    number: close() would fail on it, and the run's summary.json would never be written."""
    if isinstance(value, Tensor):
        # a complex value lost its imaginary part, a meta tensor failed when the step ended (adversarial test)
        if value.numel() == 1 and not value.is_complex() and not value.is_meta:
            return value.detach().reshape(())
    elif not isinstance(value, (str, bytes)):  # "1.5" was taken as a number (a bool is one: record(clipped=True))
        try:
            return torch.tensor(float(value))  # Python and numpy numbers, one-element arrays
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float's range (10**400)
            pass
    raise ConfigError(f"record({name}=...)", _argument(value), "a number or a one-element tensor (a per-example loss: "
                      "reduce it first, e.g. loss.mean())")


def _argument(value: Any) -> Any:
    """A refused argument or record() value as the one-line error shows it: a number, string or None as it is, a
    tensor by its shape, anything else by its type."""
    if value is None or isinstance(value, (int, float, str)):
        return value
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else f"a {type(value).__name__}"


def _refuse_a_used_folder(run_dir: str) -> None:
    """gradexp never writes over what it did not make: a folder holding a run's files is refused."""
    if run_artefacts(run_dir):
        raise ConfigError("run_dir", run_dir, "a new or empty folder (it already holds a run)")


def _world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def global_values(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each rank measured its own batch shard (equal shard sizes, as DDP's sampler makes them). DDP trains on the
    mean of the ranks' losses, so the global activation gradient is each rank's divided by the world size: its norm
    is sqrt(sum of squares) / world. Means, and the train metrics, average; a std pools its rank's second
    moment. Parameter gradients, the clip telemetry and update ratios are computed after DDP's all-reduce, the same
    on every rank, and are left alone. One all_reduce carries everything."""
    world = _world()
    squares = {t: v.double() ** 2 for t, v in values.items() if t.startswith("act_grad_norm/")}
    means = {t: v.double() for t, v in values.items() if t.startswith("act_mean/") or t.endswith("/train")}
    seconds = {t: values[t].double() ** 2 + values[f"act_mean/{t[len('act_std/'):]}"].double() ** 2
               for t in values if t.startswith("act_std/") and f"act_mean/{t[len('act_std/'):]}" in values}
    parts = {**{("sq", t): v for t, v in squares.items()}, **{("m", t): v for t, v in means.items()},
             **{("s", t): v for t, v in seconds.items()}}
    if not parts:
        return values
    flat = torch.stack([v.reshape(()) for v in parts.values()])
    torch.distributed.all_reduce(flat)  # sum over ranks
    summed = dict(zip(parts, flat.unbind()))
    out = dict(values)
    for (kind, tag), total in summed.items():
        if kind == "sq":
            out[tag] = total.sqrt() / world
        elif kind == "m":
            out[tag] = total / world
    for (kind, tag), total in summed.items():
        if kind == "s":
            mean = out[f"act_mean/{tag[len('act_std/'):]}"].double()
            out[tag] = (total / world - mean ** 2).clamp_min(0).sqrt()
    return out
