"""Shell completion: the candidates gradexp computes, and the installed scripts driven by real shells
(bash through a terminal and its Tab key; fish's `complete -C`; zsh's completion function)."""
from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradexp.cli.completion import candidates, handle

BIN = Path(sys.executable).parent  # the environment's bin folder: the installed `gradexp` script lies next to python


def test_first_word_completes_subcommands():
    assert candidates("gradexp ") == ["run", "report", "--help", "--version"]
    assert candidates("gradexp re") == ["report"]


def test_run_completes_groups_options_and_keys():
    assert candidates("gradexp run activation=si") == ["activation=sigmoid"]
    assert "model.depth=" in candidates("gradexp run model.")
    assert candidates("gradexp run experiment=he") == ["experiment=he2015", "experiment=he2016",
                                                       "experiment=he2016_cifar"]
    assert candidates("gradexp run -m init=kaiming_") == ["init=kaiming_normal", "init=kaiming_uniform"]
    assert candidates("gradexp run --mu") == ["--multirun"]
    assert candidates("gradexp run --cfg ") == ["job", "hydra", "all"]


def test_completing_overrides_leaves_the_environment_as_it_was(monkeypatch):
    """Hydra's completion reads COMP_LINE, set for it and then restored: unset again where the caller had none."""
    monkeypatch.delenv("COMP_LINE", raising=False)
    assert candidates("gradexp run activation=si") == ["activation=sigmoid"]
    assert "COMP_LINE" not in os.environ
    monkeypatch.setenv("COMP_LINE", "gradexp re")
    assert candidates("gradexp run activation=si") == ["activation=sigmoid"]
    assert os.environ["COMP_LINE"] == "gradexp re"


def test_completing_overrides_does_not_import_torch(tmp_path):
    """Every Tab starts gradexp: importing torch would cost a second or more each time."""
    code = ("import sys; from gradexp.cli.completion import candidates; "
            "print(candidates('gradexp run activation=si'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert out.split() == ["['activation=sigmoid']", "False"]


def test_run_completes_the_users_own_config_groups(tmp_path):
    (tmp_path / "activation").mkdir()
    (tmp_path / "activation" / "swish_mine.yaml").write_text("name: silu\n")
    assert candidates(f"gradexp run --config-dir {tmp_path} activation=swish") == ["activation=swish_mine"]


def test_report_completes_options_formats_and_folders(tmp_path, monkeypatch):
    (tmp_path / "multirun").mkdir()
    (tmp_path / "mu.txt").write_text("")
    monkeypatch.chdir(tmp_path)
    assert candidates("gradexp report --fo") == ["--format"]
    assert candidates("gradexp report --format ") == ["table", "csv", "json"]
    assert candidates("gradexp report multirun --sort g") == ["gain"]
    assert candidates("gradexp report mu") == ["multirun/"]  # folders only


@pytest.mark.parametrize("argument", [None, "install=tcsh", "query", "setup=bash"])
def test_bad_argument_is_one_line(argument):
    with pytest.raises(ValueError, match=r"-sc/--shell-completion: .* \(allowed: one of install=SHELL"):
        handle(argument)


def test_bad_argument_exits_2_without_traceback():
    command = [sys.executable, "-m", "gradexp", "run", "--shell-completion"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def _shell_env(tmp_path: Path) -> dict[str, str]:
    if not (BIN / "gradexp").exists():
        pytest.skip("the gradexp script is not installed next to this python")
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp_path), "TERM": "dumb"}


def _typed(shell: list[str], env: dict[str, str], keys: list[str], expect: str, timeout: float = 90) -> str:
    """Types `keys` into an interactive shell on a terminal; returns its output once `expect` appears."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(shell[0], shell, env)
    out, deadline = b"", time.time() + timeout
    try:
        for key in keys:
            os.write(fd, key.encode())
            time.sleep(0.3)
        while expect.encode() not in out and time.time() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return out.decode(errors="replace")


TYPED = [  # what is typed before Tab, and the line after Tab and one more key ("X": shows whether a space was added)
    ("gradexp ru", "gradexp run X"),
    ("gradexp run activation=sigm", "gradexp run activation=sigmoid X"),
    ("gradexp run model.dep", "gradexp run model.depth=X"),
    ("gradexp run experiment=he20", "gradexp run experiment=he201X"),
]


def _completed_line(shell: list[str], rc: str, tmp_path: Path, typed: str, expected: str) -> str:
    """Sources `rc` in an interactive shell on a terminal, types, presses Tab, types X; then Ctrl-A puts `echo :`
    in front and Enter runs it, so the completed line comes back as the echo's output line."""
    env = _shell_env(tmp_path)
    (tmp_path / "rc").write_text(rc)
    out = _typed(shell, env, [f"source {tmp_path}/rc\n", typed, "\t", "X", "\x01echo :", "\n"],
                 expect=f"\n:{expected}\r")
    lines = [line for line in out.replace("\r", "").split("\n") if line.startswith(":gradexp")]
    return lines[-1][1:] if lines else out[-800:]


@pytest.mark.slow
@pytest.mark.parametrize("typed, completed", TYPED)
def test_bash_tab_completes_through_the_installed_script(tmp_path, typed, completed):
    """A real interactive bash, no bash-completion package: the script installed with eval, then Tab."""
    rc = 'PS1="$ "\neval "$(gradexp run -sc install=bash)"\n'
    assert _completed_line(["bash", "--norc", "--noprofile", "-i"], rc, tmp_path, typed, completed) == completed


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (Debian: apt-get install zsh)")
@pytest.mark.parametrize("typed, completed", TYPED)
def test_zsh_tab_completes_through_the_installed_script(tmp_path, typed, completed):
    """A real interactive zsh without any user config (-f): the script loads compinit itself when it is absent."""
    rc = 'PS1="$ "\nbindkey -e\neval "$(gradexp run -sc install=zsh)"\n'
    assert _completed_line(["zsh", "-f", "-i"], rc, tmp_path, typed, completed) == completed


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed (Debian: apt-get install fish)")
def test_fish_completes_through_the_installed_script(tmp_path):
    env = _shell_env(tmp_path)
    script = ("gradexp run -sc install=fish | source; complete -C 'gradexp ru'; echo ---; "
              "complete -C 'gradexp run activation=sigm'; echo ---; complete -C 'gradexp run model.dep'")
    out = subprocess.run(["fish", "--no-config", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    first, second, third = [part.split() for part in out.stdout.split("---")]
    assert first == ["run"] and second == ["activation=sigmoid"] and third == ["model.depth="], out
