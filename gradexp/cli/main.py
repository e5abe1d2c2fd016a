"""`gradexp` subcommand dispatcher. Imports nothing heavy so `gradexp --help` is instant;
`run` is the single @hydra.main and stays thin: compose, validate, hand over to gradexp.training.run."""
from __future__ import annotations

import gc
import logging
import os
import signal
import sys

USAGE = """usage: gradexp <command> [args]    (gradexp --version: the installed version)

commands:
  run [OVERRIDES]   train one experiment composed from config groups (a Hydra app:
                    -m/--multirun sweeps, --cfg job, --help lists every group and option)
  report PATH       compare every run under PATH (a run folder or a sweep folder)

examples:
  gradexp run model=mlp model.depth=30 activation=sigmoid init=xavier_normal
  gradexp run -m activation=sigmoid,relu init=xavier_normal,kaiming_normal model.depth=20
  gradexp report multirun/
  tensorboard --logdir outputs
  eval "$(gradexp run -sc install=bash)"   # Tab completion; zsh: install=zsh; fish: ... install=fish | source
"""

EXIT_BAD_INPUT = 2


# True once main() runs as the process's own command line: the process is gradexp's, which may freeze the garbage
# collector's objects (cli/stack.py, skip_final_collections). main(argv), called in someone else's process, leaves it.
owns_process = False
# True once `gradexp run` has its own signal handling in place (cli/app.py run_app's Interrupts): a signal before
# that stops the command before any run exists
run_catches_signals = False

# what `gradexp run`'s Interrupts catches (gradexp.training.interrupt.SIGNALS), named here without importing it
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class Interrupted(BaseException):
    """Ctrl-C, SIGTERM or SIGUSR2 before `gradexp run` catches them itself (while Hydra and the config schema are
    imported, ~0.5 s): the command stops in one line, with the shell's 128 + signal number. A BaseException, so that
    no `except Exception` on the way takes it for a failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def catch_signals() -> None:
    """The command's own handlers, from its first line: before them, Ctrl-C printed a KeyboardInterrupt traceback
    from inside Hydra's import and SIGTERM ended the process silently with -15 (found by an adversarial test).
    Cheap: the signal module only, so `gradexp --help` stays instant."""
    for sig in _SIGNALS:
        signal.signal(sig, _stop)


def main(argv: list[str] | None = None) -> int:
    """The `gradexp` command. Without `argv` it is the process's own command line (the console script,
    python -m gradexp), which exits right after it returns."""
    global owns_process
    if argv is not None:
        return _dispatch(argv)
    catch_signals()  # first: a signal from here on is answered in one line, never a traceback
    owns_process = True
    # a handler's write that meets a closed pipe (`gradexp run --info searchpath | head`: Hydra prints through
    # logging) is dropped quietly, not reported as "--- Logging error ---" and a call stack per record
    logging.raiseExceptions = False
    try:
        code = _dispatch(sys.argv[1:])
        sys.stdout.flush()  # output still buffered meets a closed pipe here, not in the interpreter's exit
    except BrokenPipeError:
        code = reader_gone()
    except Interrupted as stop:
        code = interrupted(stop.signum)
    skip_final_collections()
    return code


def interrupted(signum: int) -> int:
    """A signal `gradexp run`'s Interrupts did not catch (before it was in place, or during the last clean-up after
    it): one line, and the shell's status for the signal (130 Ctrl-C, 143 SIGTERM, 140 SIGUSR2)."""
    name = signal.Signals(signum).name
    when = " before the run started" if sys.argv[1:2] == ["run"] and not run_catches_signals else ""
    try:
        # on its own line after a terminal's ^C
        sys.stderr.write(f"{chr(10) if sys.stderr.isatty() else ''}gradexp: interrupted ({name}){when}\n")
        sys.stderr.flush()
    except OSError:  # stderr gone with the terminal: the status says it
        pass
    return 128 + signum


def reader_gone() -> int:
    """stdout's reader went away (`gradexp report runs/ | head`): stop quietly, as other command-line tools do, with
    Python's exit status for EPIPE. stdout is pointed at /dev/null so that the interpreter's final flush of what
    remains buffered does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 1


def skip_final_collections() -> None:
    """While the interpreter shuts down it runs the cyclic garbage collector several times over every object still
    alive: ~360,000 once torch (with torch._dynamo, which every optimizer's first step imports), matplotlib and
    TensorBoard are loaded, 0.16 s a collection, 0.8 s of a 4 s default run after its last line is printed. Frozen
    objects are left out of those collections. Only for a process that is about to exit: everything the command wrote
    is closed by then, and a finalizer on a reference cycle is all that is skipped (Python does not promise to run
    those at exit either)."""
    gc.freeze()


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else EXIT_BAD_INPUT
    if argv[0] in ("-V", "--version"):
        print(f"gradexp {version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run" and "--version" in rest:  # gradexp's, not the Hydra version `run` would print
        print(f"gradexp {version()}")
        return 0
    if command == "run":
        return _run(rest)
    if command == "report":
        from gradexp.report.table import main as report_main

        return report_main(rest)
    print(f"gradexp: unknown command {command!r} (allowed: run | report); see gradexp --help", file=sys.stderr)
    return EXIT_BAD_INPUT


def version() -> str:
    """The installed distribution's version (its metadata: no import of gradexp's heavy modules)."""
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed("gradexp")
    except PackageNotFoundError:  # a source tree on sys.path without an install
        return "unknown (not installed)"


def _run(args: list[str]) -> int:
    for flag in ("-sc", "--shell-completion"):
        if flag in args:  # gradexp's own completion: it knows the subcommands and calls Hydra's for the overrides
            return _completion(args[args.index(flag) + 1:][:1])
    from gradexp.cli.app import run_app

    # Hydra reads sys.argv itself; give it only the overrides, with a program name for its help text
    sys.argv = ["gradexp run", *args]
    return run_app()


def _completion(argument: list[str]) -> int:
    from gradexp.cli.completion import CompletionError, handle

    try:
        print(handle(argument[0] if argument else None))
    except CompletionError as err:
        print(f"gradexp: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
