"""model=custom: the user's own nn.Module from the CLI config (a class defined here, importable as
tests.test_custom_model.X or via this module's name), built with gradexp's data, optimizer, clip and instruments."""
import os
import sys

import pytest
import torch
from torch import nn

import gradexp
from gradexp.config.schema import ConfigError, validate
from gradexp.training import factory as build
from gradexp.training.resume import untrusted

HERE = __name__  # importable: pytest put this folder on sys.path


class Net(nn.Module):
    def __init__(self, input_shape, num_outputs, hidden=16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), hidden), nn.Tanh(),
                                  nn.Linear(hidden, hidden), nn.Tanh())
        self.out = nn.Linear(hidden, num_outputs)

    def forward(self, x):
        return self.out(self.body(x))


class NoArgs(nn.Module):  # takes nothing gradexp offers: built without it
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(64, 64), nn.Linear(64, 64)])
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        h = x.flatten(1)
        for layer in self.layers:
            h = torch.relu(layer(h))
        return self.head(h)


class ThreeOutputs(NoArgs):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64, 3)


class Checked(NoArgs):  # a bare assert in forward (pytest would give an `assert` here a message): none
    def forward(self, x):
        if x.dim() != 2:
            raise AssertionError
        return super().forward(x)


class Frozen(NoArgs):
    def __init__(self):
        super().__init__()
        self.requires_grad_(False)


class Detached(NoArgs):
    def forward(self, x):
        return super().forward(x).detach()


class Chatty(NoArgs):
    def __init__(self):
        raise ValueError("first line\nsecond line\nthird line")


def _cfg(*overrides):
    return gradexp.compose(["model=custom", "train.steps=2", "log.every=1", *overrides])


def test_the_users_class_gets_its_keys_and_the_tasks_shapes():
    cfg = _cfg(f"model._target_={HERE}.Net", "+model.hidden=8")
    validate(cfg)
    run = build.run(cfg)
    assert isinstance(run.model, Net) and run.model.out.in_features == 8 and run.model.out.out_features == 10
    assert [n for n, _ in run.layers] == ["body.1", "body.3"]  # discovery: the parameter-holding leaves
    assert sys.modules[HERE].Net is Net


def test_a_constructor_without_gradexp_keywords_and_watch_patterns():
    cfg = _cfg(f"model._target_={HERE}.NoArgs", "model.watch=[layers.*]")
    validate(cfg)
    run = build.run(cfg)
    assert [n for n, _ in run.layers] == ["layers.0", "layers.1"]


def test_trains_in_process_with_a_verdict_and_no_theory(tmp_path):
    cfg = _cfg(f"model._target_={HERE}.Net", "clip=norm_1.0")
    outcome = gradexp.run_experiment(cfg, str(tmp_path / "run"))
    summary = gradexp.load_summary(str(tmp_path / "run"))
    assert outcome.status == "completed" and summary["theory"] is None
    assert summary["verdict"]["suggestions"] == []  # gradexp's keys are not this model's
    assert summary["clip"]["clip/frac_steps_clipped"] is not None


@pytest.mark.parametrize("target, says", [
    (f"{HERE}.Missing", "import failed: AttributeError"),
    ("no_such_pkg.Net", "import failed: ModuleNotFoundError"),
    (f"{HERE}.HERE", "an importable nn.Module class"),
])
def test_a_class_that_cannot_be_imported_is_refused_in_one_line(target, says):
    with pytest.raises(ConfigError, match="model._target_") as err:
        validate(_cfg(f"model._target_={target}"))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_an_output_that_does_not_fit_the_task_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"output fits data=digits: \(batch, \.\.\., 10\) outputs, not \(2, 3\)"):
        build.run(_cfg(f"model._target_={HERE}.ThreeOutputs"))


@pytest.mark.parametrize("target, says", [
    ("Checked", "a model that takes data=digits's input (1, 8, 8): AssertionError)"),
    ("Frozen", "a model with a parameter to train (every one of this model's has requires_grad=False))"),
    ("Chatty", ": ValueError: first line)"),
    ("Detached", "a model whose output depends on a parameter to train (this one's output has no gradient: "
                 "detached, or computed under torch.no_grad))"),
])
def test_a_model_that_cannot_train_is_refused_in_one_line(target, says):
    """Found by an adversarial test: a bare assert raised an IndexError (its empty message had no first line), an
    all-frozen model a traceback at step 0, and a message of several lines was printed whole."""
    with pytest.raises(ConfigError) as refused:
        build.run(_cfg(f"model._target_={HERE}.{target}"))
    assert str(refused.value).endswith(says) and "\n" not in str(refused.value)


def test_compile_takes_a_users_model():
    cfg = _cfg(f"model._target_={HERE}.Net", "train.compile=true")
    validate(cfg)  # was a KeyError: custom is no registry family
    assert build.compiled(cfg, Net((1, 8, 8), 10)) is not None


def test_resume_reapplies_the_users_class_only_when_the_command_line_names_it():
    """Importing the class runs its module: the run folder's record alone may not choose it (found in the seventh
    session: with PYTHONPATH=., as the README shows, a crafted overrides.yaml ran a module planted in the run folder)."""
    saved = f"model._target_={HERE}.Net"
    assert untrusted(saved) == f"a class of your own, which only the command line may name: add {saved} to resume"
    for named in ([saved], [f"model._target_='{HERE}.Net'"], ["train.steps=3", f"++{saved}"]):
        assert untrusted(saved, named) is None
    assert untrusted(saved, [f"model._target_={HERE}.Other"]) is not None
    assert untrusted("model._target_=gradexp.models.mlp.MLP") is None  # gradexp's own: no user code
    assert untrusted("+model.hidden=8") is None
    assert untrusted("+model.hidden=${oc.env:HOME}") is not None
    with pytest.raises(ConfigError, match="an importable nn.Module class"):
        validate(_cfg("model._target_=os.system"))


def test_model_custom_without_a_class_is_refused_in_one_line():
    # found by a new user's walkthrough: the placeholder read as if typed ("invalid value for model._target_: 'custom'")
    with pytest.raises(ConfigError, match=r"model._target_: '\(not set\)' \(allowed: model=custom trains your own "
                                          r"nn.Module: give model._target_=mypkg.module.Class\)"):
        validate(gradexp.compose(["model=custom"]))


@pytest.mark.slow
@pytest.mark.parametrize("target, says", [("no_such_pkg.Net", "import failed"), ("mynet.Three", "output fits")])
def test_the_cli_refuses_in_one_line_with_exit_2(tmp_path, target, says):
    import subprocess

    (tmp_path / "mynet.py").write_text("import torch\nclass Three(torch.nn.Module):\n"
                                       "    def __init__(self):\n        super().__init__()\n"
                                       "        self.lin = torch.nn.Linear(64, 3)\n"
                                       "    def forward(self, x):\n        return self.lin(x.flatten(1))\n")
    gradexp_bin = os.path.join(os.path.dirname(sys.executable), "gradexp")
    done = subprocess.run([gradexp_bin, "run", "model=custom", f"model._target_={target}", "train.steps=2",
                           "hydra.run.dir=out"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out" / "summary.json").exists()


def test_a_constructor_that_fails_on_the_users_key_names_that_key():
    """Found by a new user's walkthrough: +model.hidden=-1 was refused as model._target_ without naming the key."""
    with pytest.raises(ConfigError) as refused:
        build.run(_cfg(f"model._target_={HERE}.Net", "+model.hidden=-1"))
    message = str(refused.value)
    assert "a class gradexp can build with +model.hidden=-1 and gradexp's ['input_shape', 'num_outputs']: " \
           "RuntimeError" in message and "\n" not in message


def test_a_module_in_the_current_folder_that_does_not_import_gets_the_pythonpath_hint(tmp_path, monkeypatch):
    """Found by a new user: `gradexp run model._target_=mynets.Net` beside mynets.py failed with 'No module named'
    and no word of PYTHONPATH, which a console script needs for the current folder."""
    from gradexp.config.schema import _path_hint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynets.py").write_text("")
    missing = ModuleNotFoundError("No module named 'mynets'", name="mynets")
    assert _path_hint("mynets", missing) == "; it is in this folder: run with PYTHONPATH=."
    assert _path_hint("mynets.sub", missing) == "; it is in this folder: run with PYTHONPATH=."
    assert _path_hint("other", ModuleNotFoundError("No module named 'other'", name="other")) == ""
    assert _path_hint("mynets", ImportError("cannot import name 'x'")) == ""  # found, and failed inside: no hint
