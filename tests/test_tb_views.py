"""HParams, custom-scalars layout and flow images, read back from the run's event files with EventAccumulator
and checked against values computed independently from the logged scalars (numpy fit for the gain)."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from gradexp.sinks import flow_images
from gradexp.sinks.tb_views import HEATMAP_TAG, PROFILE_TAG
from tests.test_oracle import read_scalars

OVERRIDES = ["model.depth=4", "activation=sigmoid", "init=xavier_normal"]


def accumulator(run_dir: str) -> EventAccumulator:
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def plugin_content(acc: EventAccumulator, plugin: str) -> dict[str, bytes]:
    return acc.PluginTagToContent(plugin)


@pytest.fixture
def tiny_run(run_tiny):
    outcome, run_dir = run_tiny(OVERRIDES)
    return outcome, run_dir, accumulator(run_dir)


def test_hparams_entry_lives_in_the_run_folder_with_factors_and_metrics(tiny_run):
    outcome, run_dir, acc = tiny_run
    assert not [d for d in os.listdir(run_dir) if os.path.isdir(os.path.join(run_dir, d))], "no sub-run"
    content = plugin_content(acc, "hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model"].string_value == "mlp"
    assert start.hparams["activation"].string_value == "sigmoid"
    assert start.hparams["init"].string_value == "xavier_normal"
    assert start.hparams["model.depth"].number_value == 4
    assert start.hparams["verdict"].string_value == outcome.verdict["label"]
    # the run's own factors, plus the thread count (it changes results): keys nobody set (clip.*) would be constant columns
    assert set(start.hparams) == {"model", "activation", "init", "model.depth", "verdict", "status", "perf.torch_threads"}
    assert start.hparams["perf.torch_threads"].number_value == outcome.perf["torch_threads"]  # issue 10: recorded in HParams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/loss_train", "hparams/gain", "hparams/first_last_ratio", "hparams/verdict"} <= metric_tags


def test_hparams_metrics_match_the_logged_scalars(tiny_run):
    outcome, run_dir, _ = tiny_run
    logged = read_scalars(run_dir)
    gains = []
    for step in (min(logged["act_grad_norm/layers.0"]), max(logged["act_grad_norm/layers.0"])):
        norms = [logged[f"act_grad_norm/layers.{i}"][step] for i in range(4)]
        gains.append(float(np.exp(-np.polyfit(np.arange(4), np.log(norms), 1)[0])))  # independent of gradexp.analysis.flow
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    judged = gains[0] if summary["verdict"]["decided_by"] == "at_init" else gains[1]  # the moment that decided
    assert logged["hparams/gain"][outcome.steps] == pytest.approx(judged, rel=1e-5)
    assert logged["hparams/loss_train"][outcome.steps] == pytest.approx(logged["loss/train"][max(logged["loss/train"])])
    assert summary["verdict"]["gain"] == pytest.approx(judged, rel=1e-5)
    assert logged["hparams/verdict"][outcome.steps] == {"vanishing": -1, "healthy": 0, "exploding": 1}[summary["verdict"]["label"]]


def layout_charts(acc: EventAccumulator) -> list[tuple[str, str, list[str]]]:
    raw = acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]  # the layout rides in the tensor
    return [(cat.title, chart.title, list(chart.multiline.tag)) for cat in layout_pb2.Layout.FromString(raw).category
            for chart in cat.chart]


def test_custom_scalars_show_the_flow_per_run_first_then_one_chart_per_layer(tiny_run):
    _, run_dir, acc = tiny_run
    charts, tags = layout_charts(acc), read_scalars(run_dir)
    matched = [(category, sorted(t for t in tags if any(re.search(r, t) for r in regexes)))
               for category, _, regexes in charts]
    assert matched[:2] == [("gradient flow (one line per run)", ["Flow/gain"]),
                           ("gradient flow (one line per run)", ["Flow/log10_first_over_last"])]
    per_layer = [m for c, m in matched if c.startswith("gradient per layer")]
    assert per_layer == [[f"Flow/log10_rel/layers.{i}"] for i in range(4)]  # one layer per chart
    raw = {c: m for c, m in matched if c.startswith("per-layer raw")}
    assert raw and all(m for m in raw.values()) and len(raw) == 1


def test_flow_scalars_match_a_float64_oracle_from_the_logged_norms(tiny_run):
    import torch

    _, run_dir, _ = tiny_run
    logged = read_scalars(run_dir)
    for step in logged["act_grad_norm/layers.0"]:
        norms = torch.tensor([logged[f"act_grad_norm/layers.{i}"][step] for i in range(4)], dtype=torch.float64)
        rel = torch.log10(norms / norms[-1])
        for i in range(4):
            assert logged[f"Flow/log10_rel/layers.{i}"][step] == pytest.approx(rel[i].item(), abs=1e-5)
        assert logged["Flow/log10_first_over_last"][step] == pytest.approx(rel[0].item(), abs=1e-5)
        x = torch.arange(4, dtype=torch.float64)
        y = torch.log(norms)
        slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        assert logged["Flow/gain"][step] == pytest.approx(torch.exp(-slope).item(), rel=1e-5)


def test_flow_images_are_written_from_the_logged_norms(run_tiny, monkeypatch):
    seen = {}
    real_heatmap = flow_images.heatmap
    monkeypatch.setattr(flow_images, "heatmap", lambda grid, steps, q: seen.update(grid=grid, steps=steps) or real_heatmap(grid, steps, q))
    _, run_dir = run_tiny(OVERRIDES)
    acc = accumulator(run_dir)
    assert {HEATMAP_TAG, PROFILE_TAG} <= set(acc.Tags()["images"])
    logged = read_scalars(run_dir)
    steps = sorted(logged["act_grad_norm/layers.0"])
    assert seen["steps"] == steps
    assert np.allclose(seen["grid"], [[logged[f"act_grad_norm/layers.{i}"][s] for s in steps] for i in range(4)])
    image = acc.Images(HEATMAP_TAG)[-1]
    assert image.step == steps[-1] and image.width > 100 and image.height > 100
    assert acc.Images(PROFILE_TAG)[-1].encoded_image_string[:4] == b"\x89PNG"


def test_a_one_layer_model_gets_no_depth_images(run_tiny):
    """Found by a new user: a one-layer RNN's heatmap was a blank white bar ("level") over a gradient that vanished
    through time to 2e-21; its flow is the bptt profile's."""
    _, run_dir = run_tiny(["model=rnn", "model.depth=1", "train.steps=3", "log.every=1"])
    assert not {HEATMAP_TAG, PROFILE_TAG} & set(accumulator(run_dir).Tags()["images"])


def test_heatmap_colours_are_log10_relative_to_the_last_layer_on_one_scale():
    import torch

    grid = [[1e-9, 2e-3, float("nan")], [1e-4, 4e-3, 0.0], [1e-1, 2e-3, 5.0]]  # (layers, steps)
    expected = torch.log10(torch.tensor(grid, dtype=torch.float64) / torch.tensor(grid[-1], dtype=torch.float64))
    got = flow_images.relative_log10(grid)
    assert np.allclose(got[:, :2], expected[:, :2].numpy()) and np.isnan(got[0, 2]) and np.isnan(got[1, 2])
    image = flow_images.heatmap(grid, [0, 10, 20], "act_grad_norm").axes[0].images[0]
    assert image.get_clim() == (-flow_images.LIMIT, flow_images.LIMIT)  # the same scale in every run of a sweep


@pytest.mark.slow
def test_sweep_hparams_are_the_factors_it_varies(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "gradexp", "run", "-m", "activation=sigmoid,relu", "model.depth=3", "model.width=8",
           "train.steps=4", "log.every=2", f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for job in sorted(tmp_path.glob("*_activation=*")):
        content = plugin_content(accumulator(str(job)), "hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
        # model.depth=3 is constant; the thread count is recorded in every run (issue 10: it changes results)
        assert set(start.hparams) == {"model", "activation", "verdict", "status", "perf.torch_threads"}


def test_profile_ticks_read_as_plain_text_powers_of_ten():
    """The profile's log axis is labelled 10⁻³ in plain text (matplotlib's math typesetting cost a third of the
    figure), decades only, from the smallest float's range to an explosion's."""
    assert [flow_images.decade(v) for v in (1e-3, 1.0, 1e28, 1e-45, 10.0)] == ["10⁻³", "10⁰", "10²⁸", "10⁻⁴⁵", "10¹"]
    assert [flow_images.decade(v) for v in (2e-3, 0.0, -1.0, float("nan"), float("inf"))] == [""] * 5
    fig = flow_images.profile([1e-30, 1e-12, 3.0], "act_grad_norm", 9)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert labels and all(label.startswith("10") and "$" not in label for label in labels)
    assert not [t.get_text() for t in fig.axes[0].yaxis.get_minorticklabels() if t.get_text()]
    flow_images.plt.close(fig)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # matplotlib's own margins near 1.8e308
def test_profile_draws_norms_at_the_ends_of_float64():
    """A float64 model's norms may reach float64's largest value or its subnormals: the y limits stay finite and
    positive (10 ** 308.4 was inf, which matplotlib refused, and the run's end-of-run images with it)."""
    from torch.utils.tensorboard._utils import figure_to_image

    for norms in ([1e307, 1.7e308], [1e-320, 1.7e308], [5e-324, 1e-300]):
        fig = flow_images.profile(norms, "grad_norm", 1)
        low, high = fig.axes[0].get_ylim()
        assert 0 < low < high < float("inf")
        assert figure_to_image(fig).shape[0] == 3  # drawn (and closed)
