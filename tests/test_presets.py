"""Each experiment preset (configs/experiment/) run as the sweep its hydra.sweeper.params define, at reduced size,
and its qualitative outcome asserted from the recorded numbers (summary.json and the event files)."""
from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from gradexp.config.schema import register_schema, validate
from gradexp.analysis.flow import per_layer_gain
from tests.conftest import compose_config
from tests.test_oracle import read_scalars

PRESETS = ["glorot2010", "he2015", "pascanu2013", "hochreiter1997", "ioffe2015", "he2016", "he2016_cifar", "saxe2014",
           "regularization", "micikevicius2018", "xiong2020"]
OPTUNA_PRESETS = ["lr_edge"]  # searched by hydra/sweeper=optuna (tests/test_optuna.py), not a grid
EXPERIMENT_DIR = Path(__file__).resolve().parents[1] / "configs" / "experiment"


def sweep_jobs(name: str) -> list[list[str]]:
    """The override list of every job `gradexp run -m +experiment=NAME` launches (BasicSweeper's cartesian product)."""
    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="gradexp.configs"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    axes = [[f"{o.key_or_group}={v}" for o in [p] for v in p.sweep_string_iterator()] for p in params]
    return [list(job) for job in itertools.product(*axes)]


@pytest.fixture
def run_sweep(run_tiny):
    """run_sweep(name, reduced) -> {job overrides joined by ' ': (summary, scalars)} for every job of the preset."""
    def run(name: str, reduced: list[str], keep=lambda job: True) -> dict[str, tuple[dict, dict]]:
        results = {}
        for i, job in enumerate(j for j in sweep_jobs(name) if keep(j)):
            _, run_dir = run_tiny([f"experiment={name}", *job, *reduced], tiny=False, name=f"{name}_{i}")
            summary = json.load(open(os.path.join(run_dir, "summary.json")))
            results[" ".join(job)] = (summary, read_scalars(run_dir))
        return results

    return run


def act_grads(summary: dict, when: str = "first") -> list[float]:
    return [layer["act_grad_norm"][when] for layer in summary["layers"]]


def test_every_preset_has_a_file_and_a_sweep():
    assert sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml")) == sorted(PRESETS + OPTUNA_PRESETS)
    for name in PRESETS:
        assert len(sweep_jobs(name)) >= 2, name


@pytest.mark.parametrize("name", PRESETS)
def test_every_job_of_every_preset_composes_and_validates(name):
    for job in sweep_jobs(name):
        validate(compose_config([f"experiment={name}", *job], tiny=False))


def test_he2015_xavier_starves_the_first_layer(run_sweep):
    r = run_sweep("he2015", ["model.width=64", "train.steps=1"])
    xavier, kaiming = r["init=xavier_normal"][0], r["init=kaiming_normal"][0]
    assert act_grads(xavier)[0] < 1e-3 * act_grads(kaiming)[0]
    assert per_layer_gain(act_grads(xavier)) == pytest.approx(1 / math.sqrt(2), rel=0.05)
    assert per_layer_gain(act_grads(kaiming)) == pytest.approx(1.0, rel=0.05)
    assert (xavier["verdict"]["at_init"]["label"], kaiming["verdict"]["at_init"]["label"]) == ("vanishing", "healthy")


def test_glorot2010_xavier_lifts_every_saturating_activation(run_sweep):
    r = run_sweep("glorot2010", ["model.width=64", "train.steps=1"])
    gain = {job: per_layer_gain(act_grads(s)) for job, (s, _) in r.items()}
    for act in ("sigmoid", "tanh", "softsign"):
        assert gain[f"activation={act} init=xavier_normal"] > 1.3 * gain[f"activation={act} init=default"], act
    assert min(gain, key=gain.get) == "activation=sigmoid init=default"  # the steepest decay
    assert gain["activation=tanh init=xavier_normal"] > 0.8


def test_ioffe2015_batchnorm_keeps_the_sigmoid_gradient_level(run_sweep):
    r = run_sweep("ioffe2015", ["model.width=64", "train.steps=1"])
    plain, bn = act_grads(r["norm=none"][0]), act_grads(r["norm=batchnorm"][0])
    assert per_layer_gain(plain) < 0.2  # sigmoid at PyTorch's default init: ~0.14 per layer (theory 0.141)
    assert 0.8 < per_layer_gain(bn) < 1.25
    assert plain[0] / plain[-1] < 1e-6 < 0.5 < bn[0] / bn[-1]
    assert [r[j][0]["verdict"]["at_init"]["label"] for j in ("norm=none", "norm=batchnorm")] == ["vanishing", "healthy"]


def log_steps(norms: list[float]) -> list[float]:
    """log(norm[l] / norm[l+1]) for every backward step between hidden layers."""
    return [math.log(a / b) for a, b in zip(norms[:-1], norms[1:])]


@pytest.mark.slow
def test_saxe2014_orthogonal_is_an_isometry_gaussian_only_on_average(run_sweep):
    r = run_sweep("saxe2014", ["train.steps=1"])
    linear_orth, linear_gauss = act_grads(r["activation=identity init=orthogonal"][0]), act_grads(r["activation=identity init=xavier_normal"][0])
    assert max(abs(s) for s in log_steps(linear_orth)) < 1e-4  # W^T of an orthogonal W keeps every norm
    assert per_layer_gain(linear_gauss) == pytest.approx(1.0, abs=0.1)  # preserved on average ...
    assert statistics.pstdev(log_steps(linear_gauss)) > 0.04  # ... with a chi-square spread per layer (~0.09)
    # tanh: the mean gain drifts with depth as q_l changes (mean-field theory follows it); around that drift,
    # orthogonal weights add little noise, Gaussian ones the same chi-square spread as in the linear net
    orth, gauss = (theory_residuals(r[f"activation=tanh init={i}"][0]) for i in ("orthogonal", "xavier_normal"))
    assert statistics.pstdev(orth) < 0.5 * statistics.pstdev(gauss)


def theory_residuals(summary: dict) -> list[float]:
    """Measured minus mean-field log gain of every backward step between hidden layers."""
    layers = list(summary["theory"]["per_layer"].values())
    return [math.log(a["measured"] / b["measured"] / b["gain"]) for a, b in zip(layers[:-1], layers[1:])]


def test_he2016_skips_carry_the_gradient_to_the_input(run_sweep):
    r = run_sweep("he2016", ["train.steps=1"])
    plain, residual = act_grads(r["model.residual=False"][0]), act_grads(r["model.residual=True"][0])
    assert plain[0] / plain[-1] < 1e-4  # default init, relu: ~sqrt(1/6) per block
    assert residual[0] / residual[-1] > 0.5  # identity paths: never below the top's gradient by much
    assert residual[0] > 1e3 * plain[0]
    labels = [r[j][0]["verdict"]["at_init"]["label"] for j in ("model.residual=False", "model.residual=True")]
    assert labels == ["vanishing", "healthy"]


def test_xiong2020_post_ln_gradient_grows_toward_the_output_pre_ln_does_not(run_sweep):
    """At init (step 0, the preset's depth 6 and width 64, Xavier): the residual stream's gradient."""
    r = run_sweep("xiong2020", ["train.steps=1", "data.n_train=64", "data.n_val=16"],
                  keep=lambda job: "schedule.warmup_steps=0" in job)
    post, pre = (act_grads(r[f"model.norm_position={p} schedule.warmup_steps=0"][0]) for p in ("post", "pre"))
    assert per_layer_gain(post) < 0.9 and post[-1] > 2 * post[0]  # grows toward the output (x0.78 per block)
    assert per_layer_gain(pre) > 1.0 and pre[-1] < pre[0]  # level, slightly falling toward the output (x1.07)


@pytest.mark.slow
def test_xiong2020_post_ln_needs_warmup_pre_ln_does_not(run_sweep):
    """The whole preset (4 x 300 steps): post-LN without warmup stays near chance (1/8) on the copy task, warmup
    rescues it, pre-LN learns it either way."""
    r = run_sweep("xiong2020", ["train.threads=1"])
    acc = {job: s["final"]["acc/val"] for job, (s, _) in r.items()}
    assert acc["model.norm_position=post schedule.warmup_steps=0"] < 0.3, acc
    for job in ("post schedule.warmup_steps=100", "pre schedule.warmup_steps=0", "pre schedule.warmup_steps=100"):
        assert acc[f"model.norm_position={job}"] > 0.95, acc


@pytest.mark.slow
def test_pascanu2013_recurrent_scale_explodes_and_clipping_contains_it(run_sweep):
    r = run_sweep("pascanu2013", ["train.steps=60", "data.n_train=512", "data.n_val=128", "train.eval_every=20"])
    g0 = {job: scalars["grad_norm/total"][0] for job, (_, scalars) in r.items()}
    for clip in ("none", "norm_1.0"):
        small, unit, large = (g0[f"init.recurrent_gain={g} clip={clip}"] for g in ("0.5", "1.0", "2.0"))
        assert small < unit < large and large > 10 * small  # the gradient explodes with the recurrent scale
    unclipped, clipped = r["init.recurrent_gain=2.0 clip=none"], r["init.recurrent_gain=2.0 clip=norm_1.0"]
    assert unclipped[0]["status"] == "diverged"
    assert clipped[0]["status"] == "completed" and math.isfinite(clipped[0]["final"]["loss/train"])
    assert max(clipped[1]["grad_norm/total_clipped"].values()) <= 1.0 + 1e-4


@pytest.mark.slow
def test_regularization_does_not_cure_vanishing_gradients(run_sweep):
    r = run_sweep("regularization", ["model.width=32", "train.steps=150", "log.every=50", "train.eval_every=150"])
    gain = {job: per_layer_gain(act_grads(s, "last")) for job, (s, _) in r.items()}  # after training
    plain = gain.pop("reg.l1=0.0 reg.l2=0.0")
    assert all(g < 1.05 * plain for g in gain.values()), (plain, gain)  # no penalty lifts the gradient ...
    assert gain["reg.l1=0.0 reg.l2=0.01"] < 0.75 * plain  # ... and a strong one deepens the decay


@pytest.mark.slow
def test_hochreiter1997_gated_cells_learn_the_long_adding_problem(run_sweep):
    """The seq_len=40 jobs at full length (~1 min): only the gated cells get below the constant predictor's MSE."""
    r = run_sweep("hochreiter1997", ["data.n_val=256", "train.threads=1"], keep=lambda job: "data.seq_len=40" in job)
    loss = {job.split()[0]: s["final"]["loss/val"] for job, (s, _) in r.items()}
    assert loss["model=rnn"] > 0.1  # predicting the mean sum 1.0 scores 1/6
    assert loss["model=lstm"] < 0.1 * loss["model=rnn"] and loss["model=gru"] < 0.1 * loss["model=rnn"]
    # the verdict (issue 10): the gated cells end healthy, the Elman RNN still loses the gradient through time
    labels = {job.split()[0]: s["verdict"]["label"] for job, (s, _) in r.items()}
    assert labels == {"model=rnn": "vanishing", "model=lstm": "healthy", "model=gru": "healthy"}


@pytest.mark.slow
def test_the_default_demo_is_healthy(run_tiny):
    """`gradexp run` as a new user runs it (500 steps, ~96 % val accuracy): it starts vanishing (PyTorch's default
    init, ×0.43 per layer) and recovers while it trains, so the headline is healthy."""
    outcome, _ = run_tiny(["train.threads=1"], tiny=False)
    assert outcome.verdict["label"] == "healthy" and outcome.verdict["trained"] is True


@pytest.mark.slow
def test_multirun_plus_experiment_runs_the_whole_sweep(tmp_path):
    """`gradexp run -m +experiment=NAME` launches one job per combination of the preset's sweeper params."""
    cmd = [sys.executable, "-m", "gradexp", "run", "-m", "+experiment=glorot2010", "model.width=8", "train.steps=2",
           f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")]
    assert sorted(" ".join(o for o in s["overrides"] if o.startswith(("activation", "init"))) for s in summaries) == \
        sorted(" ".join(job) for job in sweep_jobs("glorot2010"))
    assert all(s["status"] == "completed" and s["theory"]["predicted_gain"] for s in summaries)


def test_experiment_without_plus_composes_the_preset():
    from gradexp.cli.presets import normalise

    assert normalise(["+experiment=he2015", "+foo=1"]) == ["experiment=he2015", "+foo=1"]
    cfg = compose_config(["experiment=he2015"], tiny=False)
    assert (cfg.model.depth, cfg.train.steps, cfg.activation.name) == (30, 300, "relu")


def test_only_a_fresh_single_run_of_a_sweep_preset_is_refused():
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from gradexp.cli.presets import UnsweptPreset, refuse_unswept

    def hydra_cfg(mode, params):
        return OmegaConf.create({"mode": mode, "sweeper": {"params": params}})

    sweep = {"init": "xavier_normal,kaiming_normal"}
    with pytest.raises(UnsweptPreset, match="experiment=he2015 is a sweep over init=xavier_normal,kaiming_normal: add"):
        refuse_unswept(hydra_cfg(RunMode.RUN, sweep), ["experiment=he2015"], resuming=False)
    refuse_unswept(hydra_cfg(RunMode.RUN, sweep), ["experiment=he2015", "init=kaiming_normal"], resuming=True)  # a job
    refuse_unswept(hydra_cfg(RunMode.MULTIRUN, sweep), ["experiment=he2015"], resuming=False)
    refuse_unswept(hydra_cfg(RunMode.RUN, None), ["experiment=mine"], resuming=False)  # a preset without a sweep
    # one value for every swept key (as the verdict's advice prints a job's command): that job, run alone
    refuse_unswept(hydra_cfg(RunMode.RUN, sweep), ["experiment=he2015", "init=kaiming_normal"], resuming=False)
    two = {"model.norm_position": "post,pre", "schedule.warmup_steps": "0,100"}
    with pytest.raises(UnsweptPreset):
        refuse_unswept(hydra_cfg(RunMode.RUN, two), ["experiment=xiong2020", "model.norm_position=post"], resuming=False)
    refuse_unswept(hydra_cfg(RunMode.RUN, two), ["model.norm_position=post", "experiment=xiong2020",
                                                 "schedule.warmup_steps=100"], resuming=False)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["experiment=he2015", "+experiment=he2015"])
def test_sweep_preset_without_multirun_is_refused_in_one_line(tmp_path, preset):
    cmd = [sys.executable, "-m", "gradexp", "run", preset, "train.steps=2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "add -m to run it" in done.stderr and "gradexp run -m experiment=he2015 train.steps=2" in done.stderr
    assert not list(tmp_path.glob("outputs/*/*"))  # no run folder


@pytest.mark.slow
def test_micikevicius2018_fp16_loses_the_gradient_and_loss_scaling_recovers_it(run_sweep):
    r = run_sweep("micikevicius2018", ["train.steps=2", "log.every=1", "data.n_train=256", "data.n_val=64"])
    first = {job: {t[len("amp/underflow/"):]: v[0] for t, v in scalars.items() if t.startswith("amp/underflow/")}
             for job, (_, scalars) in r.items()}
    unscaled, scaled = first["train.precision=fp16 train.loss_scale=none"], first["train.precision=fp16 train.loss_scale=dynamic"]
    assert unscaled["layers.0"] > 0.9 and max(unscaled.values()) > 0.9  # most of the lower layers' gradient is gone
    assert max(scaled.values()) < 0.05  # dynamic scaling keeps it
    assert max(first["train.precision=bf16 train.loss_scale=none"].values()) == 0  # float32's range: nothing lost
    assert not first["train.precision=fp32 train.loss_scale=none"]  # no autocast, no underflow probe
    fp16_verdict = r["train.precision=fp16 train.loss_scale=none"][0]["verdict"]
    assert "fp16 flushed up to" in fp16_verdict["evidence"] and "train.loss_scale=dynamic" in fp16_verdict["suggestions"]
    bf16_verdict = r["train.precision=bf16 train.loss_scale=none"][0]["verdict"]
    assert "flushed" not in bf16_verdict["evidence"]
