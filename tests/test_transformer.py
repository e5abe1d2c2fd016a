"""model=transformer (issue 13): blocks against a float64 oracle, the fused and written-out attention agree, the init
group reaches the projections, attn_entropy against a plain float64 softmax entropy from q and k, the sequence tasks
it takes, data=recall's correctness, schedule.warmup_steps against a hand computation, and the refusals."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from gradexp.config.schema import ConfigError, validate
from gradexp.data.recall import RECALL_VALUES, keys_for
from gradexp.data.tasks import make_task
from gradexp.models.transformer import Transformer
from gradexp.probes.attn_entropy import AttnEntropy
from gradexp.probes.base import ProbeContext
from gradexp.training import factory as build
from tests.conftest import compose_config
from tests.test_oracle import read_scalars

T, FEAT, WIDTH, HEADS = 7, 5, 12, 3


def tiny(norm_position="pre", causal=False, norm="layernorm", depth=2) -> Transformer:
    torch.manual_seed(0)
    return Transformer((T, FEAT), 4, depth, WIDTH, False, "gelu", norm, readout_steps=2, heads=HEADS,
                       norm_position=norm_position, ffn_mult=2, causal=causal).double()


def oracle_attention(attn, x: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, softmax weights (B, nh, T, T)) of one attention module in plain float64 torch."""
    b, t, d = x.shape
    hs = d // attn.heads
    x = x.double()

    def heads(lin):  # (B, T, D) -> (B, nh, T, hs)
        return F.linear(x, lin.weight.double(), lin.bias.double()).view(b, t, attn.heads, hs).transpose(1, 2)

    scores = heads(attn.q) @ heads(attn.k).transpose(-2, -1) / math.sqrt(hs)
    if causal:
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    p = scores.softmax(-1)
    y = (p @ heads(attn.v)).transpose(1, 2).reshape(b, t, d)
    return F.linear(y, attn.out.weight.double(), attn.out.bias.double()), p


def oracle_block(block, x: torch.Tensor, pre: bool, causal: bool) -> torch.Tensor:
    ln = lambda m, v: F.layer_norm(v, (WIDTH,), m.weight, m.bias, m.eps)  # noqa: E731
    ffn = lambda v: F.linear(F.gelu(F.linear(v, block.ffn.up.weight, block.ffn.up.bias)),  # noqa: E731
                             block.ffn.down.weight, block.ffn.down.bias)
    if pre:
        x = x + oracle_attention(block.attn, ln(block.norm1, x), causal)[0]
        return x + ffn(ln(block.norm2, x))
    x = ln(block.norm1, x + oracle_attention(block.attn, x, causal)[0])
    return ln(block.norm2, x + ffn(x))


@pytest.mark.parametrize("norm_position", ["pre", "post"])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_a_float64_oracle(norm_position, causal):
    model = tiny(norm_position, causal)
    x = torch.randn(3, T, FEAT, dtype=torch.float64)
    h = F.linear(x, model.embed.weight, model.embed.bias) + model.positions
    for block in model.layers:
        h = oracle_block(block, h, norm_position == "pre", causal)
    if norm_position == "pre":  # GPT-2's final norm
        h = F.layer_norm(h, (WIDTH,), model.head[0].weight, model.head[0].bias)
    else:
        assert isinstance(model.head[0], torch.nn.Identity)
    expected = F.linear(h[:, -2:], model.head[1].weight, model.head[1].bias)
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_fused_and_written_out_attention_agree(causal):
    model = tiny(causal=causal)
    x = torch.randn(3, T, FEAT, dtype=torch.float64)
    fused = model(x)
    seen = []
    for block in model.layers:
        block.attention().on_attention = lambda s, p: seen.append(p)
    torch.testing.assert_close(model(x), fused, rtol=1e-10, atol=1e-12)
    assert len(seen) == 2 and seen[0].shape == (3, HEADS, T, T)
    if causal:  # no weight on a later position
        assert (seen[0].triu(1) == 0).all()


def test_causal_output_at_t_ignores_later_inputs():
    model = tiny(causal=True)
    model.readout_steps = T
    x = torch.randn(2, T, FEAT, dtype=torch.float64)
    changed = x.clone()
    changed[:, 4:] += 1.0
    torch.testing.assert_close(model(x)[:, :4], model(changed)[:, :4])


def test_init_reaches_the_attention_projections():
    from gradexp.models import init_weights

    model = Transformer((T, FEAT), 4, 2, 64, False, "relu", "layernorm", readout_steps=1)
    init_weights(model, "xavier_normal", gain=1.0, std=0.02, activation="relu")
    for name in ("q", "k", "v", "out"):
        lin = getattr(model.layers[1].attn, name)
        assert (lin.bias == 0).all(), name
        assert lin.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.1), name  # xavier: 2/(fan_in+fan_out)


SMALL = ["data.n_train=64", "data.n_val=16"]
SEQUENCE_TASKS = [["data=copy", *SMALL], ["data=seq_digits", "data.n_train=64"], ["data=adding", *SMALL],
                  ["data=recall", *SMALL]]


def train_plain(overrides: list[str]) -> str:
    """The run factory's objects trained by the loop, without sinks: the status."""
    from gradexp.training.loop import train

    cfg = compose_config(overrides)
    validate(cfg)
    return train(build.run(cfg), build.settings(cfg)).status


@pytest.mark.parametrize("data", SEQUENCE_TASKS, ids=lambda d: d[0])
def test_it_trains_on_every_sequence_task(data):
    assert train_plain(["model=transformer", *data]) == "completed"


def test_text_needs_causal_and_trains(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    text = ["model=transformer", "data=text", f"data.path={corpus}", "data.seq_len=16"]
    with pytest.raises(ConfigError, match="model.causal"):
        validate(compose_config(text))
    assert train_plain([*text, "model.causal=true"]) == "completed"


def entropy_oracle(model, x: torch.Tensor, causal: bool) -> list[float]:
    """Each block's mean entropy over batch, heads and queries, from q and k in float64."""
    inputs = []
    handles = [b.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach())) for b in model.layers]
    model(x)
    for h in handles:
        h.remove()
    out = []
    for block, a in zip(model.layers, inputs):
        p = oracle_attention(block.attn, a, causal)[1]
        terms = torch.where(p > 0, -p * p.log(), torch.zeros_like(p))  # a masked key (p = 0) adds nothing
        out.append(terms.sum(-1).mean().item())
    return out


@pytest.mark.parametrize("causal", ["false", "true"])
def test_attn_entropy_matches_float64_softmax_entropy(run_tiny, causal):
    overrides = ["model=transformer", f"model.causal={causal}", "model.width=16", *SMALL, "log.every=2"]
    _, run_dir = run_tiny(overrides)
    cfg = compose_config(overrides)
    dev = build.device(cfg)
    task = build.task(cfg, dev)
    model = build.model(cfg, task, dev)
    x, _ = build.batches(cfg, task).next()
    expected = entropy_oracle(model, task.inputs(x), causal == "true")
    logged = read_scalars(run_dir)
    with open(os.path.join(run_dir, "summary.json")) as f:
        layers = json.load(f)["layers"]
    for i, value in enumerate(expected):
        assert logged[f"attn_entropy/layers.{i}"][0] == pytest.approx(value, rel=1e-5)  # float32 event file
        assert layers[i]["attn_entropy"]["first"] == pytest.approx(value, rel=1e-5)
        assert 0 < value <= math.log(task.input_shape[0]) + 1e-9  # at most uniform attention
    assert set(logged["attn_entropy/layers.0"]) == {0, 2, 3}  # logging steps only: 0, every 2nd, the last


def test_attn_entropy_is_off_for_models_without_attention():
    assert AttnEntropy.from_context(ProbeContext(layers=[("layers.0", torch.nn.Linear(2, 2))])) is None
    for family in ("model=lstm", "model=transformer"):  # on by default (log.probes.attn_entropy), built where it applies
        run = build.run(compose_config([family, "data=recall", *SMALL]))
        built = [type(p) for p, _ in run.instruments.schedule]
        assert (AttnEntropy in built) == (family == "model=transformer")


def test_attention_runs_fused_outside_logging_steps():
    model = tiny()
    probe = AttnEntropy(model.watched_layers())
    with probe.watch(model):
        assert all(b.attention().on_attention is not None for b in model.layers)
    assert all(b.attention().on_attention is None for b in model.layers)


def test_recall_examples_are_correct_and_seeded():
    task = make_task("recall", seed=3, n_train=200, n_val=50, seq_len=6)
    k = keys_for(6)
    assert task.input_shape == (13, k + RECALL_VALUES) and task.vocab_size == k + RECALL_VALUES
    for x, y in ((task.x_train, task.y_train), (task.x_val, task.y_val)):
        keys, values, query = x[:, 0:-1:2], x[:, 1:-1:2], x[:, -1]
        assert ((keys >= 0) & (keys < k)).all() and ((values >= k) & (values < k + RECALL_VALUES)).all()
        assert all(len(set(row.tolist())) == 6 for row in keys)  # distinct keys within an example
        for row in range(len(x)):
            (at,) = (keys[row] == query[row]).nonzero()[0]
            assert values[row, at] - k == y[row]
    again = make_task("recall", seed=3, n_train=200, n_val=50, seq_len=6)
    assert torch.equal(again.x_train, task.x_train) and torch.equal(again.y_val, task.y_val)
    assert not torch.equal(make_task("recall", seed=4, n_train=200, n_val=50, seq_len=6).x_train, task.x_train)


@pytest.mark.parametrize("schedule", ["none", "step", "cosine"])
def test_warmup_learning_rates_match_a_hand_computation(schedule):
    steps, warm, lr = 12, 4, 0.01
    cfg = compose_config([f"schedule={schedule}", f"schedule.warmup_steps={warm}", "schedule.step_size=3",
                          "schedule.gamma=0.5", f"train.steps={steps}", f"optimizer.lr={lr}"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build.scheduler(cfg, opt)
    base = {"none": lambda s: 1.0, "step": lambda s: 0.5 ** (s // 3),
            "cosine": lambda s: (1 + math.cos(math.pi * s / steps)) / 2}[schedule]
    for s in range(steps):  # update s runs at lr * min(1, (s+1)/W) * schedule(s)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr * min(1.0, (s + 1) / warm) * base(s), rel=1e-12), s
        opt.step()
        sched.step()


def test_warmup_of_one_step_or_none_changes_nothing():
    for warm in (0, 1):
        cfg = compose_config([f"schedule.warmup_steps={warm}"])
        assert build.scheduler(cfg, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)) is None


REFUSED = [
    (["model=transformer", "model.heads=3", "model.width=8"], "model.heads", "1 | 2 | 4 | 8"),
    (["model=transformer", "model.norm_position=middle"], "model.norm_position", "pre | post"),
    (["model=transformer", "model.ffn_mult=0"], "model.ffn_mult", ">= 1"),
    (["model=transformer", "model.causal=true", "norm=batchnorm"], "norm", "layernorm | none"),
    (["model=transformer", "model.residual=true"], "model.residual", "false for model=transformer"),
    (["model=transformer", "data=digits"], "data", "a task model=transformer can take"),
    (["model=mlp", "model.heads=4"], "model.heads", "null for model=mlp"),
    (["model=lstm", "model.norm_position=pre"], "model.norm_position", "null for model=lstm"),
    (["schedule.warmup_steps=-2"], "schedule.warmup_steps", ">= 0"),
]


@pytest.mark.parametrize("overrides,key,allowed", REFUSED, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_transformer_input_is_refused_in_one_line(overrides, key, allowed):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(overrides))
    assert err.value.key == key and allowed in str(err.value) and "\n" not in str(err.value)


def test_the_constructor_refuses_the_same_from_python():
    with pytest.raises(ValueError, match="heads 5 does not divide width 12"):
        Transformer((T, FEAT), 4, 1, 12, False, "relu", "none", readout_steps=1, heads=5)
    with pytest.raises(ValueError, match="norm_position"):
        Transformer((T, FEAT), 4, 1, 12, False, "relu", "none", readout_steps=1, norm_position="sandwich")


def test_the_verdict_says_there_is_no_theory_for_a_transformer(run_tiny):
    outcome, run_dir = run_tiny(["model=transformer", *SMALL])
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["theory"] is None  # no number for a model the theory does not cover
    assert outcome.verdict["theory"].startswith("mean-field theory does not apply: model=transformer (no theory")
    assert summary["verdict"]["theory"] == outcome.verdict["theory"]
    assert not any(k.startswith("model.residual") for s in outcome.verdict["suggestions"] for k in s.split())


def test_memory_estimate_counts_parameters_exactly_and_the_attention_weights():
    from gradexp.training import limits

    cfg = compose_config(["model=transformer", "data=copy", *SMALL, "model.width=16", "model.heads=2"])
    task = build.task(cfg, torch.device("cpu"))
    built = build.model(cfg, task, torch.device("cpu"))
    assert limits.parameter_count(cfg, task) == sum(p.numel() for p in built.parameters())
    t = task.input_shape[0]
    attention = 2 * cfg.train.batch_size * 2 * t * t * cfg.model.depth  # scores and softmax, (B, heads, T, T) a block
    assert limits.activation_count(cfg, task) >= attention
