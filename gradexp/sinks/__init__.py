"""Where values go: TensorBoard (tensorboard.py, tb_views.py, theory.py), summary.json (summary.py), the terminal
(terminal.py), and helpers: drawing (figures.py, flow_images.py, profiles.py, images.py), a step's event (events.py),
a file written whole or not at all (files.py), the shapes a saved state must have (state.py). Each sink stands
alone: no sink imports another; the run factory hands the TensorBoard sinks one event writer.

May import analysis, models, probes, data, config and outcome."""
