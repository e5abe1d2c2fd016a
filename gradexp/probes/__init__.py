"""Measuring: one probe per file, each given the layer list (layers.py, the layer contract); base.py has the probe
protocol, the Instruments that run the probes due at a logging step, and the one host transfer; norms.py the exact
batched norms. Which probes exist is the PROBES registry (gradexp/config/registry.py).

May import gradexp.config and gradexp.outcome."""
