"""integrations: gradexp's instruments inside other training frameworks (optional extras), each a thin adapter
over gradexp.Monitor (gradexp/monitor.py) that maps the framework's hooks onto the Monitor's phases.

A module here may import from any stage (it sits above the Monitor) and from its framework, which it imports
only when used: `import gradexp` never imports an extra."""
