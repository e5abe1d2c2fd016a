"""Verdicts on constructed summaries: known per-layer profiles in, label/evidence/suggestions out."""
from __future__ import annotations

import json
import os

import pytest

from gradexp.analysis.advice import Factors
from gradexp.config.schema import ConfigError, DiagnoseConf, validate
from gradexp.analysis.diagnose import depth_flow, diagnose, time_flow
from gradexp.sinks.terminal import command_line
from tests.conftest import compose_config

CONF = DiagnoseConf()


def summary(first: list[float], last: list[float] | None = None, quantity: str = "act_grad_norm", **extra) -> dict:
    last = first if last is None else last
    layers = [{"name": f"layers.{i}", quantity: {"first": f, "last": l}} for i, (f, l) in enumerate(zip(first, last))]
    return {"status": "completed", "layers": layers, "nonfinite": None, **extra}


def geometric(gain: float, n: int = 20, top: float = 1.0) -> list[float]:
    """norms[i] = top * gain^(n-1-i): the gradient changes by `gain` per layer travelled backward."""
    return [top * gain ** (n - 1 - i) for i in range(n)]


def test_sigmoid_profile_is_vanishing_with_numbers_and_relu_advice():
    verdict = diagnose(summary(geometric(0.25)), Factors(activation="sigmoid", init="xavier_normal", depth=20), CONF)
    assert verdict["label"] == "vanishing"
    assert verdict["gain"] == pytest.approx(0.25)
    assert verdict["first_last_ratio"] == pytest.approx(0.25 ** 19)
    assert "shrinks ×0.25 per layer" in verdict["evidence"]
    assert f"layer 0 gets {0.25 ** 19:.2g} of layer 19's gradient" in verdict["evidence"]
    assert verdict["cause"].startswith("activation (sigmoid)")  # no act_saturation logged: not "saturating"
    assert verdict["suggestions"][0] == "activation=relu init=kaiming_normal"
    assert "model.residual=true" in verdict["suggestions"] and "norm=batchnorm" in verdict["suggestions"]


def test_frozen_first_layers_leave_the_flow_to_the_layers_the_gradient_reaches():
    """Found by a user fine-tuning with a frozen first layer: its layer has no gradient, and the run got no verdict
    ('Fewer than two hidden layers ... nothing to judge') with two more layers measured."""
    s = summary(geometric(0.25, n=6))
    for frozen in s["layers"][:2]:
        frozen["act_std"] = frozen.pop("act_grad_norm")  # what a frozen layer logs: statistics, no gradient
    verdict = diagnose(s, Factors(activation="sigmoid", init="xavier_normal", depth=6), CONF)
    assert verdict["label"] == "vanishing" and verdict["gain"] == pytest.approx(0.25)
    assert f"layer 2 gets {0.25 ** 3:.2g} of layer 5's gradient" in verdict["evidence"]
    s["layers"][3].pop("act_grad_norm")  # a gap after the first layer reached: no flow claimed across it
    assert depth_flow(s) is None


@pytest.mark.parametrize("index, at", [
    ([0, 5], [0, 5]),              # model.watch=[layers.0,layers.5]
    ([1, 3, 4], [1, 3, 4]),
    ([0, 3, 3], [0, 3, 3]),        # two parts of one layer
    ([0, "2", 4], [0, 1, 2]),      # a summary is untrusted input: not whole numbers, places in the list
    ([0, 3, 2], [0, 1, 2]),        # decreasing: places
    ([0, 10 ** 18, 2 * 10 ** 18], [0, 1, 2]),  # beyond any model's depth: places
    ([-1, 0, 1], [0, 1, 2]),
])
def test_a_watched_subset_is_fitted_at_the_depths_summary_json_gives(index, at):
    """Found by a new user: model.watch=[layers.0,layers.5] read x0.058 per layer (one step from 0 to 5) where the
    six layers read x0.565, and called layers.5 'layer 1'."""
    s = summary([0.5 ** (at[-1] - i) for i in at])  # a gain of 0.5 per layer at the depths `at`
    for layer, i in zip(s["layers"], index):
        layer["index"] = i
    verdict = diagnose(s, Factors(activation="tanh", init="xavier_normal", depth=6), CONF)
    assert verdict["gain"] == pytest.approx(0.5)
    assert f"layer {at[0]} gets {0.5 ** (at[-1] - at[0]):.2g} of layer {at[-1]}'s gradient" in verdict["evidence"]


def test_a_run_watching_a_subset_gives_the_gain_of_all_its_layers(tmp_path, quiet_console):
    """End to end: gradexp run's model.watch=[layers.0,layers.5] against the same run watching all six layers."""
    from gradexp.training.run import run_experiment

    verdicts, layers = {}, {}
    for name, watch in (("two", "[layers.0,layers.5]"), ("all", "[]")):
        overrides = ["activation=tanh", "model.depth=6", "train.steps=3", "log.every=1", f"model.watch={watch}"]
        outcome = run_experiment(compose_config(overrides), run_dir=str(tmp_path / name), overrides=overrides,
                                 console=quiet_console)
        verdicts[name] = outcome.verdict
        layers[name] = json.load(open(tmp_path / name / "summary.json"))["layers"]
    assert [layer.get("index") for layer in layers["two"]] == [0, 5]
    assert [layer.get("index") for layer in layers["all"]] == [None] * 6  # all six: no index written
    ratio = verdicts["all"]["at_init"]["first_last_ratio"]
    assert verdicts["two"]["at_init"]["first_last_ratio"] == pytest.approx(ratio, rel=1e-9)  # the same two norms
    assert verdicts["two"]["at_init"]["gain"] == pytest.approx(ratio ** (1 / 5), rel=1e-9)
    assert f"layer 0 gets {ratio:.2g} of layer 5's gradient" in verdicts["two"]["evidence"]


def test_flat_profile_is_healthy_without_suggestions():
    verdict = diagnose(summary(geometric(0.97)), Factors(activation="relu", init="kaiming_normal"), CONF)
    assert verdict["label"] == "healthy" and verdict["suggestions"] == [] and verdict["cause"] == ""
    assert verdict["gain"] == pytest.approx(0.97)


def test_relu_with_xavier_blames_the_init_scale():
    verdict = diagnose(summary(geometric(0.7)), Factors(activation="relu", init="xavier_normal"), CONF)
    assert verdict["label"] == "vanishing" and verdict["cause"].startswith("init scale")
    assert verdict["suggestions"][0] == "init=kaiming_normal"


def test_exploding_at_the_end_decides_and_both_moments_are_reported():
    s = summary(first=geometric(1.0), last=geometric(1.6), quantity="grad_norm")
    verdict = diagnose(s, Factors(activation="relu", init="kaiming_normal", init_gain=3.0), CONF)
    assert verdict["label"] == "exploding" and verdict["gain"] == pytest.approx(1.6)
    assert verdict["decided_by"] == "at_end"
    assert (verdict["at_init"]["label"], verdict["at_end"]["label"]) == ("healthy", "exploding")
    assert "At the end of training: ‖∂L/∂θ‖ grows ×1.6 per layer" in verdict["evidence"]
    assert "At initialisation (step 0): ‖∂L/∂θ‖ grows ×1 per layer" in verdict["evidence"]
    assert "init.gain=1.0" in verdict["suggestions"] and "clip=norm_1.0" in verdict["suggestions"]


def test_ratio_threshold_catches_a_drop_the_gain_misses():
    norms = [1e-5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # fitted gain ~0.5 but first layer starved
    flow = depth_flow(summary(norms))
    loose = DiagnoseConf(vanishing_gain=0.1)
    assert flow.gain["last"] > loose.vanishing_gain
    assert diagnose(summary(norms), Factors(), loose)["label"] == "vanishing"


def test_a_moment_with_no_finite_norms_is_labelled_so_not_healthy():
    """Found by a new user: a diverged run's panel read 'at the end of training: healthy' over 'no finite norms'."""
    last = [float("nan")] * 6
    s = summary(geometric(0.5, n=6), [None] * 6, status="diverged", nonfinite={"step": 40, "tensor": "loss/train"})
    verdict = diagnose(s, Factors(), CONF)
    assert verdict["label"] == "diverged" and verdict["at_end"]["label"] == "no finite norms"
    assert verdict["at_end"]["axis"] is None and "At the end of training: ‖∂L/∂h‖: no finite norms" in verdict["evidence"]
    assert verdict["at_init"]["label"] == "vanishing"
    s = summary(geometric(0.5, n=6), last, initial={"loss/train": 2.0}, final={"loss/train": 2.0}, steps=50)
    verdict = diagnose(s, Factors(), CONF)  # not diverged, not trained: judged at its start, never by the unknown end
    assert (verdict["label"], verdict["decided_by"], verdict["at_end"]["label"]) == ("vanishing", "at_init",
                                                                                      "no finite norms")
    zeros = summary(geometric(0.5, n=6), [0.0] * 6)  # zeros are finite (a review): not "no finite norms"
    assert diagnose(zeros, Factors(), CONF)["at_end"]["label"] != "no finite norms"


def test_layers_whose_gradient_is_exactly_zero_are_said_so_not_no_finite_norms():
    """Found by a new user: optimizer.lr=1 killed every ReLU of layers 0-4 (act_grad_norm exactly 0), and the panel
    read 'At the end of training: ‖∂L/∂h‖: no finite norms' beside the at_end label vanishing."""
    verdict = diagnose(summary(geometric(0.5, n=6), [0.0] * 5 + [0.3]), Factors(), CONF)
    assert verdict["at_end"]["label"] == "vanishing"
    assert "At the end of training: ‖∂L/∂h‖ is exactly 0 in 5 of 6 layers: no gradient reaches them" in \
        verdict["evidence"]
    assert "no finite norms" not in verdict["evidence"]


def test_diverged_wins_and_suggests_a_lower_lr_and_clipping():
    s = summary(geometric(1.0), status="diverged", nonfinite={"step": 7, "tensor": "loss/train"})
    verdict = diagnose(s, Factors(lr=0.5), CONF)
    assert verdict["label"] == "diverged"
    assert verdict["evidence"].startswith("loss/train became NaN/Inf at step 7.")
    assert verdict["suggestions"][:2] == ["optimizer.lr=0.05", "clip=norm_1.0"]


def test_bptt_vanishing_through_time_suggests_gated_cells():
    per_step = geometric(0.8, n=30)
    s = summary(geometric(1.0, n=2), bptt={"layers.0": {"first": per_step, "last": per_step}})
    verdict = diagnose(s, Factors(family="rnn", activation="tanh", depth=2), CONF)
    assert verdict["label"] == "vanishing" and verdict["cause"] == "recurrence (rnn)"
    assert verdict["time_gain"] == pytest.approx(0.8)
    assert "through time in layers.0, ‖∂L/∂h_t‖ shrinks ×0.8 per time step" in verdict["evidence"]
    assert verdict["suggestions"][:2] == ["model=lstm", "model=gru"]


def test_one_layer_rnn_panel_does_not_contradict_its_label():
    """A one-layer RNN vanishing through time used to read 'nothing for the gradient to vanish across' under a
    'vanishing' heading: only the through-time evidence is stated."""
    per_step = geometric(0.6, n=40)
    s = {"status": "completed", "layers": [{"name": "layers.0", "act_grad_norm": {"first": 1.0, "last": 1.0}}],
         "nonfinite": None, "bptt": {"layers.0": {"first": per_step, "last": per_step}}}
    verdict = diagnose(s, Factors(family="rnn", activation="tanh", depth=1), CONF)
    assert verdict["label"] == "vanishing" and "nothing" not in verdict["evidence"]
    assert "through time in layers.0" in verdict["evidence"]


def test_missing_measurements_give_healthy_with_a_reason():
    assert time_flow({"layers": []}) is None and depth_flow({"layers": [{"name": "layers.0"}]}) is None
    verdict = diagnose({"status": "completed", "layers": [{"name": "layers.0"}]}, Factors(depth=1), CONF)
    assert verdict["label"] == "healthy" and "Fewer than two hidden layers" in verdict["evidence"]


def test_nonfinite_norms_are_skipped_not_fatal():
    norms = geometric(0.5, n=6)
    norms[2] = None
    assert depth_flow(summary(norms)).gain["first"] == pytest.approx(0.5)


@pytest.mark.parametrize("override", ["diagnose.vanishing_gain=1.2", "diagnose.exploding_gain=0.9",
                                      "diagnose.vanishing_ratio=0", "diagnose.time_exploding_gain=1"])
def test_thresholds_out_of_range_are_rejected(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        validate(compose_config([override]))


def test_a_run_stores_the_verdict_of_its_own_summary_and_shows_the_panel(tmp_path):
    import json

    from rich.console import Console

    from gradexp.training.run import run_experiment

    overrides = ["model.depth=5", "activation=sigmoid", "init=xavier_normal"]
    console = Console(record=True, width=200, file=open(os.devnull, "w"))
    outcome = run_experiment(compose_config(overrides), run_dir=str(tmp_path), overrides=overrides, console=console)
    saved = json.load(open(tmp_path / "summary.json"))
    cfg = compose_config(overrides)
    assert saved["verdict"] == json.loads(json.dumps(diagnose(saved, Factors.from_cfg(cfg), cfg.diagnose)))
    assert saved["verdict"] == json.loads(json.dumps(outcome.verdict))
    shown = console.export_text()
    assert saved["verdict"]["label"] in shown and saved["verdict"]["evidence"][:40] in shown
    assert "..." not in shown
    for fix in saved["verdict"]["suggestions"]:
        assert command_line(overrides, fix) in shown  # a complete command line, on one line


def trained_summary(first, last, loss=(2.3, 0.1), **extra) -> dict:
    return summary(first, last, initial={"loss/train": loss[0]}, final={"loss/train": loss[1]}, steps=500, **extra)


def test_a_run_that_recovers_and_trains_is_healthy_with_both_moments_stated():
    verdict = diagnose(trained_summary(geometric(0.5), geometric(1.0)), Factors(), CONF)
    assert verdict["label"] == "healthy" and verdict["trained"] is True and verdict["suggestions"] == []
    assert (verdict["at_init"]["label"], verdict["at_end"]["label"]) == ("vanishing", "healthy")
    assert verdict["at_init"]["gain"] == pytest.approx(0.5) and verdict["at_end"]["gain"] == pytest.approx(1.0)
    assert "At initialisation (step 0)" in verdict["evidence"] and "it trains" in verdict["evidence"]


def test_a_run_that_starts_vanishing_and_does_not_train_is_vanishing_at_init():
    verdict = diagnose(trained_summary(geometric(0.5), geometric(1.0), loss=(2.3, 2.2)), Factors(), CONF)
    assert verdict["label"] == "vanishing" and verdict["decided_by"] == "at_init" and verdict["trained"] is False


def test_usable_size_not_the_per_step_rate_decides_for_a_run_that_trains():
    short = diagnose(trained_summary(geometric(0.7, n=6), geometric(0.7, n=6)), Factors(depth=6), CONF)
    assert short["label"] == "healthy"  # layer 0 still gets 0.7^5 = 0.17 of the top's gradient
    per_step = geometric(0.763, n=40)  # hochreiter1997's Elman RNN at length 40 after training: 2.6e-5 reaches t=0
    s = trained_summary(geometric(1.0, n=2), geometric(1.0, n=2), bptt={"layers.0": {"first": per_step, "last": per_step}})
    assert diagnose(s, Factors(family="rnn", activation="tanh", depth=2), CONF)["label"] == "vanishing"


def test_cause_follows_the_evidence_init_scale_when_nothing_saturates():
    """tanh at PyTorch's default init: measured ×0.565, theory 0.568, no saturation: the init scale is the cause."""
    s = summary(geometric(0.565), theory={"predicted_gain": 0.568, "measured_gain": 0.565,
                                          "alternatives": {"init=xavier_normal": 0.879, "init=kaiming_normal": 1.9}})
    for layer in s["layers"]:
        layer["act_saturation"] = {"first": 0.0, "last": 0.0}
    verdict = diagnose(s, Factors(activation="tanh", init="default", depth=20), CONF)
    assert verdict["cause"] == "init scale (default, gain 1)" and verdict["suggestions"][0] == "init=xavier_normal"
    for quoted in ("act_saturation ≤ 0.000", "×0.565", "×0.568", "init=xavier_normal predicts ×0.879"):
        assert quoted in verdict["evidence"], quoted


def test_the_init_in_use_is_not_offered_as_the_better_one():
    """sigmoid with Xavier: every init predicts a low gain and Xavier's is the best; the evidence says no other init
    does better instead of 'init=xavier_normal predicts' the same number again, and the cause fits a panel title."""
    s = summary(geometric(0.239), theory={"predicted_gain": 0.236, "measured_gain": 0.239,
                                          "alternatives": {"init=xavier_normal": 0.236, "init=kaiming_normal": 0.2}})
    for layer in s["layers"]:
        layer["act_saturation"] = {"first": 0.0, "last": 0.0}
    verdict = diagnose(s, Factors(activation="sigmoid", init="xavier_normal", depth=30), CONF)
    evidence = verdict["evidence"]
    assert "no other init predicts more" in evidence and "init=xavier_normal predicts" not in evidence
    assert verdict["cause"] == "activation (sigmoid): low gain at any init"


@pytest.mark.parametrize("activation, fraction, cause, first", [
    ("tanh", 0.6, "saturating activation (tanh)", "activation=relu"),  # init=kaiming_normal is in force: left out
    ("relu", 0.5, "dead units (relu)", "activation=leaky_relu"),
])
def test_cause_follows_the_evidence_saturation_and_dead_units(activation, fraction, cause, first):
    s = summary(geometric(0.5))
    for layer in s["layers"]:
        layer["act_saturation"] = {"first": fraction, "last": fraction}
    verdict = diagnose(s, Factors(activation=activation, init="kaiming_normal"), CONF)
    assert verdict["cause"] == cause and verdict["suggestions"][0] == first
    assert f"{fraction:.0%}" in verdict["evidence"]


@pytest.mark.parametrize("init, predicted, cause, first", [
    ("xavier_normal", 0.707, "init scale (xavier_normal, gain 1)", "init=kaiming_normal"),
    ("kaiming_normal", 1.0, "dead units (relu)", "activation=leaky_relu"),
])
def test_dead_units_are_not_blamed_where_mean_field_theory_blames_the_init(init, predicted, cause, first):
    """Found by a new user: he2015's Xavier job was 'vanishing - dead units (relu)' while its Kaiming twin, with the
    same dead units (a ReLU net is scale-invariant), was healthy; theory names Xavier's 1/sqrt(2) per layer."""
    s = summary(geometric(predicted if predicted < 0.8 else 0.5),
                theory={"predicted_gain": predicted, "measured_gain": predicted,
                        "alternatives": {"init=xavier_normal": 0.707, "init=kaiming_normal": 1.0}})
    for layer in s["layers"]:
        layer["act_saturation"] = {"first": 0.48, "last": 0.48}
    verdict = diagnose(s, Factors(activation="relu", init=init), CONF)
    assert verdict["cause"] == cause and verdict["suggestions"][0] == first


@pytest.mark.parametrize("activation", ["gelu", "elu", "selu", "mish", "leaky_relu"])
def test_units_below_zero_are_not_blamed_where_the_activation_still_passes_gradient(activation):
    """Only a ReLU unit <= 0 for the whole batch is dead (derivative 0); a GELU/ELU/SELU/Mish/leaky unit there still
    passes gradient, so its act_saturation share is not the cause of a vanishing gradient."""
    s = summary(geometric(0.5))
    for layer in s["layers"]:
        layer["act_saturation"] = {"first": 0.5, "last": 0.5}
    verdict = diagnose(s, Factors(activation=activation, init="kaiming_normal"), CONF)
    assert verdict["label"] == "vanishing" and "dead units" not in verdict["cause"]
    assert not any(sug.startswith("activation=leaky_relu") for sug in verdict["suggestions"])


@pytest.mark.parametrize("gain, radius, label, expected", [(0.8, 1.0, "vanishing", "init.recurrent_gain=1.25"),
                                                           (1.2, 2.0, "exploding", "init.recurrent_gain=1.67")])
def test_recurrent_gain_remedy_and_nothing_already_in_force(gain, radius, label, expected):
    """An RNN that already has orthogonal weight_hh is not told to use it; it is told the gain that moves its
    time gain toward 1 (radius / measured gain), the remedy pascanu2013 shows to work."""
    per_step = geometric(gain, n=40)
    s = summary(geometric(1.0, n=2), bptt={"layers.0": {"first": per_step, "last": per_step}})
    f = Factors(family="rnn", activation="tanh", depth=2, init="xavier_normal", recurrent="orthogonal", recurrent_gain=radius)
    verdict = diagnose(s, f, CONF)
    assert verdict["label"] == label and expected in verdict["suggestions"]
    in_force = f.in_force()
    for suggestion in verdict["suggestions"]:
        assert any(in_force.get(o.split("=")[0]) != o.split("=")[1] for o in suggestion.split()), suggestion
        assert "init.recurrent=orthogonal" not in suggestion


def amp_summary(underflow: float) -> dict:
    return summary(geometric(0.5, n=6), amp={"underflow_max": {"layers.0": underflow, "layers.5": 0.0}})


def test_fp16_losing_gradient_entries_says_so_and_suggests_loss_scaling():
    verdict = diagnose(amp_summary(0.9), Factors(precision="fp16", loss_scale="none", depth=6), CONF)
    assert "fp16 flushed up to 90% of a layer's nonzero gradient entries" in verdict["evidence"]
    assert verdict["cause"].startswith("fp16 underflow")
    assert verdict["suggestions"][:2] == ["train.loss_scale=dynamic", "train.precision=bf16"]


def test_fp16_with_dynamic_scaling_still_losing_suggests_bf16_only():
    verdict = diagnose(amp_summary(0.5), Factors(precision="fp16", loss_scale="dynamic", depth=6), CONF)
    assert "even with train.loss_scale=dynamic" in verdict["evidence"]
    assert verdict["suggestions"][0] == "train.precision=bf16"
    assert "train.loss_scale=dynamic" not in verdict["suggestions"]


@pytest.mark.parametrize("precision,underflow", [("bf16", 0.9), ("fp16", 0.01)])
def test_bf16_or_negligible_underflow_is_not_blamed_on_precision(precision, underflow):
    verdict = diagnose(amp_summary(underflow), Factors(precision=precision, depth=6), CONF)
    assert "flushed" not in verdict["evidence"] and not verdict["cause"].startswith("fp16")
    assert not any(s.startswith("train.") for s in verdict["suggestions"])


def test_precision_factors_come_from_the_config():
    f = Factors.from_cfg(compose_config(["train.precision=16-mixed"]))
    assert (f.precision, f.loss_scale) == ("fp16", "dynamic")
    f = Factors.from_cfg(compose_config(["train.precision=bf16", "train.loss_scale=1024"]))
    assert (f.precision, f.loss_scale) == ("bf16", "1024")


def test_a_loss_that_fell_but_did_not_halve_is_not_called_untrained():
    """Found by a new user's walkthrough: a 20-step run whose loss fell 2.33 → 1.32 read "it does not train"."""
    from gradexp.analysis.diagnose import training_sentence

    summary = {"initial": {"loss/train": 2.33}, "final": {"loss/train": 1.32}}
    assert training_sentence(summary, False) == "Train loss 2.33 → 1.32: not halved, so it does not count as trained."
    assert training_sentence(summary, True) == "Train loss 2.33 → 1.32: it trains (halved)."


def test_a_loss_halved_only_down_to_an_input_blind_prediction_is_not_trained():
    """Found by a new user: on the adding problem, 0.96 -> 0.186 read "it trains (halved)", while predicting the
    targets' mean (0.167) reaches as much without the input."""
    from gradexp.analysis.diagnose import trained, training_sentence

    blind = {"initial": {"loss/train": 0.96, "loss/constant": 0.167}, "final": {"loss/train": 0.186}, "steps": 500}
    assert trained(blind) is False
    assert training_sentence(blind, False) == ("Train loss 0.96 → 0.186: halved, but no lower than 0.167, what "
                                               "predicting without the input reaches, so it does not count as trained.")
    solved = {**blind, "final": {"loss/train": 0.01}}
    assert trained(solved) is True and training_sentence(solved, True) == "Train loss 0.96 → 0.01: it trains (halved)."
    text = {"initial": {"loss/train": 4.87, "loss/constant": 3.42}, "final": {"loss/train": 2.19}, "steps": 500}
    assert trained(text) is True  # a review: a character model need not beat the unigram entropy by half
    digits = {"initial": {"loss/train": 2.33, "loss/constant": 2.302}, "final": {"loss/train": 1.2}, "steps": 500}
    assert trained(digits) is False and trained({**digits, "final": {"loss/train": 1.1}}) is True
    forged = {**blind, "initial": {"loss/train": 0.96, "loss/constant": "0.1"}}  # a summary is untrusted input
    assert trained(forged) is True


@pytest.mark.parametrize("data", ["digits", "adding", "copy", "blobs"])
def test_the_input_blind_loss_is_the_targets_variance_or_entropy_in_float64(data):
    import torch

    from gradexp.training import factory

    cfg = compose_config([f"data={data}"] + (["model=lstm"] if data in ("adding", "copy") else []))
    task = factory.task(cfg, torch.device("cpu"))
    y = task.y_train
    if task.kind == "regression":
        expected = torch.var(y.reshape(len(y), -1).double(), dim=0, correction=0).mean().item()
    else:
        labels = y.reshape(-1)
        p = torch.tensor([(labels == c).double().mean().item() for c in labels.unique()], dtype=torch.float64)
        expected = -(p * p.log()).sum().item()
    assert task.constant_loss() == pytest.approx(expected, rel=1e-12)
