"""The command line: `gradexp` subcommands (main.py), the `gradexp run` Hydra app and its one-line errors (app.py,
errors.py), shell completion, preset handling. Thin: it composes, then hands over to gradexp.training.

May import every stage below it (training and everything under it)."""
