"""Comparing runs, read from their folders only (runs.py): the table (table.py), grouping by sweep and seed
(groups.py), the figure (figure.py).

May import analysis, sinks (their drawing helpers and file names), models, probes, data, config and outcome."""
