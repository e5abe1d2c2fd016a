"""The layer contract: which (name, module) pairs the instruments watch, for gradexp's families, any nn.Module
(discovery) and name patterns; probes see only that list."""
import pytest
import torch
from torch import nn

from gradexp.training import factory as build
from gradexp.probes.base import per_tag
from gradexp.probes.act_grads import ActGrads
from gradexp.probes.layers import (
    ACTIVATION_SITE,
    TIME_STEPS,
    NoLayersFound,
    depths_of,
    discover,
    has_capability,
    watched_layers,
)
from tests.conftest import compose_config


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.tanh(self.linear(x))


class Residual(nn.Module):
    """A model gradexp does not know: an embedding, a stack of blocks, and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.blocks = nn.ModuleList(Block(8) for _ in range(4))
        self.head = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def names(layers):
    return [name for name, _ in layers]


def test_discovery_picks_the_repeated_blocks_of_the_largest_container():
    assert names(discover(Residual())) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]


def test_discovery_of_a_plain_sequential_takes_the_layers_with_parameters():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    assert names(discover(net)) == ["0", "2", "4"]


def test_discovery_falls_back_to_leaf_modules_with_parameters():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 1)

    assert names(discover(Two())) == ["a", "b"]


class TopLevel(nn.Module):
    """Weights held at the top level: nothing to discover; the user watches its activation modules."""

    def __init__(self) -> None:
        super().__init__()
        self.w0, self.w1, self.w2 = (nn.Parameter(torch.randn(4, 4)) for _ in range(3))
        self.acts = nn.ModuleList(nn.Tanh() for _ in range(3))

    def forward(self, x):
        for w, act in zip((self.w0, self.w1, self.w2), self.acts):
            x = act(x @ w)
        return x


@pytest.mark.parametrize("patterns, expected_depths, expected_model_depth", [
    ((), [0, 1, 2, 3], 4),
    (["blocks.1", "blocks.3"], [1, 3], 4),                   # a subset of the default layers keeps its depths
    (["blocks.0.linear", "blocks.2.linear"], [0, 2], 4),     # parts of default layers: the depth of the layer
    (["embed", "blocks.*"], [0, 1, 2, 3, 4], 5),             # the embedding goes before the default layers
    (["embed", "blocks.3", "head.0"], [0, 4, 5], 6),         # ... and the head after them
    (["blocks.0.linear", "blocks.0", "blocks.2"], [0, 0, 2], 4),  # two in one default layer share its depth
    (["blocks.0", "blocks.0.linear"], [0, 1], 2),            # all at one depth: places
])
def test_watched_layers_keep_the_depth_of_the_default_layers_they_are_or_lie_in(patterns, expected_depths,
                                                                                 expected_model_depth):
    """Found by a new user: model.watch=[layers.0,layers.5] was fitted as two adjacent layers; by a review: parts
    of layers too, and a model with nothing to discover failed after training."""
    net = Residual()
    layers = watched_layers(net, patterns)
    assert depths_of(net, layers) == (expected_depths, expected_model_depth)


def test_a_model_with_nothing_to_discover_has_the_depth_it_is_watched_at():
    net = TopLevel()
    with pytest.raises(NoLayersFound):
        watched_layers(net)
    layers = watched_layers(net, ["acts.*"])
    assert depths_of(net, layers) == ([0, 1, 2], 3)


def test_patterns_override_discovery_in_forward_order_and_each_must_match():
    net = Residual()
    assert names(watched_layers(net, ["head.0", "blocks.*.linear"])) == [
        "blocks.0.linear", "blocks.1.linear", "blocks.2.linear", "blocks.3.linear", "head.0"]
    with pytest.raises(NoLayersFound, match="model.watch: 'nope' .allowed: fnmatch patterns"):
        watched_layers(net, ["nope"])


def test_a_model_without_parameters_is_refused_in_one_line():
    with pytest.raises(NoLayersFound) as err:
        watched_layers(nn.ReLU())
    assert "\n" not in str(err.value) and "allowed" in str(err.value)


@pytest.mark.parametrize("family", ["mlp", "cnn", "rnn", "lstm", "gru"])
def test_gradexps_families_declare_their_numbered_blocks_and_capabilities(family):
    data = {"mlp": "digits", "cnn": "digits"}.get(family, "adding")
    cfg = compose_config([f"model={family}", f"data={data}"])
    net = build.model(cfg, build.task(cfg, build.device(cfg)), build.device(cfg))
    layers = build.layers(cfg, net)
    assert names(layers) == [f"layers.{i}" for i in range(cfg.model.depth)]
    assert all(has_capability(layer, ACTIVATION_SITE) for _, layer in layers)
    assert all(has_capability(layer, TIME_STEPS) == (family in ("rnn", "lstm", "gru")) for _, layer in layers)


def test_act_grad_probe_on_a_discovered_model_matches_autograd_in_float64():
    torch.manual_seed(0)
    net = Residual().double()
    layers = discover(net)
    probe = ActGrads(layers)
    x = torch.randn(5, 3, dtype=torch.float64)
    outputs = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n, m in layers]
    with probe.watch(net):
        loss = net(x).square().sum()
        grads = torch.autograd.grad(loss, [outputs[n] for n in names(layers)], retain_graph=True)
        loss.backward()
    for h in handles:
        h.remove()
    values = per_tag(probe.after_backward(net))  # the probe hands its layers' norms over as one vector
    for name, g in zip(names(layers), grads):
        assert values[f"act_grad_norm/{name}"].item() == pytest.approx(torch.linalg.vector_norm(g).item(), rel=1e-12)


def test_model_watch_chooses_the_layers_a_run_logs(run_tiny):
    outcome, run_dir = run_tiny(["model.depth=4", "model.watch=[layers.1,layers.3]"])
    import json
    import os

    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert [layer["name"] for layer in summary["layers"]] == ["layers.1", "layers.3"]


def test_model_watch_matching_nothing_is_a_one_line_refusal(run_tiny):
    from gradexp.config.schema import ConfigError

    with pytest.raises(ConfigError, match="model.watch"):
        run_tiny(["model.watch=[decoder.*]"])


def test_log_probes_sets_each_probes_interval_and_turns_one_off(run_tiny):
    import json
    import os

    from tests.test_oracle import read_scalars

    outcome, run_dir = run_tiny(["train.steps=6", "log.every=1", "log.probes.update_ratio=2", "log.probes.act_stats=0"])
    logged = read_scalars(run_dir)
    assert sorted(logged["update_ratio/layers.0.linear.weight"]) == [0, 2, 4, 5]  # every 2nd step and the last
    assert sorted(logged["grad_norm/layers.0.linear.weight"]) == [0, 1, 2, 3, 4, 5]
    assert not [tag for tag in logged if tag.startswith("act_mean/")]
    assert json.load(open(os.path.join(run_dir, "summary.json")))["status"] == "completed"


@pytest.mark.parametrize("override,key", [("+log.probes.grad_norms=1", "log.probes.grad_norms"),
                                          ("log.probes.update_ratio=3", "log.probes.update_ratio"),
                                          ("log.probes.bptt=-2", "log.probes.bptt")])
def test_bad_log_probes_are_one_line_refusals(override, key):
    from gradexp.config.schema import ConfigError, validate

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config(["log.every=2", override]))


def test_a_pattern_matching_a_block_and_its_parts_watches_the_block():
    """Found by a user: fnmatch's `*` also matches dots, so the README's own `watch=["blocks.*"]` watched blocks.0,
    blocks.0.conv, blocks.1, ... and the depth profile interleaved the blocks with their parts."""
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Sequential(nn.Linear(3, 3), nn.ReLU()) for _ in range(3)])
    assert [name for name, _ in watched_layers(model, ["blocks.*"])] == ["blocks.0", "blocks.1", "blocks.2"]
    assert [name for name, _ in watched_layers(model, ["blocks.*.0"])] == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]
    named = ["blocks.1", "blocks.1.0", "blocks.2.1"]  # each pattern names its own module: all kept (a review)
    assert [name for name, _ in watched_layers(model, named)] == named
