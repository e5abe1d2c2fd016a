"""The house stays easy to see: stages as sub-packages, imports only go down the stack (design.md, Architecture):
cli -> training -> report, sinks -> analysis -> models, probes, data -> config -> outcome."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "gradexp"
# stage -> rank: a module may import from its own stage or from a stage of lower rank
RANK = {"outcome": 0, "config": 1, "models": 2, "probes": 2, "data": 2, "analysis": 3, "report": 4, "sinks": 4,
        "training": 5, "cli": 6, "monitor": 6, "integrations": 7}
TOP = {"__init__", "__main__"}  # the public API (lazy) and `python -m gradexp`


def stage(module: str) -> str:
    """'gradexp.training.loop' -> 'training'; 'gradexp.outcome' -> 'outcome'."""
    return module.split(".")[1]


def imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gradexp.") and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module == "gradexp":
            found.update(f"gradexp.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gradexp."))
    return found


MODULES = sorted(p for p in ROOT.rglob("*.py") if p.stem not in TOP or p.parent != ROOT)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_go_down_the_stack(path):
    own = path.relative_to(ROOT).parts[0].removesuffix(".py")
    assert own in RANK, f"{own}: a stage the layout does not name"
    upward = [m for m in imports(path) if stage(m) in RANK and RANK[stage(m)] > RANK[own]]
    assert not upward, f"{path.name} imports up the stack: {upward}"


SINKS = ("summary", "tensorboard", "tb_views", "terminal", "theory")  # the rest of sinks/ are drawing helpers


@pytest.mark.parametrize("sink", SINKS)
def test_no_sink_reaches_into_another(sink):
    others = {f"gradexp.sinks.{s}" for s in SINKS if s != sink}
    assert not imports(ROOT / "sinks" / f"{sink}.py") & others


def test_every_stage_says_what_lives_there_and_what_it_may_import():
    for init in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "may import" in doc.lower(), init.parent.name
