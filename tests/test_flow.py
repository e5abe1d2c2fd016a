import math

import pytest

from gradexp.analysis.flow import first_last_ratio, per_layer_gain


def test_geometric_decay_gives_its_factor():
    norms = [0.5 ** (9 - i) for i in range(10)]  # each layer back halves the gradient
    assert per_layer_gain(norms) == pytest.approx(0.5)
    assert first_last_ratio(norms) == pytest.approx(0.5 ** 9)


def test_growth_is_above_one_and_noise_is_averaged():
    norms = [2.0 ** (5 - i) * (1.1 if i % 2 else 0.9) for i in range(6)]
    assert per_layer_gain(norms) == pytest.approx(2.0, rel=0.1)


def test_degenerate_inputs_give_none():
    assert per_layer_gain([1.0]) is None
    assert per_layer_gain([0.0, math.nan, 1.0]) is None
    assert first_last_ratio([1.0, 0.0]) is None
    assert first_last_ratio([math.inf, 1.0]) is None


def test_gain_spread_matches_numpy_float64():
    import numpy as np

    from gradexp.analysis.flow import gain_spread

    norms = [1e-30, 3e-30, 2e-29, 5e-29, 1e-28, 9e-28]  # tiny: the spread is computed on logs, no underflow
    logs = np.log(np.array(norms[:-1], dtype=np.float64) / np.array(norms[1:], dtype=np.float64))
    half = 2 * logs.std(ddof=1) / np.sqrt(len(logs))
    spread = gain_spread(norms)
    assert spread["per_layer"] == pytest.approx([np.exp(logs.min()), np.exp(logs.max())], rel=1e-12)
    assert spread["interval95"] == pytest.approx([np.exp(logs.mean() - half), np.exp(logs.mean() + half)], rel=1e-12)
    assert spread["layers"] == 6 and gain_spread([1.0, 0.5]) is None


def reference_layer_quantities(values, layer_names):
    """layer_quantities restated plainly: per layer, the hypot of its parameters' grad norms and the copied tags."""
    from gradexp.analysis.flow import ACT_STATS, ATTENTION_STATS

    out = {}
    for name in layer_names:
        parts = [v for tag, v in values.items() if tag.startswith(f"grad_norm/{name}.")]
        if parts:
            out[f"grad_norm/{name}"] = math.hypot(*parts)
        for quantity in ("act_grad_norm", *ACT_STATS, *ATTENTION_STATS):
            if f"{quantity}/{name}" in values:
                out[f"{quantity}/{name}"] = values[f"{quantity}/{name}"]
    return out


def test_layer_quantities_of_steps_with_the_same_and_other_tags():
    """Worked out once per tuple of tags: later steps with those tags get their own numbers; a layer with one parameter,
    nested watched layers (a parameter counts for both) and a layer with nothing logged."""
    from gradexp.analysis.flow import layer_quantities

    layers = ["blocks.0", "blocks.0.attn", "head", "empty"]
    tags = ["grad_norm/blocks.0.attn.w", "grad_norm/blocks.0.attn.b", "grad_norm/blocks.0.mlp.w", "grad_norm/head.w",
            "grad_norm/total", "act_grad_norm/head", "act_std/blocks.0", "attn_entropy/blocks.0.attn", "loss/train"]
    for step in range(3):
        values = {tag: (i + 1) * 10.0 ** (-150 * step) for i, tag in enumerate(tags)}  # tiny: no underflow
        if step == 2:
            values["act_mean/head"] = math.nan  # another tuple of tags
        got = layer_quantities(values, layers)
        assert got == pytest.approx(reference_layer_quantities(values, layers), rel=1e-15, nan_ok=True)
        assert got["grad_norm/head"] == values["grad_norm/head.w"] and got["grad_norm/blocks.0"] > 0
