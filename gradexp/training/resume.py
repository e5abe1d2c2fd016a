"""`gradexp run resume=<run folder>`: continue an interrupted run in place, with the config it started with.

Two halves. Before Hydra starts, `gradexp.cli.argv.hydra_args` rewrites the command line: the run's own overrides
(from its .hydra/overrides.yaml, as far as `trusted_overrides` here trusts them), the folder as hydra.run.dir, and
hydra.output_subdir=null so Hydra does not rewrite the run's .hydra/ record. Inside the run, `prepare` refuses a folder that already
holds a result (re-running never overwrites), refuses overrides that change the saved config, and
loads the checkpoint."""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf

from gradexp.config.registry import MODELS
from gradexp.config.schema import GROUPS, ConfigError, first_line, is_schema_key, names_users_class
from gradexp.sinks.summary import SUMMARY_NAME, read_summary
from gradexp.training.artefacts import run_artefacts

PREFIX = "resume="
FINISHED = ("completed", "diverged")  # a run with one of these has nothing left to do
QUOTES = "'\""  # around an override's value
YAML_LIMIT = 1 << 20  # characters of a run folder's .hydra/*.yaml read at most


class ResumeError(ConfigError):
    """Bad input around resuming or re-using a run folder: one line, exit 2."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        self.key, self.value, self.allowed = "resume", None, message


def trusted_overrides(path: str, named: Sequence[str] = ()) -> list[str]:
    """The run's saved overrides, each one a schema key or a config group of gradexp's: a run folder is untrusted
    input, and anything else there (hydra.* callbacks, a foreign _target_, environment resolvers) could run code
    or write files when re-applied. `named`: the command line's own overrides, the one source trusted to name the
    user's model class (model=custom)."""
    saved = load_run_yaml(path)
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise ResumeError(f"{path}: not a list of overrides")
    for override in saved:
        reason = untrusted(override, named)
        if reason:
            raise ResumeError(f"{path}: refusing to re-apply {override!r} ({reason}); "
                              "only gradexp's own config keys and groups, and a model class the command line names, "
                              "are re-applied")
    return saved


def _unreadable(path: str, err: Exception) -> ResumeError:
    return ResumeError(f"{path}: cannot read it ({first_line(err)})")


def load_run_yaml(path: str) -> Any:
    """A YAML file of a run or sweep folder (Hydra's record of it), as plain containers; ResumeError (one line) for
    one that is not a regular file (a FIFO's open blocks: found by an adversarial test, a sweep hung past SIGTERM),
    is too large, does not parse, or holds anchors and aliases: Hydra writes none, and OmegaConf expands every alias
    in full (a crafted 2 KB file of nested aliases took minutes and gigabytes to load)."""
    import yaml

    try:
        if not os.path.isfile(path):
            raise ValueError("not a regular file")
        with open(path, encoding="utf-8") as f:
            text = f.read(YAML_LIMIT + 1)
        if len(text) > YAML_LIMIT:
            raise ValueError(f"larger than {YAML_LIMIT // 1024} KB; Hydra writes a few KB")
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise ValueError("it holds YAML aliases; Hydra writes none")
        return OmegaConf.to_container(OmegaConf.create(text))
    except Exception as err:  # any parse error: a damaged or foreign file, reported in one line
        raise _unreadable(path, err) from None


def untrusted(override: str, named: Sequence[str] = ()) -> Optional[str]:
    """Why a saved override may not be re-applied, or None when it is one of gradexp's own (or the user's class that
    the command line, `named`, names again)."""
    key, sep, value = override.partition("=")
    key = key.lstrip("+~")
    if not sep:
        return "not key=value"
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        return "Hydra's own settings are not part of a run's config"
    if "${" in value:
        return "interpolations and resolvers (the environment among them) are not re-applied"
    if key in GROUPS:
        return None if _plain_name(value) else "not a plain option name"
    if names_users_class(override):
        return None if _named_again(key, value, named) else \
            f"a class of your own, which only the command line may name: add {key}={value.strip(QUOTES)} to resume"
    if key.startswith("model.") and key.count(".") == 1 and not is_schema_key(key):  # model=custom's own keys
        return None if _plain_value(value) else "not a plain value for the model's constructor"
    if not is_schema_key(key) or key == "resume":
        return "not a key of gradexp's schema"
    if key.endswith("_target_") and value.strip("'\"") not in {m.target for m in MODELS.values()}:
        return "a _target_ outside gradexp's own models"
    return None


def _named_again(key: str, value: str, named: Sequence[str]) -> bool:
    """Whether the command line gives `key` this same value (quoted or not, with any + prefix). Importing the user's
    class runs its module's code, so the class comes from the user, never from the run folder alone: with
    PYTHONPATH=. (as the README shows for a model in the current folder), a crafted overrides.yaml naming
    outputs.<run>.evil.Net ran a module planted in that run folder."""
    for given in named:
        given_key, sep, given_value = given.partition("=")
        if sep and given_key.lstrip("+~") == key and given_value.strip(QUOTES) == value.strip(QUOTES):
            return True
    return False


def _plain_value(value: str) -> bool:
    """A number, a boolean or a plain word: nothing Hydra would resolve, instantiate or read from elsewhere."""
    return value.replace("_", "").replace(".", "").replace("-", "").replace("+", "").isalnum() or value in ("[]",)


def _plain_name(value: str) -> bool:
    return value.replace("_", "").replace(".", "").replace("-", "").isalnum()


def prepare(cfg: Any, run_dir: str) -> Optional[dict[str, Any]]:
    """None for a fresh run; the checkpoint state to restore for resume=. Raises ResumeError (exit 2)."""
    status = _status(run_dir)
    if cfg.resume is None:
        if status is not None:
            raise ResumeError(f"{run_dir} already holds a run (status {status}); gradexp never overwrites one "
                              f"(resume={run_dir} continues an interrupted run)")
        return None
    if not os.path.samefile(cfg.resume, run_dir):
        raise ResumeError(f"resume={cfg.resume} must run in that folder, not {run_dir}")
    summary = os.path.join(run_dir, SUMMARY_NAME)
    if os.path.lexists(summary) and (os.path.islink(summary) or not os.path.isfile(summary)):
        # a run writes summary.json as a plain file: a FIFO, folder or link there is not its own, and would only be
        # found (or silently replaced) when the resumed run ends
        raise ResumeError(f"resume={cfg.resume}: {summary} is there but is not a file the run wrote; it was left as it "
                          f"is (move it away to resume)")
    refuse_finished(cfg.resume, status)
    _check_same_config(cfg, run_dir)
    from gradexp.training import checkpoint  # torch: here, not at import (`gradexp run --help` needs none of it)

    path = os.path.join(run_dir, checkpoint.CHECKPOINT_NAME)
    if not os.path.exists(path):  # killed before its first checkpoint: start over, the old files kept aside
        move_aside(run_dir)
        return None
    try:
        return checkpoint.load(path)
    except checkpoint.CheckpointError as err:
        raise ResumeError(f"resume={cfg.resume}: {err}") from err


def move_aside(run_dir: str) -> str:
    """Move the files an earlier attempt of this run wrote (training/artefacts.py) into the next free attempt-N/;
    returns it.
    .hydra/ (the config this run keeps) and anything else in the folder, a user's own files, stay where they are."""
    n = 1
    while os.path.lexists(os.path.join(run_dir, f"attempt-{n}")):  # a dangling link by that name is taken too
        n += 1
    aside = os.path.join(run_dir, f"attempt-{n}")
    os.mkdir(aside)
    for name in run_artefacts(run_dir):
        os.replace(os.path.join(run_dir, name), os.path.join(aside, name))
    return aside


def refuse_finished(folder: str, status: Optional[str] = None) -> None:
    """ResumeError for a folder whose run ended (completed, diverged): nothing to resume (`status`: known already)."""
    status = _status(folder) if status is None else status
    if status in FINISHED:
        raise ResumeError(f"resume={folder}: that run is {status}; there is nothing to resume")


def _status(run_dir: str) -> Optional[str]:
    """The run's status in its summary.json: None without one, "unreadable" where it is there but is no object."""
    if not os.path.isfile(os.path.join(run_dir, SUMMARY_NAME)):
        return None
    summary = read_summary(run_dir)
    return "unreadable" if summary is None else str(summary.get("status"))


def _check_same_config(cfg: Any, run_dir: str) -> None:
    saved_path = os.path.join(run_dir, ".hydra", "config.yaml")
    if not os.path.isfile(saved_path):
        raise ResumeError(f"resume={cfg.resume}: not a gradexp run folder (no .hydra/config.yaml there)")
    saved = load_run_yaml(saved_path)
    if not isinstance(saved, dict):
        raise ResumeError(f"{saved_path}: not a run's config (a mapping of keys)")
    saved = _flat(saved)
    now = _flat(OmegaConf.to_container(cfg))
    changed = [f"{k}={_as_written(now.get(k))} (the run has {_as_written(saved.get(k))})"
               for k in sorted(set(saved) | set(now)) if k != "resume" and now.get(k) != saved.get(k)]
    if changed:
        # not "these overrides change it": with no override given, an edited config.yaml read so (adversarial test)
        raise ResumeError(f"resume keeps the run's config; composed now, it differs from the run's "
                          f".hydra/config.yaml: {', '.join(changed)}")


def _as_written(value: Any) -> str:
    """A config value as an override or the YAML writes it: null, true, 0.1, 'text' ("the run has None" read oddly)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"steps": 5}} -> {"train.steps": 5}"""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_flat(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def restore(run: Any, state: Optional[dict[str, Any]], total_steps: int, config: str) -> int:
    """Put the checkpoint into the freshly built run; the step to start from (0 when fresh). Refuses (exit 2)
    a checkpoint that does not fit the model, or whose saved sink states are not ones a run writes, leaving the run
    folder as it was: the sinks, which open the event file, come after."""
    if state is None:
        return 0
    from gradexp.training import checkpoint

    try:
        step = checkpoint.restore(run, state, total_steps, config)
        check_sink_states(state)
    except checkpoint.CheckpointError as err:
        raise ResumeError(f"resume: {err}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ResumeError(f"resume: the checkpoint's sink states are not a run's ({err})") from None
    return step


def check_sink_states(state: dict[str, Any]) -> None:
    """Each saved sink state loaded into a stand-in by its sink's own load_state_dict (which only sets attributes):
    what restore_sinks will load later, tried before any sink exists."""
    from types import SimpleNamespace

    from gradexp.sinks.summary import SummarySink
    from gradexp.sinks.tb_views import TensorBoardViews
    from gradexp.sinks.tensorboard import TensorBoardSink
    from gradexp.sinks.theory import TheorySink

    SummarySink.load_state_dict(SimpleNamespace(), state["summary"])
    loaders = {"tensorboard": TensorBoardSink, "views": TensorBoardViews, "theory": TheorySink}
    sinks = state.get("sinks", {})
    if not isinstance(sinks, dict):
        raise ValueError("'sinks' is not a mapping")
    for name, sink_state in sinks.items():
        if name not in loaders:
            raise ValueError(f"an unknown sink {name!r}")
        loaders[name].load_state_dict(SimpleNamespace(), sink_state)


def restore_sinks(sinks: dict[str, Any], state: Optional[dict[str, Any]]) -> None:
    """The summary's first/last values and the history the end-of-run images are drawn from."""
    if state is None:
        return
    sinks["summary"].load_state_dict(state["summary"])
    for name, sink_state in state.get("sinks", {}).items():
        if name in sinks:
            sinks[name].load_state_dict(sink_state)
