"""The registries are the single source of every option: each config-group folder holds exactly one YAML per
registry entry, that YAML names its entry, and every entry builds."""
import os

import pytest
import yaml

from gradexp.config import registry
from gradexp.models import MODELS, make_activation, make_norm

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
# group folder -> (registry table, the YAML key that names the entry)
GROUPS = {"activation": (registry.ACTIVATIONS, "name"), "init": (registry.INITS, "scheme"),
          "norm": (registry.NORMS, "name"), "optimizer": (registry.OPTIMIZERS, "name"),
          "schedule": (registry.SCHEDULES, "name"), "data": (registry.DATA, "name")}


def options(group: str) -> dict[str, dict]:
    folder = os.path.join(CONFIGS, group)
    return {f[:-5]: yaml.safe_load(open(os.path.join(folder, f))) for f in os.listdir(folder) if f.endswith(".yaml")}


@pytest.mark.parametrize("group", GROUPS)
def test_one_yaml_per_entry_and_it_names_its_entry(group):
    table, key = GROUPS[group]
    found = options(group)
    assert sorted(found) == sorted(table)
    for name, body in found.items():
        assert body[key] == name


def test_model_yamls_name_the_registry_classes():
    targets = {}
    for name, body in options("model").items():
        targets[name] = (body.get("model") or body)["_target_"]
    assert targets.pop("custom") == "custom"  # model=custom: the user names the class (model._target_=...)
    assert targets == {name: m.target for name, m in registry.MODELS.items()}
    assert set(MODELS) == set(registry.MODELS)


def test_clip_yamls_use_registry_modes_and_their_keys():
    for name, body in options("clip").items():
        assert body["mode"] in registry.CLIP_MODES, name
        assert set(body) - {"mode"} <= set(registry.CLIP_MODES[body["mode"]]), name


@pytest.mark.parametrize("name", registry.ACTIVATIONS)
def test_every_activation_builds_and_has_its_facts(name):
    entry = registry.ACTIVATIONS[name]
    assert entry.saturation in ("squashing", "dead_units", "none")
    assert (entry.output_derivative is not None) == (entry.saturation == "squashing")
    assert entry.matched_init in registry.INITS
    make_activation(name)


@pytest.mark.parametrize("name", registry.NORMS)
@pytest.mark.parametrize("layout", ["vector", "image", "sequence"])
def test_every_norm_builds_for_every_layout(name, layout):
    make_norm(name, 8, layout)


def test_registry_import_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, gradexp.config.registry; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_readme_option_table_is_the_registries():
    import pathlib
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "scripts"))
    from make_option_table import BEGIN, END, render

    readme = (root / "README.md").read_text()
    assert f"{BEGIN}\n{render()}\n{END}" in readme, "run: python scripts/make_option_table.py"
