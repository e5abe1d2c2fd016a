"""Training a run: the plain-PyTorch loop (loop.py), the one run factory (factory.py), one experiment from
a config (run.py), checkpoint and resume, interrupts, the non-finite guard, clipping, threads, reproducibility
and perf.

May import analysis, report, sinks, models, probes, data, config and outcome; never gradexp.cli."""
