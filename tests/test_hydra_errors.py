"""Hydra's multi-line composition errors become one line that keeps the key, the value and the options."""
from __future__ import annotations

import pytest

from gradexp.cli.errors import BAD_INPUT, one_line
from tests.conftest import compose_config


@pytest.mark.parametrize("override,expected", [
    ("model.depth=abc", "Error merging override model.depth=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    ("model=resnet50", "In 'config': Could not find 'model/resnet50' "
                       "(Available options in 'model': cnn | custom | gru | lstm | mlp | resnet | rnn | transformer)"),
    ("model.dpth=3", "Could not override 'model.dpth': Key 'dpth' not in 'ModelConf'"),
    ("model.depth=[", "cannot parse the overrides: no viable alternative at input '['"),
])
def test_composition_errors_become_one_line(override, expected):
    with pytest.raises(BAD_INPUT) as err:
        compose_config([override])
    assert one_line(err.value) == expected
