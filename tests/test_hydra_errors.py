"""Hydra's multi-line composition errors become one line that keeps the key, the value and the options."""
from __future__ import annotations

import os

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


@pytest.mark.parametrize("files,override,expected", [
    ({"model/mine.yaml": "_target_: mynets.Net\nhidden: 40\n"}, "model=mine",
     "In 'model/mine': Key 'hidden' not in 'ModelConf' (model.hidden); a key of your own class goes on the command "
     "line: +model.hidden=..."),  # the README's way (found by a new user: no pointer to it)
    ({"experiment/bad.yaml": "# @package _global_\ntrain:\n  steps: abc\n"}, "experiment=bad",
     "In 'experiment/bad': Value 'abc' of type 'str' could not be converted to Integer (train.steps)"),
])
def test_an_error_inside_the_users_config_file_says_what_it_is(tmp_path, files, override, expected):
    """Found by a new user's walkthrough: Hydra's first line ends "ConfigKeyError raised while composing config:",
    and the cause was on the lines cut away."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(BAD_INPUT) as err:
        compose_config([override, f"hydra.searchpath=[file://{tmp_path}]"], tiny=False)
    assert one_line(err.value) == expected


@pytest.mark.parametrize("args,says", [
    (["--foo"], "unrecognized arguments: --foo (gradexp run --help lists the options)"),
    (["--cfg", "jobs", "train.steps=3"], "argument --cfg/-c: invalid choice: 'jobs' (choose from 'job', 'hydra', 'all')"),
    (["train.steps=3", "--config-dir"], "argument --config-dir/-cd: expected one argument"),
    # argparse reads `=--` as an empty list, which Hydra then failed on with a traceback (adversarial test)
    (["--config-dir=--"], "argument --config-dir/-cd: expected one value, not '--'"),
    (["--config-name=--", "train.steps=3"], "argument --config-name/-cn: expected one value, not '--'"),
])
def test_an_option_hydra_refuses_is_one_line(args, says):
    """Found by a new user's walkthrough: Hydra's parser printed its 8-line usage above the error."""
    from gradexp.cli.argv import OptionError, hydra_args

    with pytest.raises(OptionError) as err:
        hydra_args(args)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_options_hydra_takes_pass_the_check():
    from gradexp.cli.argv import hydra_args

    for args in (["--cfg", "job"], ["-m", "train.steps=3"], ["--info"], ["--info", "searchpath"], ["--help"],
                 ["--info", "seed=1"]):  # a bare --info before an override: gradexp moves it last
        hydra_args(args)  # no OptionError


def test_resume_of_a_folder_whose_overrides_file_is_a_fifo_says_so(tmp_path):
    """Found by an adversarial test: it read 'not a gradexp run folder (no .hydra/overrides.yaml there)'."""
    from gradexp.cli.argv import hydra_args
    from gradexp.training.resume import ResumeError

    (tmp_path / ".hydra").mkdir()
    os.mkfifo(tmp_path / ".hydra" / "overrides.yaml")
    with pytest.raises(ResumeError, match="its .hydra/overrides.yaml is not a regular file"):
        hydra_args([f"resume={tmp_path}"])


@pytest.mark.parametrize("name", ["ends in a backslash\\", "two\\\\", "it's", "x\\'y", "a\\b", "a,b=c d"])
def test_resume_names_any_run_folder_to_hydra_as_it_is(tmp_path, name):
    """Found by an adversarial test: a folder whose name ended in a backslash could not be resumed (Hydra's parser
    read the backslash as escaping the closing quote)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gradexp.cli.argv import hydra_args

    folder = tmp_path / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- train.steps=3\n")
    line = hydra_args([f"resume={folder}"])
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(line)}
    assert parsed["hydra.run.dir"] == parsed["resume"] == str(folder)
