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

from gradexp.sinks import figures
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
    assert start.hparams["activation.name"].string_value == "sigmoid"
    assert start.hparams["init.scheme"].string_value == "xavier_normal"
    assert start.hparams["model.depth"].number_value == 4
    assert start.hparams["verdict"].string_value == outcome.verdict["label"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/loss_train", "hparams/gain", "hparams/first_last_ratio", "hparams/verdict"} <= metric_tags


def test_hparams_metrics_match_the_logged_scalars(tiny_run):
    outcome, run_dir, _ = tiny_run
    logged = read_scalars(run_dir)
    gains = []
    for step in (min(logged["act_grad_norm/layers.0"]), max(logged["act_grad_norm/layers.0"])):
        norms = [logged[f"act_grad_norm/layers.{i}"][step] for i in range(4)]
        gains.append(float(np.exp(-np.polyfit(np.arange(4), np.log(norms), 1)[0])))  # independent of gradexp.flow
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    judged = gains[0] if summary["verdict"]["decided_by"] == "at_init" else gains[1]  # the moment that decided
    assert logged["hparams/gain"][outcome.steps] == pytest.approx(judged, rel=1e-5)
    assert logged["hparams/loss_train"][outcome.steps] == pytest.approx(logged["loss/train"][max(logged["loss/train"])])
    assert summary["verdict"]["gain"] == pytest.approx(judged, rel=1e-5)
    assert logged["hparams/verdict"][outcome.steps] == {"vanishing": -1, "healthy": 0, "exploding": 1}[summary["verdict"]["label"]]


def test_custom_scalars_layout_puts_every_layer_on_one_chart(tiny_run):
    _, run_dir, acc = tiny_run
    assert "custom_scalars__config__" in plugin_content(acc, "custom_scalars")
    raw = acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]  # the layout rides in the tensor
    layout = layout_pb2.Layout.FromString(raw)
    charts = {chart.title: list(chart.multiline.tag) for cat in layout.category for chart in cat.chart}
    tags = read_scalars(run_dir)
    act_chart = next(t for title, t in charts.items() if title.startswith("act_grad_norm"))
    assert sorted(t for t in tags if re.fullmatch(act_chart[0], t)) == [f"act_grad_norm/layers.{i}" for i in range(4)]
    grad_chart = next(t for title, t in charts.items() if title.startswith("grad_norm"))
    matched = [t for t in tags if re.fullmatch(grad_chart[0], t)]
    assert {t.split("/")[1].split(".")[1] for t in matched} == {"0", "1", "2", "3"}
    assert any(title.startswith("act_saturation") for title in charts)


def test_flow_images_are_written_from_the_logged_norms(run_tiny, monkeypatch):
    seen = {}
    real_heatmap = figures.heatmap
    monkeypatch.setattr(figures, "heatmap", lambda grid, steps, q: seen.update(grid=grid, steps=steps) or real_heatmap(grid, steps, q))
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
