"""mnist / fashion_mnist / cifar10 end to end with no outside network: tiny files in the published formats,
served from 127.0.0.1 (download, checksum, lock, progress, parsing) or laid in data.root by hand."""
import io
import os
import threading

import pytest
import torch
from rich.console import Console

from gradexp.data import download as data_download

from gradexp.data import images as data_images
from gradexp.data.tasks import make_task
from gradexp.data.download import DataError, fetch, md5
from tests.conftest import compose_config
from tests.realdata import cifar_arrays, mnist_arrays, serve, write_cifar, write_mnist

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def served_mnist(tmp_path, monkeypatch):
    """(url, requests, arrays): tiny MNIST files on a local server; their md5s are the expected ones."""
    arrays = mnist_arrays()
    write_mnist(str(tmp_path / "srv"), arrays)
    sums = {f: md5(str(tmp_path / "srv" / f)) for f in data_images._MNIST_FILES}
    for name in ("mnist", "fashion_mnist"):
        monkeypatch.setitem(data_images.SOURCES, name, data_images.Source(CLOSED, sums))
    with serve(str(tmp_path / "srv")) as (url, requests):
        yield url, requests, arrays


def standardized(train: torch.Tensor, val: torch.Tensor, dims):
    """float64 oracle: pixels / 255, shifted and scaled by the train split's mean and std."""
    t, v = train.double() / 255, val.double() / 255
    mean = t.mean() if dims is None else t.mean(dims, keepdim=True)
    std = t.std() if dims is None else t.std(dims, keepdim=True)
    return (t - mean) / std, (v - mean) / std


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_download_parse_and_reuse(tmp_path, served_mnist, name):
    url, requests, (xt, yt, xv, yv) = served_mnist
    task = make_task(name, 0, root=str(tmp_path / "cache"), url=url)
    want_t, want_v = standardized(xt.unsqueeze(1), xv.unsqueeze(1), None)
    torch.testing.assert_close(task.x_train.double(), want_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(task.x_val.double(), want_v, rtol=1e-5, atol=1e-5)
    assert torch.equal(task.y_train, yt.long()) and torch.equal(task.y_val, yv.long())
    assert task.input_shape == (1, 28, 28) and sorted(os.listdir(tmp_path / "cache" / name)) == sorted(
        data_images._MNIST_FILES)  # the lock went with the run that created it
    asked = len(requests)
    make_task(name, 0, root=str(tmp_path / "cache"), url=url)  # the second run reads the cache
    assert asked == 4 and len(requests) == 4


def test_cifar_binary_parsed_channel_planes_and_labels(tmp_path, monkeypatch):
    images, labels = cifar_arrays()
    write_cifar(str(tmp_path / "srv"), (images, labels))
    sums = {"cifar-10-binary.tar.gz": md5(str(tmp_path / "srv" / "cifar-10-binary.tar.gz"))}
    monkeypatch.setitem(data_images.SOURCES, "cifar10", data_images.Source(CLOSED, sums))
    with serve(str(tmp_path / "srv")) as (url, requests):
        task = make_task("cifar10", 0, n_val=3, root=str(tmp_path / "cache"), url=url)
    want_t, want_v = standardized(images[:20], images[20:23], (0, 2, 3))
    torch.testing.assert_close(task.x_train.double(), want_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(task.x_val.double(), want_v, rtol=1e-5, atol=1e-5)
    assert torch.equal(task.y_train, labels[:20].long()) and torch.equal(task.y_val, labels[20:23].long())
    assert requests == ["/cifar-10-binary.tar.gz"]


def test_files_laid_in_root_by_hand_need_no_network(tmp_path, monkeypatch):
    arrays = mnist_arrays(n_train=30, n_test=5)
    write_mnist(str(tmp_path / "root" / "mnist"), arrays)
    sums = {f: md5(str(tmp_path / "root" / "mnist" / f)) for f in data_images._MNIST_FILES}
    monkeypatch.setitem(data_images.SOURCES, "mnist", data_images.Source(CLOSED, sums))
    task = make_task("mnist", 3, n_train=10, root=str(tmp_path / "root"))
    keep = torch.randperm(30, generator=torch.Generator().manual_seed(9))[:10]  # data._rng(3, 0): seed 3*3+0
    assert torch.equal(task.y_train, arrays[1][keep].long()) and len(task.x_val) == 5


def test_bad_checksum_of_a_download_is_refused_in_one_line_and_the_download_discarded(tmp_path, served_mnist, monkeypatch):
    url, _, _ = served_mnist
    wrong = data_images.Source(CLOSED, dict.fromkeys(data_images._MNIST_FILES, "0" * 32))
    monkeypatch.setitem(data_images.SOURCES, "mnist", wrong)
    with pytest.raises(DataError) as err:
        make_task("mnist", 0, root=str(tmp_path / "cache"), url=url)
    message = str(err.value)
    assert "\n" not in message and "train-images-idx3-ubyte.gz as downloaded has md5" in message
    assert message.startswith(f"data.url={url}: ") and "discarded" in message
    assert not (tmp_path / "cache").exists()  # neither the download nor its lock, nor the folders made for them


def test_no_network_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DataError) as err:
        make_task("mnist", 0, root=str(tmp_path / "cache"), url=CLOSED, download_timeout=2)
    message = str(err.value)
    files = ", ".join(data_images._MNIST_FILES)
    assert "\n" not in message and f"put {files} (from {data_images.SOURCES['mnist'].url}) into " \
        f"{os.path.join(str(tmp_path / 'cache'), 'mnist')}" in message
    assert not (tmp_path / "cache").exists()  # no partial file, no lock, no folder made for them


def test_fetch_names_the_path_it_could_not_fill(tmp_path):
    with pytest.raises(data_download.Unreachable, match="put the file at .*c/blob.bin"):
        fetch(str(tmp_path / "c"), "blob.bin", CLOSED, "0" * 32, 2)


@pytest.mark.slow
def test_cli_without_network_exits_2_in_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "gradexp", "run", "model=cnn", "data=mnist",
                           f"data.root={tmp_path / 'cache'}", f"data.url={CLOSED}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "put train-images-idx3-ubyte.gz" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "outputs").exists()  # nothing left behind


def test_concurrent_fetches_download_once(tmp_path):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "blob.bin").write_bytes(os.urandom(300_000))
    want = md5(str(tmp_path / "srv" / "blob.bin"))
    with serve(str(tmp_path / "srv")) as (url, requests):
        got = []
        # a generous timeout: this checks that one download serves all four, not how fast a loaded machine answers
        threads = [threading.Thread(target=lambda: got.append(fetch(str(tmp_path / "c"), "blob.bin", url, want, 60)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert requests == ["/blob.bin"] and len(got) == 4 and md5(got[0]) == want
    assert os.listdir(tmp_path / "c") == ["blob.bin"]  # the lock went with whichever job created it last


def test_download_shows_a_progress_bar(tmp_path, monkeypatch):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "blob.bin").write_bytes(b"x" * 200_000)
    screen = io.StringIO()

    class Shown(data_download.Progress):
        def __init__(self, *columns, **kwargs):
            super().__init__(*columns, **kwargs, console=Console(file=screen, force_terminal=True, width=120))

    monkeypatch.setattr(data_download, "Progress", Shown)
    with serve(str(tmp_path / "srv")) as (url, _):
        fetch(str(tmp_path / "c"), "blob.bin", url, md5(str(tmp_path / "srv" / "blob.bin")), 5)
    assert "downloading blob.bin" in screen.getvalue() and "200.0" in screen.getvalue()


def test_default_root_is_a_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data_download.default_root() == os.path.join(str(tmp_path), "gradexp")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_download.default_root() == os.path.join(os.path.expanduser("~"), ".cache", "gradexp")


def test_cnn_trains_on_served_mnist(tmp_path, served_mnist, run_tiny):
    url, _, _ = served_mnist
    outcome, run_dir = run_tiny(["model=cnn", "data=mnist", f"data.root={tmp_path / 'cache'}", f"data.url={url}"])
    assert outcome.status == "completed" and not os.path.exists(os.path.join(run_dir, "mnist"))


@pytest.mark.parametrize("override, key", [("data.path=/x.txt", "data.path"), ("data.image_size=8", "data.image_size")])
def test_keys_a_dataset_does_not_read_are_refused(override, key):
    from gradexp.config.schema import ConfigError, validate

    with pytest.raises(ConfigError, match=f"invalid value for {key}: .* \\(allowed: null for data=mnist"):
        validate(compose_config(["model=cnn", "data=mnist", override]))
