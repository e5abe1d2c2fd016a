"""Data that cannot fit memory is refused from the config, before any of it is generated or decoded: one line naming
the key that makes it large, with the estimate; nothing left behind. The estimate is checked against the tensors the
builders keep, and an attention model's (T, T) weights are blamed on data.seq_len, not on model.width."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch

from gradexp.config.schema import ConfigError
from gradexp.training import factory as build
from gradexp.training import limits
from gradexp.training.run import run_experiment
from tests.conftest import compose_config
from tests.test_data_user import CORPUS, make_folder

CPU = torch.device("cpu")


def kept(task) -> int:
    """Bytes of the distinct storages a task holds (text's windows are views of one id tensor)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in (task.x_train, task.y_train, task.x_val, task.y_val)}
    return sum(storages.values())


def free(monkeypatch, host: int, device: int = 0) -> None:
    monkeypatch.setattr(limits, "available_bytes", lambda dev: host if dev.type == "cpu" else device)


# sizes no machine has (10^13 blobs: 720 TB): without the refusal the first tensor would fail to allocate, not OOM
@pytest.mark.parametrize("overrides,key", [
    (["data=blobs", "data.n_train=10000000000000"], "data.n_train"),
    (["data=blobs", "data.n_val=10000000000000"], "data.n_val"),
    (["model=rnn", "data.seq_len=1000000000000"], "data.seq_len"),
    (["model=transformer", "data=copy", "data.seq_len=10000000000"], "data.seq_len"),
])
def test_data_too_large_for_memory_is_refused_before_it_is_built(tmp_path, quiet_console, overrides, key):
    cfg = compose_config(overrides)
    run_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, run_dir=run_dir, overrides=overrides, console=quiet_console)
    message = str(err.value)
    assert err.value.key == key and "\n" not in message and "allowed: data that fits cpu memory" in message
    assert "GB while it is built" in message and "GB is free" in message
    assert not os.path.exists(run_dir)


@pytest.mark.parametrize("overrides", [
    ["data=blobs", "data.n_train=300", "data.n_val=50"], ["data=adding", "data.seq_len=7", "data.n_train=20"],
    ["data=copy", "data.seq_len=9", "data.n_val=30"], ["data=recall", "data.seq_len=20", "data.n_train=40"],
])
def test_estimate_is_what_the_generated_data_keeps(overrides):
    cfg = compose_config(overrides)
    task = build.task(cfg, CPU)
    assert sum(limits.data_bytes(cfg)) == kept(task)


def test_estimate_of_the_users_files_covers_what_is_kept(tmp_path):
    make_folder(tmp_path / "imgs")
    cfg = compose_config(["model=cnn", "data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=6"])
    assert sum(limits.data_bytes(cfg)) == kept(build.task(cfg, CPU))  # 8 images of (3, 6, 6), one label each
    (tmp_path / "c.txt").write_text(CORPUS)
    cfg = compose_config(["model=rnn", "data=text", f"data.path={tmp_path / 'c.txt'}", "data.seq_len=10"])
    assert sum(limits.data_bytes(cfg)) >= kept(build.task(cfg, CPU))


def test_data_refusal_gives_the_estimate_and_the_limit(monkeypatch):
    cfg = compose_config(["data=blobs", "data.n_train=100000"])
    held = sum(limits.data_bytes(cfg))
    assert held == 101000 * 72  # (16,) float32 features and an int64 label per example
    need = limits.BUILD_PEAK * held
    free(monkeypatch, need - 1)
    with pytest.raises(ConfigError, match=f"data.n_train: 100000 .*needs about {need / 1e9:.3g} GB while it is "
                                          f"built \\({held / 1e9:.3g} GB kept\\); {(need - 1) / 1e9:.3g} GB is free"):
        limits.check_data(cfg, CPU)
    free(monkeypatch, need)
    limits.check_data(cfg, CPU)  # exactly enough: accepted


def test_the_key_named_is_the_one_that_makes_the_data_large(tmp_path, monkeypatch):
    free(monkeypatch, 1000)
    make_folder(tmp_path / "imgs")
    (tmp_path / "c.txt").write_text(CORPUS)
    for overrides, key in [
        (["data=blobs"], "data.n_train"),  # nothing above its default: the count of examples
        (["data=adding", "data.n_train=9000", "data.seq_len=500"], "data.seq_len"),  # 10x the length, 1.1x the count
        (["data=adding", "data.n_val=100000", "data.seq_len=60"], "data.n_val"),
        (["data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=64"], "data.image_size"),
        (["data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=8"], "data.root"),
        (["data=text", f"data.path={tmp_path / 'c.txt'}", "data.seq_len=100"], "data.path"),
    ]:
        with pytest.raises(ConfigError) as err:
            limits.check_data(compose_config(overrides), CPU)
        assert err.value.key == key, overrides


def test_on_a_gpu_the_splits_that_move_there_are_counted(monkeypatch):
    """Checked without a GPU: only the free sizes are the device's. The DataLoader keeps train on the host."""
    cfg = compose_config(["data=blobs", "data.n_train=100000", "data.n_val=1000"])
    train, val = limits.data_bytes(cfg)
    free(monkeypatch, host=10**12, device=train + val - 1)
    with pytest.raises(ConfigError, match="data that fits cuda memory: data=blobs needs about .* there"):
        limits.check_data(cfg, torch.device("cuda"))
    free(monkeypatch, host=10**12, device=val)
    limits.check_data(compose_config(["data=blobs", "data.n_train=100000", "data.n_val=1000", "data.workers=1"]),
                      torch.device("cuda"))


def test_attention_too_large_is_blamed_on_the_sequence_length(tmp_path, quiet_console, monkeypatch):
    """Small data (32 examples of T = 2010), but (B, heads, T, T) attention weights of 4 GB in every block."""
    overrides = ["model=transformer", "data=copy", "data.seq_len=2000", "data.n_train=16", "data.n_val=16"]
    cfg = compose_config(overrides)
    free(monkeypatch, 10**9)
    run_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="a model that fits cpu memory") as err:
        run_experiment(cfg, run_dir=run_dir, overrides=overrides, console=quiet_console)
    assert (err.value.key, err.value.value) == ("data.seq_len", 2000)
    assert not os.path.exists(run_dir)


@pytest.mark.parametrize("overrides,key", [
    (["model=rnn", "data.seq_len=5000", "data.n_train=16", "data.n_val=16"], "data.seq_len"),  # a batch's T steps
    (["model=mlp", "train.batch_size=100000", "data=blobs", "data.n_train=100000"], "train.batch_size"),
    (["model.width=100000"], "model.width"),  # the weights: width squared
])
def test_a_model_refusal_names_the_key_that_makes_it_large(monkeypatch, overrides, key):
    cfg = compose_config(overrides)
    task = build.task(cfg, CPU)
    free(monkeypatch, 1000)
    with pytest.raises(ConfigError) as err:
        limits.check_memory(cfg, task, CPU)
    assert err.value.key == key


def test_the_default_run_and_every_preset_are_far_from_the_data_limit():
    presets = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(os.path.dirname(__file__), "..",
                                                                              "configs", "experiment", "*.yaml")))
    assert presets
    for overrides in [[], *[[f"experiment={name}"] for name in presets]]:
        cfg = compose_config(overrides, tiny=False)
        assert limits.BUILD_PEAK * sum(limits.data_bytes(cfg)) < 100e6, overrides


@pytest.mark.slow
def test_the_command_line_refuses_in_one_line_with_exit_2_and_no_run_folder(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gradexp", "run", "data=blobs", "data.n_train=10000000000000"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("gradexp: invalid value for data.n_train: 10000000000000 (allowed: data that fits")
    assert not os.path.exists(tmp_path / "outputs")


@pytest.mark.parametrize("overrides, key", [
    (["model=lstm", "model.depth=5"], "model.depth"),  # 5x lstm's own depth 1; its width is the default 64
    (["model=cnn", "model.width=60", "train.batch_size=128"], "model.width"),  # 3.75x cnn's own width 16
])
def test_the_key_named_is_the_one_raised_over_the_familys_own_default(overrides, key, monkeypatch):
    from gradexp.training import factory as build

    cfg = compose_config([*overrides, "device=cpu"])
    task = build.task(cfg, torch.device("cpu"))
    monkeypatch.setattr(limits, "available_bytes", lambda dev: 1)
    with pytest.raises(ConfigError) as err:
        limits.check_memory(cfg, task, torch.device("cpu"))
    assert err.value.key == key


def test_the_validation_pass_of_a_transformer_is_counted(monkeypatch):
    """Evaluation runs the whole validation split at once: (n_val, heads, T, T) attention scores a block. It was
    counted as nothing, so a run the machine could not hold was let through and killed by the kernel mid-run."""
    small = compose_config(["model=transformer", "data=recall", "data.seq_len=64", "data.n_val=100"])
    large = compose_config(["model=transformer", "data=recall", "data.seq_len=64", "data.n_val=5000"])
    sizes = [limits._passes(cfg, build.task(cfg, CPU)) for cfg in (small, large)]
    (_, val_small), (train, val_large) = sizes
    t, heads = 2 * 64 + 1, 4
    assert val_large > train and val_large >= 5000 * heads * t * t  # one block's scores for the whole split
    assert val_large > 40 * val_small
    task = build.task(large, CPU)
    monkeypatch.setattr(limits, "available_bytes", lambda dev: sum(limits.estimate_bytes(large, task).values()) - 1)
    with pytest.raises(ConfigError) as err:
        limits.check_memory(large, task, CPU)
    assert err.value.key in ("data.n_val", "data.seq_len")


def test_a_text_files_vocabulary_counts_through_its_one_hot_inputs(tmp_path, monkeypatch):
    """data=text feeds one-hot (batch, T, vocabulary) floats, and the whole validation split's at evaluation: a file
    of many distinct characters is refused naming data.path, before it trains into an allocator traceback."""
    text = "".join(chr(0x4E00 + i % 3000) for i in range(30000))  # 3,000 distinct characters
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    cfg = compose_config(["model=lstm", "data=text", f"data.path={tmp_path / 'wide.txt'}"])
    task = build.task(cfg, CPU)
    _, val = limits._passes(cfg, task)
    assert val >= 3 * len(task.x_val) * task.x_val.shape[1] * 3000
    monkeypatch.setattr(limits, "available_bytes", lambda dev: sum(limits.estimate_bytes(cfg, task).values()) - 1)
    with pytest.raises(ConfigError) as err:
        limits.check_memory(cfg, task, CPU)
    assert err.value.key == "data.path"
