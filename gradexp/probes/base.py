"""The probe protocol and the Instruments object the training loop talks to.

A probe measures one family of quantities. It is consulted only on logging steps: hooks it needs exist
only inside `watch` (forward + backward of a logging step), and every value it returns is a 0-d tensor
left on the model's device, so nothing synchronises with the host until Instruments.collect(); or a Python float
where the value was computed from numbers on the host already (CPU norms, probes/norms.py host_norms).
A value is usually 0-d (one scalar per tag); a probe may return a 1-d tensor for a profile (e.g. one norm per
time step), which reaches the sinks as a list of floats. Several tags measured together (one norm per parameter)
may come as one 1-d tensor under a tuple of tags, one entry each: handed on whole, it costs no unbind and no
re-stacking (each a visible share of a small model's logging step); the sinks see one float per tag. A 2-d tensor
under a tuple of tags is one row per tag (histograms), which the sinks see as a list of floats each.

Hooks are made once (`Hooks`) and attached to their modules only for the forward and backward of a logging step:
outside it a module holds none of them, so ordinary steps take PyTorch's hook-free fast path, do no work, cause no
host sync, and a compiled model never sees them (no graph break, no recompile)."""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

Scalars = dict[str, Tensor]
_TAGS: dict[tuple, tuple[str, ...]] = {}
_PARAMS: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()
_NAMES: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()
_ALIASES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """model.named_parameters(), walked once per model: a module-tree walk costs tens of microseconds, and a
    logging step needs the list several times (the set of parameters never changes after build)."""
    if model not in _PARAMS:
        _PARAMS[model] = list(model.named_parameters())
    return _PARAMS[model]


def parameter_names(model: nn.Module) -> list[str]:
    """The names of named_parameters(model), listed once per model."""
    found = _NAMES.get(model)
    if found is None:
        found = _NAMES[model] = [name for name, _ in named_parameters(model)]
    return found


def tied_names(model: nn.Module) -> dict[str, list[str]]:
    """Tied parameters: the name named_parameters(model) lists each under -> the other names it has ({} for most
    models). torch lists a parameter once, under its first name: a language model whose head shares the embedding's
    weight has no `head.weight`, and the head layer's per-layer quantities would miss the gradient it owns."""
    found = _ALIASES.get(model)
    if found is None:
        first: dict[int, str] = {}
        found = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            known = first.setdefault(id(p), name)
            if known != name:
                found.setdefault(known, []).append(name)
        _ALIASES[model] = found
    return found


def with_tied(model: nn.Module, prefix: str, names: Sequence[str], values: Tensor) -> Scalars:
    """The entry {(prefix + name,): values} for the names, and one more for the tied names of those parameters
    (tied_names), with the same values: `head.weight`'s tag reads the embedding weight's number."""
    entry = {tags(prefix, names): values}
    aliases = tied_names(model)
    if aliases:
        at = [(i, alias) for i, name in enumerate(names) for alias in aliases.get(name, ())]
        if at:
            entry[tags(prefix, [alias for _, alias in at])] = values[[i for i, _ in at]]
    return entry


def tags(prefix: str, names: Sequence[str]) -> tuple[str, ...]:
    """(prefix + name for each name), made once per distinct list: a logging step names the same parameters and layers
    every time, and building ~50 tag strings anew each step is a visible share of a small model's logging step."""
    key = (prefix, *names)
    found = _TAGS.get(key)
    if found is None:
        found = _TAGS[key] = tuple(prefix + name for name in names)
    return found


class Hooks:
    """Forward (pre-)hooks registered once and attached only inside `attached()`: re-inserting a made hook into the
    module's hook table costs ~0.1 us where registering and removing a new one costs several (a RemovableHandle,
    weak references): a visible share of a small model's logging step. The table is the one torch's own handle
    removes from (Module._forward_hooks / _forward_pre_hooks), keyed by the handle's id, so the hooks run exactly as
    registered ones do."""

    def __init__(self) -> None:
        self.entries: list[tuple[dict, int, Any]] = []  # (the module's hook table, handle id, hook)

    def forward(self, module: nn.Module, hook: Any) -> None:
        guarded = only_on(module, hook)
        self._made(module.register_forward_hook(guarded), guarded)

    def forward_pre(self, module: nn.Module, hook: Any) -> None:
        guarded = only_on(module, hook)
        self._made(module.register_forward_pre_hook(guarded), guarded)

    def _made(self, handle: Any, hook: Any) -> None:
        self.entries.append((handle.hooks_dict_ref(), handle.id, hook))
        handle.remove()  # made, not attached: attached() puts it in

    def attached(self) -> "Hooks":
        """A context manager: the hooks are in their modules' tables inside the `with`, out again after it, whatever
        happens inside. The Hooks object itself (no generator to make and step through each logging step)."""
        return self

    def __enter__(self) -> None:
        for table, key, hook in self.entries:
            table[key] = hook

    def __exit__(self, *exc: Any) -> None:
        for table, key, _ in self.entries:
            table.pop(key, None)


def only_on(module: nn.Module, hook: Any) -> Any:
    """The module hook, run for `module` only. copy.deepcopy of a model while the hooks are in its tables (a teacher or
    EMA model made at a logging step) copies them into the copy's tables for good (a function is copied as itself),
    where they pooled the copy's outputs with the model's at every later logging step (found by a researcher). In a
    copy's table the hook takes itself out at its first call (torch runs a snapshot of the table: safe)."""
    def guarded(called: nn.Module, *args: Any) -> Any:
        if called is module:
            return hook(called, *args)
        for table in (called._forward_hooks, called._forward_pre_hooks):
            for key in [key for key, entry in table.items() if entry is guarded]:
                del table[key]
        return None
    return guarded


@contextlib.contextmanager
def removed_on_exit(handles: list) -> Iterator[None]:
    """Hooks (RemovableHandles) that live only inside the `with`: removed on exit, whatever happens inside."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class ProbeContext:
    """What the run factory hands every probe kind (gradexp/config/registry.py PROBES) to build itself from: plain
    values and the layer list, never the config."""
    layers: list  # (name, module) to watch, forward order (probes/layers.py)
    activation: Optional[str] = None  # the activation option's name, for saturation rules; None: unknown
    clip: Any = None  # the clip policy in force (mode, max_norm, value, counters), or None
    precision: Any = None  # the run's precision (dtype, scale(), skipped), or None for plain fp32
    loss_scale: Optional[Callable[[], Optional[Tensor]]] = None  # gradexp.Monitor: the user's GradScaler's scale

    def unscaled(self, grad: Tensor) -> Tensor:
        """A gradient a tensor hook saw, divided by the loss scale (hooks fire before the optimizer's
        gradients are unscaled), detached. In float32: the scaled value may fit fp16 where the true one does not. Read
        before the scaler's update moves the scale (a logging step's after_backward)."""
        if self.precision is not None:
            scale = self.precision.scale()
        else:
            scale = None if self.loss_scale is None else self.loss_scale()
        return grad if scale is None else grad.detach().float() / scale


class Probe:
    """Override the phases you need; each returns tag -> 0-d (or 1-d profile) tensor."""

    @classmethod
    def from_context(cls, context: ProbeContext) -> Optional["Probe"]:
        """The probe for this run, or None where it does not apply."""
        return cls()

    def begin(self, step: int) -> None:  # a logging step starts; probes with their own interval decide here
        pass

    def reference(self, model: nn.Module, loss_fn: Any) -> None:  # before the forward: loss_fn() = fp32 loss of the batch
        pass

    def watch(self, model: nn.Module) -> ContextManager:
        return contextlib.nullcontext()

    def after_backward(self, model: nn.Module) -> Scalars:  # gradients as computed, before clipping
        return {}

    def after_clip(self, model: nn.Module, clip_norm: Optional[Tensor]) -> Scalars:  # before optimizer.step
        return {}

    def after_step(self, model: nn.Module) -> Scalars:  # after optimizer.step
        return {}


class Instruments:
    """Runs the probes due at a logging step through its phases and gathers their tensors.

    Each probe has its own interval (`log.probes`): it runs on the steps that are a multiple of it, and on the
    last step; 0 turns it off. A probe not due this step does no work at all."""

    def __init__(self, probes: list[Probe], model: nn.Module, intervals: Optional[list[int]] = None,
                 last_step: int = -1):
        self.schedule = list(zip(probes, intervals or [1] * len(probes)))
        self.model, self.last_step = model, last_step
        self.probes: list[Probe] = []  # due at the current logging step
        self.watching: list[Probe] = []  # of those, the ones with hooks to attach
        self.pending: Scalars = {}

    def begin(self, step: int) -> None:
        self.probes = [p for p, every in self.schedule if every and (step % every == 0 or step == self.last_step)]
        self.watching = [p for p in self.probes if type(p).watch is not Probe.watch]
        for probe in self.probes:
            probe.begin(step)

    def reference(self, loss_fn: Any) -> None:
        for probe in self.probes:
            probe.reference(self.model, loss_fn)

    def watch(self) -> ContextManager:
        if not self.watching:
            return contextlib.nullcontext()
        if len(self.watching) == 1:
            return self.watching[0].watch(self.model)
        return self._watch_all()

    @contextlib.contextmanager
    def _watch_all(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for probe in self.watching:
                stack.enter_context(probe.watch(self.model))
            yield

    def after_backward(self) -> None:
        for probe in self.probes:
            self.pending.update(probe.after_backward(self.model))

    def after_clip(self, clip_norm: Optional[Tensor]) -> None:
        for probe in self.probes:
            self.pending.update(probe.after_clip(self.model, clip_norm))

    def after_step(self) -> None:
        for probe in self.probes:
            self.pending.update(probe.after_step(self.model))

    def collect(self, extra: dict, defer: bool = False) -> dict[str, Any]:
        """The one host transfer of a logging step: every pending value (and `extra`) to Python floats. `defer`: values
        still computed on a helper thread stay Deferred, for the sinks' writer thread to wait for (`resolved`)."""
        values = {**extra, **self.pending}
        self.pending = {}
        return to_host(values, defer)


class Deferred:
    """A probe's values still being computed on a helper thread (probes/aside.py): `result()` waits for them, {tag:
    tensor} as a probe returns them. to_host resolves it where it stands; Instruments.collect(defer=True) leaves it to
    the sinks' writer thread (sinks/writer.py), so the training thread does not wait for it."""

    def __init__(self, future: Any) -> None:
        self.future = future

    def result(self) -> Scalars:
        return self.future.result()


def resolved(values: dict) -> dict:
    """`values` with each Deferred replaced, where it stands, by its host numbers (to_host of its result)."""
    if not any(isinstance(v, Deferred) for v in values.values()):
        return values
    out: dict = {}
    for key, v in values.items():
        if isinstance(v, Deferred):
            out.update(to_host(v.result()))
        else:
            out[key] = v
    return out


def to_host(values: dict, defer: bool = False) -> dict[str, float | list[float]]:
    """One device->host copy per device for everything: 0-d tensors become floats, 1-d profiles lists of floats, a
    tuple of tags with its 1-d tensor one float per tag (with its 2-d one, one row per tag); Python numbers pass
    through. A device's 0-d values go in one stack and join the 1-d ones in one cat; mixed dtypes promote (to float64
    when a norm is there, probes/norms.py), and float32 values become Python floats exactly, so a norm below
    float32's normal range reaches summary.json exactly. A Deferred is waited for and read where it stands, or with
    `defer` left as it is (for `resolved`)."""
    by_device: dict[torch.device, list] = {}
    out: dict = {}
    for key, v in values.items():
        if isinstance(v, Tensor):
            by_device.setdefault(v.device, []).append(key)
        elif isinstance(v, Deferred):
            out[key] = v if defer else to_host(v.result())
        else:
            out[key] = float(v)
    for keys in by_device.values():
        out.update(_read(keys, [values[k] for k in keys]))
    ordered: dict[str, float | list[float]] = {}
    for key in values:  # the caller's order
        if isinstance(key, tuple) and not isinstance(out[key], Deferred):
            ordered.update(out[key])
        else:
            ordered[key] = out[key]
    return ordered


def _read(keys: list, tensors: list[Tensor]) -> dict:
    """Tensors of one device -> host numbers, in one copy. A tuple key maps to {tag: float}."""
    if tensors[0].device.type == "cpu":
        return _read_host(keys, tensors)
    return _read_device(keys, tensors)


def _read_device(keys: list, tensors: list[Tensor]) -> dict:
    """_read off the host: everything in one flat tensor, copied to the host once."""
    scalars = [i for i, t in enumerate(tensors) if t.dim() == 0]
    rest = [i for i, t in enumerate(tensors) if t.dim() != 0]
    parts = ([torch.stack([tensors[i] for i in scalars])] if scalars else []) + [tensors[i].reshape(-1) for i in rest]
    flat = (parts[0] if len(parts) == 1 else torch.cat(parts)).detach()
    flat = (flat if flat.dtype == torch.float64 else flat.double()).tolist()  # (sum of numels,)
    out = dict(zip((keys[i] for i in scalars), flat))
    at = len(scalars)
    for i in rest:
        n, key = tensors[i].numel(), keys[i]
        if not isinstance(key, tuple):
            out[key] = flat[at:at + n]
        elif tensors[i].dim() == 2:  # one row per tag
            width = tensors[i].shape[1]
            out[key] = {tag: flat[at + r * width:at + (r + 1) * width] for r, tag in enumerate(key)}
        else:
            out[key] = dict(zip(key, flat[at:at + n]))
        at += n
    return out


def _read_host(keys: list, tensors: list[Tensor]) -> dict:
    """CPU tensors are host memory already: each one's tolist() reads it with no copy, no stack and no dtype
    conversion (float32 -> Python float is exact), a third of the operators the one-copy path needs."""
    out: dict = {}
    for key, t in zip(keys, tensors):
        t = t.detach() if t.requires_grad else t
        value = (t if t.is_floating_point() else t.double()).tolist()
        if isinstance(key, tuple):
            out[key] = dict(zip(key, value))
        else:
            out[key] = value
    return out


def per_tag(values: dict) -> dict:
    """The values with every tuple-keyed vector split into one 0-d tensor per tag, and every Deferred waited for (its
    tensors, one per tag), for code that reads tags."""
    out: dict = {}
    for key, v in values.items():
        if isinstance(v, Deferred):
            out.update(per_tag(v.result()))
        elif isinstance(key, tuple):
            out.update(zip(key, v.unbind()))
        else:
            out[key] = v
    return out
