"""Shell completion for `gradexp` in bash, zsh and fish: `gradexp run -sc install=SHELL` prints a self-contained
script (no bash-completion package needed); on every Tab it calls `gradexp run -sc query=SHELL` with the line up
to the cursor in COMP_LINE. Subcommands and options are completed here; `run`'s config groups, options and keys
by Hydra's own completion, asked in-process with the line it expects ("<app> <overrides>")."""
from __future__ import annotations

import contextlib
import io
import os
import sys

from gradexp.cli.environ import environment_variable

SHELLS = ("bash", "zsh", "fish")
TOP = ("run", "report", "--help", "--version")
RUN_FLAGS = ("--multirun", "-m", "--cfg", "--help", "--hydra-help", "--info", "--config-dir", "--config-name",
             "--resolve", "--package", "--shell-completion", "-sc")
REPORT_FLAGS = ("--sort", "--format", "--out", "--dpi", "--help")
SORT_KEYS = ("gain", "first/last", "loss/train", "loss/val", "acc/val", "verdict", "status", "steps/s")  # result
# columns of `gradexp report` (a sweep's factors are columns too); descending is --sort=-KEY, one word
FLAG_VALUES = {"--cfg": ("job", "hydra", "all"), "-c": ("job", "hydra", "all"), "--format": ("table", "csv", "json"),
               "--sort": SORT_KEYS,
               "--info": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")}
FOLDER_FLAGS = ("--config-dir", "-cd", "--out")
USAGE = "one of install=SHELL | uninstall=SHELL | query=SHELL (SHELL: bash | zsh | fish)"


class CompletionError(ValueError):
    """A bad -sc argument: one line, exit 2."""


def handle(argument: str | None) -> str:
    """What `gradexp run -sc ARGUMENT` prints."""
    action, _, shell = (argument or "").partition("=")
    if action not in ("install", "uninstall", "query") or shell not in SHELLS:
        raise CompletionError(f"invalid value for -sc/--shell-completion: {argument!r} (allowed: {USAGE})")
    if action == "install":
        return SCRIPTS[shell]
    if action == "uninstall":
        return UNINSTALL[shell]
    return "\n".join(candidates(os.environ.get("COMP_LINE", "gradexp ")))


def candidates(line: str) -> list[str]:
    """Completions of the last word of `line` (the command line up to the cursor), each a whole word."""
    words = line.split()
    current = "" if not words or line[-1:].isspace() else words.pop()
    before = words[1:]  # words after the program name, before the one being completed
    if not before:
        return _starting(TOP, current)
    previous = before[-1]
    if previous in FLAG_VALUES:
        return _starting(FLAG_VALUES[previous], current)
    if previous in FOLDER_FLAGS:
        return _folders(current)
    if current.startswith("-"):
        return _starting(RUN_FLAGS if before[0] == "run" else REPORT_FLAGS if before[0] == "report" else (), current)
    if before[0] == "report":
        return _folders(current)
    if before[0] == "run":
        return _hydra(before[1:], current)
    return []


def _starting(options, prefix: str) -> list[str]:
    return [o for o in options if o.startswith(prefix)]


def _folders(prefix: str) -> list[str]:
    """Folders whose path starts with prefix, each ending in / (the shell goes on completing below it)."""
    parent, stem = os.path.split(os.path.expanduser(prefix))
    try:
        names = sorted(os.listdir(parent or "."))
    except OSError:
        return []
    head = prefix[: len(prefix) - len(stem)]
    return [f"{head}{n}/" for n in names if n.startswith(stem) and os.path.isdir(os.path.join(parent or ".", n))]


def _hydra(args: list[str], current: str) -> list[str]:
    """Hydra's completion of `run`'s overrides; --config-dir on the line adds the user's config groups."""
    from gradexp.cli.app import _task as hydra_main  # the @hydra.main itself: run_app's resume path imports torch

    config_dir = _config_dir(args)
    argv = sys.argv
    sys.argv = ["gradexp", *(["--config-dir", config_dir] if config_dir else []), "-sc", "query=bash"]
    out = io.StringIO()
    try:
        with environment_variable("COMP_LINE", " ".join(["gradexp", *_overrides(args), current])), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            hydra_main()
    finally:
        sys.argv = argv
    return _starting(out.getvalue().split(), current)


def _config_dir(args: list[str]) -> str | None:
    for flag, value in zip(args, args[1:]):
        if flag in ("--config-dir", "-cd"):
            return value
    return next((a.split("=", 1)[1] for a in args if a.startswith("--config-dir=")), None)


def _overrides(args: list[str]) -> list[str]:
    """The overrides among the words (flags and their values dropped): Hydra composes with them."""
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = not skip and arg in (*FOLDER_FLAGS, "--cfg", "-c", "--config-name", "-cn", "--package", "-p")
            continue
        kept.append(arg)
    return kept


# bash splits words at '=' and ':' (COMP_WORDBREAKS): the candidates are whole words, so the part of the word
# before bash's own current word is cut off them; no space after a candidate that goes on (key=, group/, folder/)
BASH = r"""_gradexp_complete() {
    local line=${COMP_LINE:0:COMP_POINT}
    local cur=${COMP_WORDS[COMP_CWORD]}
    local word=${line##*[[:space:]]}
    local strip=${word%"$cur"}
    local IFS=$'\n'
    local found=($(COMP_LINE="$line" "${COMP_WORDS[0]}" run -sc query=bash 2>/dev/null))
    COMPREPLY=("${found[@]#"$strip"}")
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} =~ [=./]$ ]]; then
        compopt -o nospace 2>/dev/null
    fi
}
complete -F _gradexp_complete gradexp
"""

ZSH = r"""_gradexp() {
    local line="${(j: :)words[1,CURRENT-1]} $PREFIX"
    local -a found more done
    found=(${(f)"$(COMP_LINE=$line $words[1] run -sc query=zsh 2>/dev/null)"})
    more=(${(M)found:#*[=./]})
    done=(${found:#*[=./]})
    (( $#more )) && compadd -Q -S '' -- $more
    (( $#done )) && compadd -Q -- $done
    return 0
}
(( $+functions[compdef] )) || { autoload -Uz compinit && compinit -u }
compdef _gradexp gradexp
"""

FISH = r"""function __gradexp_complete
    set -l line (commandline -cp)
    set -l parts (commandline -cpo)
    COMP_LINE="$line" $parts[1] run -sc query=fish 2>/dev/null
end
complete -c gradexp -f -a '(__gradexp_complete)'
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}
UNINSTALL = {"bash": "complete -r gradexp\nunset -f _gradexp_complete\n",
             "zsh": "compdef -d gradexp\nunfunction _gradexp\n",
             "fish": "complete -e -c gradexp\nfunctions -e __gradexp_complete\n"}
