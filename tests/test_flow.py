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
