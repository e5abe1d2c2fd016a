"""Deciding: the verdict (diagnose.py), remedies (advice.py), mean-field theory (theory.py), gains along a
profile (flow.py). Pure functions of recorded numbers, torch-free where possible.

May import models, probes, data, config and outcome."""
