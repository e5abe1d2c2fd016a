"""Find and read run folders for `gradexp report`: a run folder holds `.hydra/` (Hydra's record of the job)
and/or `summary.json` (written by gradexp at every exit path). A job with `.hydra/` but no summary never
finished (still running, killed, or stopped by bad input) and is listed as `unfinished`.

A run folder is untrusted input (untrusted.py): a summary.json or .hydra/overrides.yaml that is no regular file,
too large, not JSON/YAML, or has a field of the wrong type (schema.py) makes its run `unreadable`, with one line
that says what is wrong (RunRecord.problem); the other runs are read as usual. Override values are the literal text
of the file (no interpolation is resolved), and every string from a run folder is kept printable (control characters
escaped) so that printing it cannot drive the terminal."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from gradexp.analysis.diagnose import depth_flow, time_flow
from gradexp.report import schema
from gradexp.report.untrusted import MEGABYTE, Unreadable, one_line, printable, read_text

SUMMARY = "summary.json"
ATTEMPT = re.compile(r"attempt-\d+")  # where a rerun moves an earlier attempt's files (training/resume.py)
OVERRIDES = os.path.join(".hydra", "overrides.yaml")
UNREADABLE = "unreadable"
# real summaries weigh kilobytes (a few hundred bytes per layer, ~25 per bptt time step): the caps only stop a file
# crafted to exhaust memory
SUMMARY_LIMIT = 8 * MEGABYTE
OVERRIDES_LIMIT = MEGABYTE


@dataclass
class RunRecord:
    path: str                          # relative to the folder the report was asked for
    overrides: dict[str, str]          # key -> value, from the command line of the job
    status: str                        # completed | diverged | interrupted | failed | unfinished | unreadable
    final: dict[str, Optional[float]] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)
    gain: Optional[float] = None       # per-layer gain of the step the verdict judged
    gains: dict[str, Optional[float]] = field(default_factory=dict)  # "first"/"last" -> per-layer gain at that step
    ratio: Optional[float] = None      # first/last ratio of that step
    steps_per_s: Optional[float] = None
    theory_gain: Optional[float] = None
    theory_measured: str = ""          # the step-0 measured gain theory is compared with, and its ~95 % interval
    theory_measured_gain: Optional[float] = None  # that gain alone: runs folded over seeds show its mean and spread
    profile: dict[str, list[float]] = field(default_factory=dict)  # "first"/"last" -> norm per hidden layer
    quantity: str = ""
    theory_profile: list[float] = field(default_factory=list)  # predicted norm per hidden layer at step 0
    time_gain: Optional[float] = None  # per-time-step gain of the recurrent layer the verdict judged
    time_gains: dict[str, Optional[float]] = field(default_factory=dict)  # "first"/"last" -> its gain then
    time_layer: str = ""               # that layer's name
    time_profile: dict[str, list[float]] = field(default_factory=dict)  # "first"/"last" -> ||dL/dh_t|| per t
    time_steps: dict[str, int] = field(default_factory=dict)  # "first"/"last" -> training step of that profile
    problem: str = ""                  # unreadable: what is wrong with the folder's files, one line


# the columns gradexp report writes besides the overrides (report/table.py row(), _factors)
REPORT_COLUMNS = frozenset({"run", "status", "loss/train", "loss/val", "acc/val", "gain", "first/last", "verdict",
                            "theory gain", "measured gain, step 0", "time gain", "steps/s", "evidence", "overrides"})


def find_runs(root: str) -> list[str]:
    """Every run folder at or below root, in sorted order (Hydra's job numbers sort the sweep)."""
    return walk_runs(root)[0]


def walk_runs(root: str) -> tuple[list[str], list[tuple[str, str]]]:
    """find_runs's folders, and each folder below root that could not be listed with the reason (its runs, if any,
    are left out: the report says so). Iterative, so a tree of any depth is walked; symbolic links to folders are
    not followed, and folders whose name starts with a dot (.hydra, .submitit: bookkeeping) are not runs; nor are a
    run's attempt-N/ folders, the files of an attempt a rerun moved aside (training/resume.py move_aside): they were
    listed as runs of their own (found by an adversarial test)."""
    found, unlisted, pending = [], [], [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as err:
            unlisted.append((folder, err.strerror or str(err)))
            continue
        names = {e.name for e in entries}
        is_run = SUMMARY in names or any(e.name == ".hydra" and e.is_dir() for e in entries)
        if is_run:
            found.append(folder)
        pending.extend(e.path for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
                       and not (is_run and ATTEMPT.fullmatch(e.name)))
    return sorted(found, key=_natural), unlisted


def _natural(path: str) -> list:
    """'multirun/x/10_a' after 'multirun/x/9_a'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def load_summary(folder: str) -> Optional[dict[str, Any]]:
    """A run folder's summary.json, or None where there is none (yet). Written by any version of gradexp: a summary
    from before schema versions reads as version 1 (its verdict has no at_init/at_end; the report falls back to the
    step whose gain is farthest from 1). Unreadable (a ValueError, one line naming the file) where it is no regular
    file, not JSON, a field the report reads has the wrong type, or it is of a newer version than this gradexp
    knows: its fields may mean something else."""
    from gradexp.sinks.summary import SCHEMA_VERSION

    path = os.path.join(folder, SUMMARY)
    text = read_text(path, SUMMARY_LIMIT)
    if text is None:
        return None
    try:
        summary = json.loads(text)
        _check_version(summary, SCHEMA_VERSION)  # first: a newer file's fields may have other types
        schema.check(summary)
    except Unreadable as err:
        raise Unreadable(f"{printable(path)}: {err}") from None
    except RecursionError:
        raise Unreadable(f"{printable(path)}: nested too deeply (allowed: the fields gradexp writes)") from None
    except ValueError as err:  # cut short, or not JSON at all
        raise Unreadable(f"{printable(path)}: not valid JSON ({one_line(err)})") from None
    summary.setdefault("schema_version", 1)
    return summary


def _check_version(summary: Any, known: int) -> None:
    version = summary.get("schema_version", 1) if isinstance(summary, dict) else 1
    if isinstance(version, int) and not isinstance(version, bool) and version > known:
        raise Unreadable(f"schema_version {version!r} is not one this gradexp reads (allowed: 1 … {known}; "
                         "upgrade gradexp)")


def load_run(folder: str, root: str) -> RunRecord:
    """The run in `folder`; status `unreadable` (and `problem` saying why) where its files cannot be trusted."""
    relative = os.path.relpath(folder, root)
    # the report of one run folder names the run by its folder, not "."
    path = printable(os.path.basename(os.path.abspath(folder)) if relative == os.curdir else relative)
    try:
        return _read_run(folder, path)
    except Unreadable as err:  # its overrides still name it, where .hydra/ can be read
        return RunRecord(path=path, overrides=_overrides_if_readable(folder), status=UNREADABLE,
                         problem=printable(str(err)))


def _overrides_if_readable(folder: str) -> dict[str, str]:
    try:
        return _as_dict(_hydra_overrides(folder))
    except Unreadable:
        return {}


def _read_run(folder: str, path: str) -> RunRecord:
    summary = load_summary(folder)
    overrides = summary.get("overrides") if summary else None
    if overrides is None:
        overrides = _hydra_overrides(folder)
    record = RunRecord(path=path, overrides=_as_dict(overrides),
                       status=printable(summary.get("status") or "unfinished") if summary else "unfinished")
    if summary:
        try:
            _fill(record, summary)
        except (ArithmeticError, ValueError) as err:  # numbers of the right type, but past what a float can take
            raise Unreadable(f"{printable(os.path.join(folder, SUMMARY))}: a measurement is out of range "
                             f"({one_line(err)})") from None
    return record


def _fill(record: RunRecord, summary: dict[str, Any]) -> None:
    record.final = summary.get("final") or {}
    record.verdict = {k: printable(v) if isinstance(v, str) else v for k, v in (summary.get("verdict") or {}).items()}
    record.steps_per_s = (summary.get("perf") or {}).get("steps_per_s")
    record.theory_gain = (summary.get("theory") or {}).get("predicted_gain")
    record.theory_measured = measured_with_spread(summary.get("theory") or {})
    measured = (summary.get("theory") or {}).get("measured_gain")
    record.theory_measured_gain = float(measured) if isinstance(measured, (int, float)) else None
    flow = depth_flow(summary)
    if flow is not None:
        when = judged_step(summary, flow)
        record.gain, record.ratio = flow.gain[when], flow.ratio[when]
        record.gains = dict(flow.gain)
        record.quantity = flow.quantity
        record.profile = layer_profile(summary["layers"], flow.quantity)
    per_layer = (summary.get("theory") or {}).get("per_layer") or {}
    record.theory_profile = [_num(entry.get("predicted")) for entry in per_layer.values()]
    _fill_time(record, summary)


def layer_profile(layers: list[dict[str, Any]], quantity: str) -> dict[str, list[float]]:
    """'first'/'last' -> each layer's `quantity`, NaN (drawn blank) where a layer has none: a frozen first layer takes
    in no gradient and has no norm (depth_flow starts after it); the others keep their place on the depth axis
    (found by a user: a Monitor run whose first layer was frozen made the report a KeyError traceback)."""
    return {w: [_num((layer.get(quantity) or {}).get(w)) for layer in layers] for w in ("first", "last")}


def judged_step(summary: dict[str, Any], flow: Any) -> str:
    """'first' | 'last': the logged step whose verdict decided the label (verdict.decided_by); summaries written
    before verdicts had it: the step whose gain is farthest from 1."""
    decided = (summary.get("verdict") or {}).get("decided_by")
    return {"at_init": "first", "at_end": "last"}.get(decided) or flow.worst()


def measured_with_spread(theory: dict[str, Any]) -> str:
    """'0.565 (95 % 0.52–0.61)': the measured step-0 gain with its interval (flow.gain_spread), '' without one."""
    measured, spread = theory.get("measured_gain"), theory.get("measured_gain_spread") or {}
    if measured is None:
        return ""
    low, high = spread.get("interval95") or (None, None)
    return f"{measured:.3g}" + (f" (95 % {low:.3g}–{high:.3g})" if low is not None else "")


def _fill_time(record: RunRecord, summary: dict[str, Any]) -> None:
    """Recurrent runs: the per-time-step profile (summary["bptt"]) of the layer whose gain through time is
    farthest from 1, at the first and the last logged bptt step."""
    flow = time_flow(summary)
    if flow is None:
        return
    record.time_gain, record.time_gains = flow.gain[judged_step(summary, flow)], dict(flow.gain)
    record.time_layer = flow.quantity.split("/", 1)[1]
    per_step = summary["bptt"][record.time_layer]
    record.time_profile = {w: [_num(v) for v in per_step[w]] for w in ("first", "last") if per_step.get(w)}
    record.time_steps = {w: per_step[f"{w}_step"] for w in record.time_profile if f"{w}_step" in per_step}


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _hydra_overrides(folder: str) -> list[str]:
    """The job's command-line overrides as Hydra recorded them: a YAML list of strings, read as plain YAML (OmegaConf
    would resolve `${oc.env:HOME}` in a crafted one: the report shows the text, and runs nothing)."""
    import yaml

    if os.path.islink(os.path.join(folder, ".hydra")):  # O_NOFOLLOW guards the file's own name, not its folder's
        raise Unreadable(f"{printable(os.path.join(folder, '.hydra'))} is a symbolic link (allowed: a folder)")
    path = os.path.join(folder, OVERRIDES)
    text = read_text(path, OVERRIDES_LIMIT)
    try:
        overrides = yaml.safe_load(text) if text else []
    except yaml.YAMLError as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None) or "unparsable"
        at = f", line {mark.line + 1}" if mark is not None else ""
        raise Unreadable(f"{printable(path)}: not valid YAML ({problem}{at})") from None
    except RecursionError:
        raise Unreadable(f"{printable(path)}: nested too deeply (allowed: a list of strings)") from None
    if overrides is None:
        return []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise Unreadable(f"{printable(path)}: not a list of strings (allowed: Hydra's `- key=value` lines)")
    return overrides


def _as_dict(overrides: list[str]) -> dict[str, str]:
    """['activation=relu', '+experiment=x'] -> {'activation': 'relu', 'experiment': 'x'}, printable. A key named like
    one of the report's own columns (a crafted `run=x`) is renamed `run (override)`: it neither hides nor replaces
    the run's name or results."""
    pairs = (printable(o).lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    return {(f"{key} (override)" if key in REPORT_COLUMNS else key): value for key, value in pairs}


def varying_keys(records: list[RunRecord]) -> list[str]:
    """Override keys whose value differs across the runs (absent counts as a value), in first-seen order. Unreadable
    runs, whose overrides are unknown, vary nothing."""
    records = [r for r in records if not r.problem] or records
    keys = list(dict.fromkeys(k for r in records for k in r.overrides))
    return [k for k in keys if len({r.overrides.get(k) for r in records}) > 1]
