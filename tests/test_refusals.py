"""Bad input is refused in one line that names the key, the value and what is allowed, before anything is
written (issue 11, items 6-8); the memory estimate is exact in its parameter count."""
from __future__ import annotations

import os

import pytest
import torch

from gradexp.training import factory as build

from gradexp.training import limits
from gradexp.config.schema import ConfigError, check_overrides, schema_keys
from gradexp.training.run import run_experiment
from tests.conftest import compose_config


@pytest.mark.parametrize("override,key", [
    ("+newkey=1", "newkey"),
    ("++model.newkey=1", "model.newkey"),
    ("model._target_=nonexist.mod.MLP", "model._target_"),
    ("model.depth=${oc.env:HOME}", "model.depth"),
    ("seed=99999999999999999999", "seed"),
    ("data.n_val=100000", "data.n_val"),
    ("train.batch_size=100000", "train.batch_size"),
    ("data.n_train=10", "data.n_train"),  # TINY batches 16
    ("model.width=10000000", "model.width"),
    ("model.depth=100000", "model.depth"),  # with model.width=2000 below: 400 G parameters
    ("init.gain=2", "init.gain"),  # init=default keeps PyTorch's values: the gain would be ignored
    ("init.recurrent_gain=0.5", "init.recurrent_gain"),  # likewise for weight_hh
    ("init.recurrent=orthogonal", "init.recurrent"),  # the default MLP has no recurrent weights
])
def test_bad_value_is_refused_before_the_run_folder_exists(tmp_path, quiet_console, override, key):
    extra = ["model.width=2000"] if override == "model.depth=100000" else []
    cfg = compose_config([override, *extra])
    run_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, run_dir=run_dir, overrides=[override], console=quiet_console)
    message = str(err.value)
    assert err.value.key == key and "\n" not in message and "allowed:" in message
    assert not os.path.exists(run_dir)


@pytest.mark.parametrize("override", ["train.stop_on_nonfinite=2", "model.residual=1", "train.deterministic=yes",
                                      "init.recurrent=${oc.env:HOME}", "+data.name=${oc.decode:'x'}"])
def test_overrides_composition_would_silently_convert_are_refused(override):
    with pytest.raises(ConfigError) as err:
        check_overrides([override])
    assert err.value.key == override.lstrip("+").split("=")[0]


def test_booleans_and_literals_pass():
    check_overrides(["train.stop_on_nonfinite=false", "model.residual=True", "init.recurrent=orthogonal"])


def test_every_shipped_option_composes_within_the_schema():
    """The schema check refuses extra keys, so no shipped YAML may carry one."""
    from gradexp.config.schema import _leaves

    groups = {"model": ["mlp", "cnn", "rnn", "lstm", "gru"], "clip": ["norm_0.5", "value_1.0"],
              "schedule": ["step", "cosine"], "init": ["normal", "orthogonal"]}
    for group, options in groups.items():
        for option in options:
            assert set(_leaves(compose_config([f"{group}={option}"]))) <= set(schema_keys()), option


@pytest.mark.parametrize("overrides", [
    ["model=mlp", "norm=layernorm"], ["model=cnn", "norm=batchnorm"], ["model=rnn", "data=adding"],
    ["model=lstm", "data=copy"], ["model=gru", "data=seq_digits", "norm=layernorm"],
])
def test_parameter_count_matches_the_built_model(overrides):
    cfg = compose_config(overrides)
    task = build.task(cfg, torch.device("cpu"))
    model = build.model(cfg, task, torch.device("cpu"))
    assert limits.parameter_count(cfg, task) == sum(p.numel() for p in model.parameters())


def test_memory_refusal_gives_the_estimate_and_the_limit(monkeypatch):
    cfg = compose_config(["optimizer=adam"])
    task = build.task(cfg, torch.device("cpu"))
    params = limits.parameter_count(cfg, task)
    # fp32: params, grads, adam's two moments; the guard's snapshot of params and moments; the update ratio's two copies
    need = 4 * (4 * params + limits.activation_count(cfg, task) + 3 * params + 2 * params)
    assert sum(limits.estimate_bytes(cfg, task).values()) == need
    monkeypatch.setattr(limits, "available_bytes", lambda dev: need - 1)
    with pytest.raises(ConfigError, match=f"needs about {need / 1e9:.3g} GB.*{(need - 1) / 1e9:.3g} GB is free"):
        limits.check_memory(cfg, task, torch.device("cpu"))
    monkeypatch.setattr(limits, "available_bytes", lambda dev: need)
    limits.check_memory(cfg, task, torch.device("cpu"))  # exactly enough: accepted


def test_a_refused_value_is_shown_as_the_user_types_it():
    from gradexp.config.schema import ConfigError

    assert str(ConfigError("model.residual", True, "false")) == "invalid value for model.residual: true (allowed: false)"
    assert str(ConfigError("data.root", None, "a folder")).startswith("invalid value for data.root: null ")
    assert str(ConfigError("model.depth", 0, "an integer >= 1")).startswith("invalid value for model.depth: 0 ")
    assert str(ConfigError("optimizer.name", "sgdd", "sgd")).startswith("invalid value for optimizer.name: 'sgdd' ")


def test_a_gain_is_taken_where_a_scheme_draws_with_it():
    from gradexp.config.schema import validate

    for overrides in (["init=xavier_normal", "init.gain=2"], ["model=lstm", "init.recurrent=orthogonal", "init.gain=2"],
                      ["model=rnn", "data=adding", "init.recurrent=orthogonal", "init.recurrent_gain=0.5"]):
        validate(compose_config(overrides))


@pytest.mark.parametrize("key", ["train.threads", "data.workers"])
def test_more_threads_or_workers_than_cpus_are_refused_before_anything_is_written(tmp_path, monkeypatch, key):
    """train.threads=100000 crashed torch (a segfault, exit 139) and data.workers=1000 ran out of file descriptors in
    hundreds of workers: counts above the CPUs this process may use are refused in the job's own process."""
    from gradexp.training import threads
    from gradexp.training.run import run_experiment

    monkeypatch.setattr(threads, "available_cpus", lambda: 3)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        run_experiment(compose_config([f"{key}=4", "train.steps=2"]), run_dir=str(run_dir))
    assert err.value.key == key and "at most 3, the CPUs this process may use" in str(err.value)
    assert not run_dir.exists()
