"""The command line Hydra sees for `gradexp run`: Hydra's own options first (its parser takes none after an override:
`train.steps=5 --config-dir d` printed its usage), then the overrides; for `resume=FOLDER`, in any spelling, the run's
saved overrides (training/resume.py says which are trusted), the folder as hydra.run.dir and hydra.output_subdir=null,
so that Hydra does not rewrite the run's .hydra/ record."""
from __future__ import annotations

import functools
import os
import re
import shlex
from typing import Any, Optional

from gradexp.config.schema import ConfigError
from gradexp.report.untrusted import printable
from gradexp.training.resume import PREFIX, ResumeError, load_run_yaml, refuse_finished, trusted_overrides

_SHORT = {"-cd": "--config-dir", "-cp": "--config-path", "-cn": "--config-name"}  # Hydra's short spellings
_OPTIONAL_VALUE = ("--info", "-i")  # `--info` alone is valid: a following key=value is an override, not its value


def hydra_args(args: list[str]) -> list[str]:
    """The command line Hydra should see: Hydra's options (--config-dir X) first, as its parser wants them (given after
    an override, they made it print its usage), then the overrides; for `resume=FOLDER` the run's saved overrides, then
    the new ones."""
    options, overrides, bare = split_options(args)
    refuse_bad_options([*options, *overrides, *bare])  # in the order Hydra will see them (a bare --info last)
    given = [a for a in overrides if resume_folder(a) is not None]
    if not given:
        return [*options, *overrides, *bare]
    folder = resume_folder(given[-1])
    if any(a in ("-m", "--multirun") for a in options) or any(
            a.lstrip("+").startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in overrides):
        raise ResumeError(f"resume={folder} continues one run in its own folder: drop -m/--multirun and hydra.*.dir")
    saved = os.path.join(folder, ".hydra", "overrides.yaml")
    if os.path.lexists(saved) and not os.path.isfile(saved):  # a FIFO or folder: "no ... there" was not the reason
        raise ResumeError(f"resume={folder}: its .hydra/overrides.yaml is not a regular file")
    if not os.path.isfile(saved):
        raise ResumeError(f"resume={folder}: not a gradexp run folder (no .hydra/overrides.yaml there)")
    _check_composition(folder, options)
    original = trusted_overrides(saved, named=overrides)
    extra = [a for a in overrides if resume_folder(a) is None and a not in original]
    path = os.path.abspath(folder)
    return [*options, *original, *extra, f"{PREFIX}{_quoted(path)}", f"hydra.run.dir={_quoted(path)}",
            "hydra.output_subdir=null", *bare]


def composition_options(hydra_cfg: Any) -> list[str]:
    """The options the run's config was composed with, for the commands it prints (resume, suggestions) to compose
    the same one: --config-dir X (Hydra records it among the config sources as the command line's), --config-path X
    (it replaces gradexp's own configs as the main source) and --config-name N (a primary config other than gradexp's
    `config`, from either). `hydra_cfg`: the run's `hydra` node, live or as read from its .hydra/hydra.yaml."""
    options = []
    for source in hydra_cfg["runtime"]["config_sources"]:
        if source["schema"] == "file" and source["provider"] in ("command-line", "main"):
            options += ["--config-dir" if source["provider"] == "command-line" else "--config-path", source["path"]]
    if hydra_cfg["job"]["config_name"] != "config":
        options += ["--config-name", hydra_cfg["job"]["config_name"]]
    return options


def _check_composition(folder: str, options: list[str]) -> None:
    """A run composed with --config-dir (--config-path, --config-name) resumes only with one too: without it Hydra
    said "Could not find 'model/wide'" and no more (found by a new user), though the run had printed the right line.
    The options are never taken from the folder itself: a config source can run code (Hydra's callbacks), and a run
    folder is untrusted input. So the command to give is named, in one line."""
    record = os.path.join(folder, ".hydra", "hydra.yaml")
    if not os.path.isfile(record):
        return
    try:
        needed = composition_options((load_run_yaml(record) or {})["hydra"])
    except (KeyError, TypeError, AttributeError, IndexError):  # not Hydra's shape: the resume's own checks say
        return                                                 # what is wrong with the folder
    if not all(isinstance(value, str) and value for value in needed):  # a number or list where Hydra writes text:
        return                                                           # not its record (an adversarial test)
    flags = {arg.split("=", 1)[0] for arg in options}
    given = {_SHORT.get(flag, flag) for flag in flags}
    missing = [flag for flag in needed[::2] if flag not in given]
    if missing:
        refuse_finished(folder)  # the command named would be refused next: say that first (found by a review)
        command = shlex.join(["gradexp", "run", *needed, f"resume={folder}"])
        # the folder's text as what it is: escape codes or a newline in it do not reach the terminal as such
        raise ResumeError(printable(f"resume={folder}: the run was composed with {' '.join(dict.fromkeys(missing))}; "
                                    f"resume it with: {command}"))


class OptionError(ConfigError):
    """An option Hydra's parser refuses (`--foo`, `--cfg jobs`): one line, exit 2."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        self.key, self.value, self.allowed = "option", None, message


_EXITING = ("-h", "--help", "--hydra-help", "--version")  # Hydra prints and exits: nothing to check first


def refuse_bad_options(args: list[str]) -> None:
    """Hydra's own parser, run first on the command line: for an unknown option or a bad choice it printed its
    8-line usage and the error; gradexp says the error in one line (OptionError)."""
    if any(a in _EXITING for a in args):
        return
    parser = _hydra_parser()
    parsed = parser.parse_args(args)
    for action in parser._actions:  # argparse reads `--config-dir=--` as an empty list: Hydra then failed on it
        if action.nargs in (None, "?") and isinstance(getattr(parsed, action.dest, None), list):
            raise OptionError(f"argument {'/'.join(action.option_strings)}: expected one value, not '--' "
                              "(gradexp run --help lists the options)")


@functools.lru_cache(maxsize=1)
def _hydra_parser():
    """Hydra's argument parser, built once for both the split and the check (Hydra builds its own), with its parse
    errors raised as OptionError."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def refuse(message: str) -> None:
        raise OptionError(f"{message} (gradexp run --help lists the options)")

    parser.error = refuse  # argparse reports every parse error through error(); it would print usage and exit
    return parser


def resume_folder(override: str) -> Optional[str]:
    """FOLDER for `resume=FOLDER`, also written `+resume=` or `++resume=` (else None): every spelling resumes in the
    run's own folder, without Hydra rewriting its .hydra/ record."""
    key, sep, value = override.partition("=")
    return value if sep and key.lstrip("+") == "resume" else None


def split_options(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(Hydra's options with their values, the overrides, options given without a value), each in the given order. An
    option's value is the next argument for an option that takes one (--config-dir X); `--config-dir=X` is one
    argument. A bare `--info` goes last on Hydra's line: before an override it would take that as its value; so does
    a `--config-dir` that ends the line, which before an override took it for a folder."""
    valued = {flag for action in _hydra_parser()._actions if action.nargs in (None, "?")  # store: one value
              for flag in action.option_strings}
    options, overrides, bare, i = [], [], [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            overrides.append(arg)
        elif arg in valued and i + 1 < len(args) and not (arg in _OPTIONAL_VALUE and "=" in args[i + 1]):
            options += [arg, args[i + 1]]
            i += 1
        else:  # a flag; or an option whose value is missing (last on Hydra's line, so that its parser says so)
            (bare if arg in valued else options).append(arg)
        i += 1
    return options, overrides, bare


def _quoted(path: str) -> str:
    """A Hydra override value that keeps spaces, '=', ',', quotes and backslashes in a path literal: Hydra reads \\'
    inside a quoted value as a quote, and backslashes only before a quote (the closing one too) as escapes, so those
    are doubled (found by an adversarial test: a folder whose name ended in a backslash could not be resumed)."""
    return "'" + re.sub(r"(\\+)(?='|$)", r"\1\1", path).replace("'", "\\'") + "'"
