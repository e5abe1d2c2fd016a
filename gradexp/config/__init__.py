"""What can be asked for: the typed schema and value checks (schema.py) and one registry per option kind
(registry.py), the single source of every fact about an option.

May import gradexp.outcome only (and no torch at import time: `gradexp run --help` stays fast)."""
