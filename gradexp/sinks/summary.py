"""summary.json: the run's result for other tools (fields fixed by the design). Written atomically
(temp file + rename) so a reader never sees half a file, at every exit path."""
from __future__ import annotations

import copy
import json
import math
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from gradexp.analysis.flow import ACT_STATS, ATTENTION_STATS, layer_quantities
from gradexp.outcome import Outcome
from gradexp.sinks.files import write_atomically
from gradexp.sinks.state import json_like, named, number, numbers

if TYPE_CHECKING:  # an annotation only: theory imports torch, which `gradexp run --help` (via resume) needs not
    from gradexp.analysis.theory import Baseline

# 1: runs before versions were recorded (no schema_version field); 2: verdict.at_init/at_end, perf.torch_threads.
# Bump it when a field other tools read changes meaning; gradexp.report.runs.load_summary reads every version up to it.
SCHEMA_VERSION = 2
FINAL_KEYS = ("loss/train", "acc/train", "loss/val", "acc/val", "bpc/train", "bpc/val")  # bpc: data=text only
SUMMARY_NAME = "summary.json"
BPTT_PREFIX = "bptt_grad_norm/"
UNDERFLOW_PREFIX = "amp/underflow/"
# given at construction, and what tuples of tags were seen (a cache); everything else is run state
_SETTINGS = ("path", "overrides", "layer_names", "depths", "baseline", "constant_loss", "_firsts")
FIRSTS = 16  # distinct tuples of tags remembered as seen (a run has a few); beyond, start over


class _Routes(NamedTuple):
    """Which tags of a logging step the summary reads, for one tuple of tags (worked out once, not at every step)."""
    final: tuple[str, ...]               # FINAL_KEYS present
    bptt: tuple[tuple[str, str], ...]    # (tag, layer) of each per-time-step profile
    underflow: tuple[tuple[str, str], ...]  # (tag, layer) of each amp/underflow share

    @classmethod
    @lru_cache(maxsize=16)  # a run logs a few distinct tuples of tags (ordinary, evaluation and first steps)
    def of(cls, tags: tuple[str, ...]) -> "_Routes":
        return cls(tuple(key for key in FINAL_KEYS if key in tags),
                   tuple((tag, tag[len(BPTT_PREFIX):]) for tag in tags if tag.startswith(BPTT_PREFIX)),
                   tuple((tag, tag[len(UNDERFLOW_PREFIX):]) for tag in tags if tag.startswith(UNDERFLOW_PREFIX)))


# the accumulated fields of a SummarySink (state_dict: everything but _SETTINGS) -> the shape its values must have
_STATE_FIELDS = {
    "latest": named(lambda v: number(v) or numbers(v)),  # 1-d profiles (bptt) are lists
    "first_step": lambda v: v is None or (type(v) is int and v >= 0),
    "initial": named(number), "first": named(number), "last": named(number), "underflow_max": named(number),
    "profiles": named(named(lambda v: number(v) or numbers(v))),  # layer -> first/last lists and their steps
    "theory": lambda v: v is None or (isinstance(v, dict) and json_like(v)),
}


class SummarySink:
    def __init__(self, run_dir: str, overrides: list[str], layer_names: list[str], baseline: Optional[Baseline] = None,
                 depths: Optional[list[int]] = None, constant_loss: Optional[float] = None):
        self.path = os.path.join(run_dir, SUMMARY_NAME)
        self.constant_loss = constant_loss  # the task's loss of the best input-blind prediction: initial.loss/constant
        self.overrides, self.layer_names, self.baseline = overrides, layer_names, baseline
        # each layer's depth where the watched layers skip some (probes.layers.depths_of): each entry's "index"
        self.depths = dict(zip(layer_names, depths)) if depths and depths != list(range(len(layer_names))) else {}
        self.latest: dict[str, float] = {}
        self.initial: dict[str, float] = {}  # FINAL_KEYS at the step they were first logged: did the run train?
        self.first: dict[str, float] = {}    # per-layer quantities at the first logged step (first_step)
        self.first_step: Optional[int] = None  # that step: 0, or later where a loss scaler skipped the first ones
        self.last: dict[str, float] = {}
        self.profiles: dict[str, dict[str, list]] = {}  # layer -> {"first": [...], "last": [...]}
        self.theory: Optional[dict[str, Any]] = None  # the baseline beside the first complete step; null without one
        self.underflow_max: dict[str, float] = {}  # layer -> the largest amp/underflow share logged (mixed precision)
        self._firsts: set[tuple[str, ...]] = set()  # tuples of tags whose per-layer quantities are all in `first`

    def log(self, step: int, values: dict) -> None:
        self.latest.update(values)
        tags = tuple(values)
        routes = _Routes.of(tags)
        for key in routes.final:
            self.initial.setdefault(key, values[key])
        per_layer = layer_quantities(values, self.layer_names)
        skipped = _skipped_overflow(values, per_layer, routes.bptt)
        for tag, layer in routes.bptt:  # full per-time-step profile at the first and last logged step
            entry = self.profiles.setdefault(layer, {"first": values[tag], "first_step": step})
            if not skipped and _overflowed(entry["first"]):  # the first was a skipped step's: this one replaces it
                entry.update(first=values[tag], first_step=step)
            entry.update(last=values[tag], last_step=step)
        for tag, layer in routes.underflow:
            self.underflow_max[layer] = max(values[tag], self.underflow_max.get(layer, 0.0))
        if self.baseline is not None and self.theory is None and not skipped and self.baseline.complete(values):
            self.theory = self.baseline.section(step, values)
        if per_layer and not skipped and self.first_step is None:
            # the first step whose values count: they replace what skipped steps left in `first` (kept there, so
            # that a run whose every logged step was skipped still has its entries: "no finite norms")
            self.first.update(per_layer)
            self.first_step, self._firsts = step, {tags}
        elif tags not in self._firsts:  # a tuple of tags seen before brings nothing new to `first`
            for key, value in per_layer.items():
                self.first.setdefault(key, value)
            if len(self._firsts) >= FIRSTS:  # forgetting costs only the setdefaults above, once more
                self._firsts.clear()
            if not skipped:
                self._firsts.add(tags)
        self.last.update(per_layer)

    def state_dict(self) -> dict[str, Any]:
        """Everything accumulated so far (not the settings), so a resumed run reports the same first/last/final
        values; goes into checkpoint.pt. Generic, so values tracked later are carried over too."""
        return copy.deepcopy({k: v for k, v in vars(self).items() if k not in _SETTINGS})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The accumulated fields of state_dict, each checked for its shape: a checkpoint is untrusted input, and a
        forged one must not set a setting (a `path` would send summary.json elsewhere) or plant a value that fails
        only when the run ends. ValueError names the first field that does not fit."""
        if not isinstance(state, dict):
            raise ValueError(f"the summary's state is a {type(state).__name__}, not a mapping")
        state = dict(state)
        if isinstance(state.get("sections"), dict):  # checkpoints written before the theory section was the summary's own
            state["theory"] = state.pop("sections").get("theory")
        for key, value in state.items():
            check = _STATE_FIELDS.get(key)
            if check is None or not check(value):
                raise ValueError(f"the summary's state has {'an unknown field' if check is None else 'a bad'} {key!r}")
        self._firsts = set()  # `first` is replaced
        if "first_step" not in state and state.get("first"):  # a checkpoint from before first_step: its first is
            state["first_step"] = 0                           # final (a resumed run must not take it for provisional)
        for key, value in state.items():
            setattr(self, key, copy.deepcopy(value))

    def close(self, outcome: Outcome) -> None:
        write_json_atomic(self.path, self.build(outcome))

    def build(self, outcome: Outcome) -> dict[str, Any]:
        summary = {
            "schema_version": SCHEMA_VERSION,
            "status": outcome.status,
            "steps": outcome.steps,
            "overrides": self.overrides,
            "initial": {**{k: _finite_or_none(v) for k, v in self.initial.items()},
                        **({} if self.constant_loss is None else {"loss/constant": _finite_or_none(self.constant_loss)})},
            "final": {k: _finite_or_none(self.latest[k]) for k in FINAL_KEYS if k in self.latest},
            "layers": [self._layer_entry(name) for name in self.layer_names],
            "nonfinite": outcome.nonfinite,
            "verdict": outcome.verdict,
            "perf": outcome.perf,
        }
        if self.first_step and self.first_step < max(outcome.steps, 1):  # a scaler skipped the first logged steps:
            summary["first_step"] = self.first_step  # `first` is from this one (a checkpoint's beyond the run: forged)
        if self.profiles:
            summary["bptt"] = {layer: {k: _finite_list(v) for k, v in entry.items()} for layer, entry in self.profiles.items()}
        clip = {k: _finite_or_none(v) for k, v in self.latest.items() if k.startswith("clip/")}
        if clip:
            summary["clip"] = clip  # the last logged clip telemetry
        amp = {k[len("amp/"):]: _finite_or_none(v) for k, v in self.latest.items()
               if k.startswith("amp/") and not k.startswith(UNDERFLOW_PREFIX)}
        if amp.get("skipped_steps") is not None:
            amp["skipped_steps"] = int(amp["skipped_steps"])  # a count (logged as a float, as every scalar is)
        if amp or self.underflow_max:
            amp["underflow_max"] = dict(self.underflow_max)  # per layer, over every logged step
            summary["amp"] = amp  # the last logged loss scale and skipped-step count, and the worst underflow
        summary["theory"] = copy.deepcopy(self.theory)
        if outcome.error:
            summary["error"] = outcome.error
        return summary

    def _layer_entry(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name}
        if name in self.depths:
            entry["index"] = self.depths[name]
        for quantity in ("grad_norm", "act_grad_norm", *ACT_STATS, *ATTENTION_STATS):
            key = f"{quantity}/{name}"
            if key in self.first:
                entry[quantity] = {"first": _finite_or_none(self.first[key]), "last": _finite_or_none(self.last[key])}
        return entry


def _skipped_overflow(values: dict, per_layer: dict[str, float], bptt: tuple = ()) -> bool:
    """A step a loss scaler skipped because its gradients overflowed at the scale: its per-layer norms (and bptt
    profiles) hold that overflow's inf, which says nothing about the model, and the scaler threw it away. `first`
    comes from the first step with finite norms (fp16 with a large initial scale skips a few; found by a researcher:
    "no finite norms")."""
    return values.get("amp/skipped_steps", 0) > 0 and (
        not all(math.isfinite(v) for v in per_layer.values()) or any(_overflowed(values[tag]) for tag, _ in bptt))


def _overflowed(profile: Any) -> bool:
    """A per-time-step profile (a list) or a number holding an inf or NaN."""
    return not all(math.isfinite(v) for v in (profile if isinstance(profile, list) else [profile]))


def _finite_or_none(value: float) -> Optional[float]:
    """JSON has no NaN/Inf; a non-finite number is recorded as null (the status says why)."""
    return value if math.isfinite(value) else None


def _finite_list(value: Any) -> Any:
    return [_finite_or_none(v) for v in value] if isinstance(value, list) else value


def read_summary(run_dir: str) -> Optional[dict[str, Any]]:
    """The run folder's summary.json, or None when it has none or it cannot be read as an object (a folder is
    untrusted input: a FIFO by that name would block the open; nesting deeper than the parser's stack raises
    RecursionError)."""
    path = os.path.join(run_dir, SUMMARY_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return summary if isinstance(summary, dict) else None


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    def write(f) -> None:
        json.dump(payload, f, indent=2)
        f.write("\n")
    write_atomically(path, write)
