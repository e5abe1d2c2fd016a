"""Write the README's option table from the registries (gradexp/config/registry.py) and the schema, between the
markers `<!-- options:begin -->` and `<!-- options:end -->`. tests/test_registry.py checks that the README holds
exactly what this renders, so a new option (an activation, a task) shows up in the README by running this.

    python scripts/make_option_table.py        # rewrites README.md in place"""
from __future__ import annotations

import pathlib
import re
from dataclasses import fields

import yaml

from gradexp.config import registry, schema

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"
# group -> (its registry table, the schema node, the key that names the option)
GROUPS = {
    "model": (registry.MODELS, schema.ModelConf, "_target_"),
    "activation": (registry.ACTIVATIONS, schema.ActivationConf, "name"),
    "init": (registry.INITS, schema.InitConf, "scheme"),
    "norm": (registry.NORMS, schema.NormConf, "name"),
    "optimizer": (registry.OPTIMIZERS, schema.OptimizerConf, "name"),
    "clip": (None, schema.ClipConf, "mode"),  # options are thresholds of the registry's CLIP_MODES: the YAML files
    "data": (registry.DATA, schema.DataConf, "name"),
    "schedule": (registry.SCHEDULES, schema.ScheduleConf, "name"),
}


def defaults() -> dict[str, str]:
    """group -> the option config.yaml's defaults list picks."""
    listed = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())["defaults"]
    return {k: v for entry in listed if isinstance(entry, dict) for k, v in entry.items()}


def options(group: str) -> list[str]:
    table = GROUPS[group][0]
    if group == "model":  # gradexp's families, then model=custom: the user's class (model._target_=pkg.mod.Class)
        return [*table, schema.CUSTOM]
    if table is not None:
        return list(table)
    return sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))


def render() -> str:
    chosen = defaults()
    rows = ["| group | options | keys to override |", "|---|---|---|"]
    for group, (_, node, naming) in GROUPS.items():
        names = [f"`{o}`" + (" (default)" if chosen.get(group) == o else "") for o in options(group)]
        keys = [f"`{group}.{f.name}`" for f in fields(node) if f.name != naming]
        rows.append(f"| `{group}` | {', '.join(names)} | {', '.join(keys)} |")
    rows.append(f"| `experiment` | {', '.join(f'`{p.stem}`' for p in sorted((ROOT / 'configs' / 'experiment').glob('*.yaml')))} | |")
    return "\n".join(rows)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{BEGIN}\n{render()}\n{END}"
    readme.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    main()
