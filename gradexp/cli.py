"""`gradexp` subcommand dispatcher. Imports nothing heavy so `gradexp --help` is instant;
`run` is the single @hydra.main and stays thin: compose, validate, hand over to gradexp.experiment."""
from __future__ import annotations

import sys

USAGE = """usage: gradexp <command> [args]

commands:
  run [OVERRIDES]   train one experiment composed from config groups (a Hydra app:
                    -m/--multirun sweeps, --cfg job, --help lists every group and option)
  report PATH       compare every run under PATH (a run folder or a sweep folder)

examples:
  gradexp run model=mlp model.depth=30 activation=sigmoid init=xavier_normal
  gradexp run -m activation=sigmoid,relu init=xavier_normal,kaiming_normal model.depth=20
  gradexp report multirun/
  tensorboard --logdir outputs
"""

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else EXIT_BAD_INPUT
    command, rest = argv[0], argv[1:]
    if command == "run":
        return _run(rest)
    if command == "report":
        from gradexp.report import main as report_main

        return report_main(rest)
    print(f"gradexp: unknown command {command!r} (allowed: run | report); see gradexp --help", file=sys.stderr)
    return EXIT_BAD_INPUT


def _run(args: list[str]) -> int:
    from gradexp.hydra_app import run_app

    # Hydra reads sys.argv itself; give it only the overrides, with a program name for its help text
    sys.argv = ["gradexp run", *args]
    return run_app()


if __name__ == "__main__":
    sys.exit(main())
