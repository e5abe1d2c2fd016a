"""The user's own data: data=image_folder (a folder of class sub-folders) and data=text (a character corpus),
from tiny files the tests write, against plain-torch float64 oracles; bad input refused in one line."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gradexp.config.schema import ConfigError, validate
from gradexp.data.tasks import make_task
from gradexp.data.download import DataError
from tests.conftest import compose_config

CORPUS = "the quick brown fox jumps over the lazy dog. " * 6  # 270 characters, 28 distinct (letters, space, stop)


def make_folder(root, sizes=((5, 7), (9, 4), (6, 6)), per_class=4):
    """root/class_k/i.png: solid-colour images of varying sizes; class k has a red level of 60k."""
    for k, name in enumerate(("cat", "dog")):
        os.makedirs(root / name)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            Image.new("RGB", (w, h), (60 * k + i, 10 * i, 200 - 30 * k - 5 * i)).save(root / name / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_image_folder_decodes_resizes_and_standardises(tmp_path):
    make_folder(tmp_path)
    task = make_task("image_folder", 0, n_val=2, root=str(tmp_path), image_size=5)
    assert task.input_shape == (3, 5, 5) and task.num_outputs == 2 and len(task.x_train) == 6 and len(task.x_val) == 2
    colours = [[60 * k + i, 10 * i, 200 - 30 * k - 5 * i] for k in range(2) for i in range(4)]
    raw = torch.tensor(colours, dtype=torch.float64) / 255
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))  # data._rng(0, 0)
    train, val = raw[perm[2:]], raw[perm[:2]]  # solid images: every pixel of image j is raw[j]
    mean = train.mean(0)
    std = train.repeat_interleave(25, 0).std(0)  # per channel over examples and the 5x5 pixels
    want = ((val - mean) / std)[:, :, None, None].expand(2, 3, 5, 5)
    torch.testing.assert_close(task.x_val.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(task.y_val, torch.tensor([0] * 4 + [1] * 4)[perm[:2]])


@pytest.mark.parametrize("setup, match", [
    (lambda p: None, "an existing folder"),
    (lambda p: p.mkdir(), "0 class folder"),
    (lambda p: (p.mkdir(), (p / "a").mkdir(), Image.new("RGB", (2, 2)).save(p / "a" / "x.png")), "1 class folder"),
])
def test_image_folder_refusals(tmp_path, setup, match):
    setup(tmp_path / "imgs")
    with pytest.raises(DataError, match=match) as err:
        make_task("image_folder", 0, root=str(tmp_path / "imgs"))
    assert str(err.value).startswith("data.root=") and "\n" not in str(err.value)


def test_text_windows_vocabulary_and_bits_per_character(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS)
    task = make_task("text", 0, seq_len=10, path=str(tmp_path / "c.txt"))
    vocab = sorted(set(CORPUS))
    ids = torch.tensor([vocab.index(c) for c in CORPUS])
    n = (len(CORPUS) - 1) // 10  # 26 windows, the last 2 (a tenth) for val
    assert (len(task.x_train), len(task.x_val)) == (24, 2) and task.input_shape == (10, len(vocab))
    assert torch.equal(task.x_val[1], ids[250:260]) and torch.equal(task.y_val[1], ids[251:261])
    assert task.readout_steps == 10 and task.num_outputs == task.vocab_size == len(vocab) == 28
    assert torch.equal(task.inputs(task.x_val), F.one_hot(task.x_val, 28).float())
    logits = torch.randn(2, 10, 28, generator=torch.Generator().manual_seed(0))
    p = torch.log_softmax(logits.double(), -1).gather(-1, task.y_val.unsqueeze(-1))
    bpc = float(-p.mean() / math.log(2))
    assert task.metrics(logits, task.y_val)["bpc"].item() == pytest.approx(bpc, rel=1e-5)
    assert n == 26


@pytest.mark.parametrize("content, match", [("", "has 0 characters"), ("abc" * 5, "has 15 characters")])
def test_text_too_short_is_refused(tmp_path, content, match):
    (tmp_path / "c.txt").write_text(content)
    with pytest.raises(DataError, match=match) as err:
        make_task("text", 0, seq_len=10, path=str(tmp_path / "c.txt"))
    assert "data.seq_len" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"\x1f\x8b\x08\x00" + bytes(range(256)), ("caf\u00e9 " * 40).encode("latin-1")])
def test_text_that_is_not_utf8_is_refused_not_replaced(tmp_path, content):
    """A gzip'd corpus or a Latin-1 file: refused in one line with the first bad byte, never trained on U+FFFD."""
    (tmp_path / "c.txt").write_bytes(content)
    with pytest.raises(DataError, match=r"data.path=.*allowed: a UTF-8 text file \(byte \d+ is 0x") as err:
        make_task("text", 0, seq_len=10, path=str(tmp_path / "c.txt"))
    assert "\n" not in str(err.value)
    (tmp_path / "ok.txt").write_text("caf\u00e9 na\u00efve \u2014 " * 20, encoding="utf-8")  # UTF-8 beyond ASCII: read
    task = make_task("text", 0, seq_len=10, path=str(tmp_path / "ok.txt"))
    assert task.vocab_size == len(set("caf\u00e9 na\u00efve \u2014 "))


def test_text_missing_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="data.path=.*allowed: an existing text file"):
        make_task("text", 0, seq_len=10, path=str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match=r"^data.path=\(not set\): allowed: a UTF-8 text file of yours, which "
                                        r"data=text trains on \(give data.path=FILE\)$"):  # not "data.path=None"
        make_task("text", 0, seq_len=10, path=None)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
def test_recurrent_models_train_on_text(tmp_path, run_tiny, model):
    (tmp_path / "c.txt").write_text(CORPUS)
    outcome, run_dir = run_tiny([f"model={model}", "data=text", f"data.path={tmp_path / 'c.txt'}", "data.seq_len=8"])
    final = json.load(open(os.path.join(run_dir, "summary.json")))["final"]
    assert outcome.status == "completed"
    assert final["bpc/val"] == pytest.approx(final["loss/val"] / math.log(2), rel=1e-5)  # the same mean, in bits


def test_cnn_and_resnet_train_on_an_image_folder(tmp_path, run_tiny):
    make_folder(tmp_path / "imgs")
    for model in ("cnn", "resnet"):
        outcome, _ = run_tiny([f"model={model}", "data=image_folder", f"data.root={tmp_path / 'imgs'}",
                               "data.image_size=8", "data.n_val=2", "train.batch_size=4"], name=model)
        assert outcome.status == "completed"


def test_a_model_that_cannot_take_the_shape_is_refused():
    with pytest.raises(ConfigError, match="data: 'text' \\(allowed: a task model=cnn can take"):
        validate(compose_config(["model=cnn", "data=text", "data.path=x.txt"]))


@pytest.mark.parametrize("kind", ["junk", "bomb", "fifo"])
def test_an_image_that_cannot_be_decoded_is_refused_in_one_line(tmp_path, kind, monkeypatch):
    """Junk bytes named .jpg, and an image over Pillow's decompression-bomb limit (DecompressionBombError, which is
    no OSError): one line naming data.root and the file. A FIFO named like an image blocked forever, past SIGTERM
    (found by an adversarial test): refused, unopened."""
    make_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "cat" / "bad.png"
    if kind == "junk":
        bad.write_bytes(b"not an image at all")
    elif kind == "fifo":
        os.mkfifo(bad)
    else:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above twice the limit: 20x20 is a 'bomb'
        Image.new("RGB", (20, 20)).save(bad)
    with pytest.raises(DataError, match=r"^data\.root=.*imgs: cannot decode .*bad\.png \(") as err:
        make_task("image_folder", 0, root=str(tmp_path / "imgs"))
    assert "\n" not in str(err.value)


def test_one_train_example_is_shifted_not_turned_into_nan(tmp_path):
    """Found by an adversarial test: with data.n_train=1 the std of one example is NaN (unbiased), every input was
    NaN, and the run was logged as diverged and blamed on the learning rate. One example, or a constant feature, is
    only shifted by the train mean."""
    task = make_task("blobs", 0, n_train=1, n_val=4)
    assert torch.isfinite(task.x_train).all() and torch.isfinite(task.x_val).all()
    assert torch.equal(task.x_train, torch.zeros_like(task.x_train))  # the one example minus itself
    make_folder(tmp_path / "imgs")
    task = make_task("image_folder", 0, n_train=1, n_val=2, root=str(tmp_path / "imgs"), image_size=1)
    assert torch.isfinite(task.x_train).all() and torch.isfinite(task.x_val).all()
