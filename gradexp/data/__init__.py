"""The tasks a run trains on (tasks.py): synthetic, digits and sequence tasks, built from the data registry.

May import gradexp.config and gradexp.outcome."""
