"""The DataLoader pipeline (data.workers, data.augment): the same batches as Batches whatever the number of
workers, augmentation against a plain-torch oracle, and resume continuing the stream exactly."""
import pytest
import torch

from gradexp.data.tasks import Batches
from gradexp.data.loader import CROP_PADDING, Loader, augment_standard
from tests.conftest import compose_config
from tests.test_resume import LONG, StopAfter, resume, scalars, start, summary

CPU = torch.device("cpu")


def data(n: int = 37):
    gen = torch.Generator().manual_seed(5)
    return torch.randn(n, 3, 6, 6, generator=gen), torch.arange(n)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_cuts_the_batches_of_batches(workers):
    x, y = data()
    plain, loader = Batches(x, y, 10, seed=3), Loader(x, y, 10, seed=3, workers=workers, augment="none", device=CPU)
    for _ in range(9):  # 90 rows: crosses two epoch boundaries of 37
        (xa, ya), (xb, yb) = plain.next(), loader.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    loader.close()


def oracle_augment(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Per image, in float64: zero pad by 4, crop at the drawn offset, flip when drawn (same draw order)."""
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = x.shape
    top = torch.randint(0, 9, (b,), generator=gen)
    left = torch.randint(0, 9, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.empty(b, c, h, w, dtype=torch.float64)
    for i in range(b):
        padded = torch.zeros(c, h + 8, w + 8, dtype=torch.float64)
        padded[:, 4:4 + h, 4:4 + w] = x[i].double()
        crop = padded[:, top[i]:top[i] + h, left[i]:left[i] + w]
        out[i] = torch.flip(crop, dims=[2]) if flip[i] else crop
    return out


def test_standard_augmentation_is_pad_crop_flip():
    x, _ = data(16)
    got = augment_standard(x, torch.Generator().manual_seed(11))
    assert CROP_PADDING == 4
    torch.testing.assert_close(got.double(), oracle_augment(x, 11), rtol=0, atol=0)
    assert not torch.equal(got, x)


def test_augmented_stream_is_the_same_with_any_number_of_workers():
    x, y = data()
    a = Loader(x, y, 8, seed=1, workers=0, augment="standard", device=CPU)
    b = Loader(x, y, 8, seed=1, workers=2, augment="standard", device=CPU)
    for _ in range(6):
        (xa, ya), (xb, yb) = a.next(), b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.close()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_continues_after_the_batches_handed_out_not_prefetched(workers):
    x, y = data()
    first = Loader(x, y, 10, seed=2, workers=workers, augment="standard", device=CPU)
    for _ in range(5):
        first.next()
    state = first.state_dict()
    expected = [first.next() for _ in range(6)]
    second = Loader(x, y, 10, seed=2, workers=workers, augment="standard", device=CPU)
    second.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected, (second.next() for _ in range(6))):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.slow
def test_workers_or_augmentation_choose_the_loader():
    from gradexp.training.factory import uses_loader

    assert uses_loader(compose_config(["data.workers=1"])) and uses_loader(compose_config(["data.augment=standard"]))
    assert not uses_loader(compose_config([]))


@pytest.mark.slow
def test_resumed_run_with_workers_equals_uninterrupted(tmp_path, quiet_console):
    """A CNN on the digits through two worker processes with augmentation, stopped at 7 of 13 steps and resumed."""
    overrides = [*LONG, "model=cnn", "data.workers=2", "data.augment=standard"]
    start(str(tmp_path / "ref"), overrides, quiet_console)
    start(str(tmp_path / "run"), overrides, quiet_console, stop=StopAfter(7))
    resume(str(tmp_path / "run"), overrides, quiet_console)
    assert summary(str(tmp_path / "run")) == summary(str(tmp_path / "ref"))
    assert scalars(str(tmp_path / "run")) == scalars(str(tmp_path / "ref"))


def test_close_stops_the_workers_now():
    """A run closes its batch stream at its end: the DataLoader's workers stop then, not whenever the garbage collector
    reaches the iterator (which, in whatever code ran then, waited 5 s a worker in the test suite)."""
    x, y = data()
    loader = Loader(x, y, 10, seed=3, workers=2, augment="none", device=CPU)
    loader.next()
    workers = list(loader._batches._workers)
    assert all(w.is_alive() for w in workers)
    loader.close()
    assert not any(w.is_alive() for w in workers) and loader._batches is None
    loader.close()  # twice: nothing to do
    Loader(x, y, 10, seed=3, workers=2, augment="none", device=CPU).close()  # never started: nothing to do
