"""Tasks and Batches against plain-torch oracles."""
import pytest
import torch
import torch.nn.functional as F

from gradexp.data.tasks import Batches, make_task
from gradexp.config.registry import DATA

TASK_NAMES = [name for name, d in DATA.items() if not d.keys]  # built offline from no file: every one of them here
MIN_SEQ_LEN = {name: d.min_seq_len for name, d in DATA.items() if d.seq_len is not None and name in TASK_NAMES}

SMALL = {"blobs": {}, "digits": {}, "seq_digits": {}, "adding": {"seq_len": 10}, "copy": {"seq_len": 4},
         "recall": {"seq_len": 3}}
# name -> (input_shape, num_outputs, readout_steps, y shape of one example)
EXPECTED = {
    "blobs": ((16,), 4, 0, ()),
    "digits": ((1, 8, 8), 10, 0, ()),
    "seq_digits": ((8, 8), 10, 1, ()),
    "adding": ((10, 2), 1, 1, (1,)),
    "copy": ((4 + 10, 10), 8, 5, (5,)),
    "recall": ((2 * 3 + 1, 16 + 8), 8, 1, ()),  # 3 pairs + the query; 16 keys + 8 values
}


def small(name: str, seed: int = 0):
    return make_task(name, seed, n_train=64, n_val=32, **SMALL[name])


def _tensors(task):
    return task.x_train, task.y_train, task.x_val, task.y_val


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_same_tensors_other_seed_differs(name):
    a, b, c = small(name, 0), small(name, 0), small(name, 1)
    for ta, tb in zip(_tensors(a), _tensors(b)):
        assert torch.equal(ta, tb)
    assert not torch.equal(a.x_train, c.x_train)
    assert not torch.equal(a.x_val, c.x_val)
    assert not torch.equal(a.x_train[:32], a.x_val)  # val is its own draw, not a train prefix


@pytest.mark.parametrize("name", TASK_NAMES)
def test_shapes_dtypes_and_label_ranges(name):
    task = small(name)
    shape, num_outputs, readout, y_shape = EXPECTED[name]
    # token tasks hold ids (N, T); every model reads task.inputs(x), one-hot (N, T, vocab) for them
    assert task.input_shape == shape and tuple(task.inputs(task.x_train).shape) == (64, *shape)
    assert tuple(task.inputs(task.x_val).shape) == (32, *shape)
    assert tuple(task.y_train.shape) == (64, *y_shape) and tuple(task.y_val.shape) == (32, *y_shape)
    assert (task.num_outputs, task.readout_steps) == (num_outputs, readout)
    assert task.sequence == (name in ("adding", "copy", "seq_digits", "recall"))
    assert task.inputs(task.x_train).dtype == torch.float32
    assert task.x_train.dtype == (torch.int64 if task.vocab_size else torch.float32)
    if task.kind == "classification":
        assert task.y_train.dtype == torch.int64
        ys = torch.cat([task.y_train.flatten(), task.y_val.flatten()])
        assert ys.min() >= 0 and ys.max() < num_outputs
    else:
        assert task.y_train.dtype == torch.float32


def test_default_sizes():
    assert (len(make_task("blobs", 0).x_train), len(make_task("blobs", 0).x_val)) == (4000, 1000)
    digits = make_task("digits", 0)
    assert (len(digits.x_train), len(digits.x_val)) == (1797 - 360, 360)
    adding = make_task("adding", 0, n_train=8, n_val=8)
    assert adding.input_shape == (50, 2)
    assert make_task("copy", 0, n_train=8, n_val=8).input_shape == (20 + 10, 10)


def test_val_set_independent_of_n_train():
    for name in ("blobs", "adding", "copy", "digits"):
        a = make_task(name, 3, n_train=16, n_val=8, **SMALL[name])
        b = make_task(name, 3, n_train=32, n_val=8, **SMALL[name])
        assert torch.equal(a.y_val, b.y_val)


def test_blobs_standardized_with_train_statistics():
    task = make_task("blobs", 0)
    assert torch.allclose(task.x_train.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(task.x_train.std(0), torch.ones(16), atol=1e-4)


def test_digits_split_partitions_dataset_with_train_statistics():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    task = make_task("digits", 5)
    assert abs(task.x_train.mean().item()) < 1e-5 and abs(task.x_train.std().item() - 1) < 1e-4
    # train holds pixels 0 and 16, so min/max invert the train-statistics map for both splits;
    # val standardized with its own statistics would not land on integer pixel values
    lo, hi = task.x_train.min(), task.x_train.max()
    pixels = lambda x: ((x.reshape(-1, 64) - lo) / (hi - lo) * 16).double()
    both = torch.cat([pixels(task.x_train), pixels(task.x_val)])
    assert torch.allclose(both, both.round(), atol=1e-3)
    rows = lambda x, y: sorted(map(tuple, torch.cat([x, y[:, None].double()], 1).round().long().tolist()))
    raw = torch.as_tensor(bunch.data, dtype=torch.float64)
    assert rows(both, torch.cat([task.y_train, task.y_val])) == rows(raw, torch.as_tensor(bunch.target))
    capped = make_task("digits", 5, n_train=100)
    assert len(capped.x_train) == 100 and torch.equal(capped.y_val, task.y_val)


def test_digits_read_from_the_file_equal_sklearns_loader_and_need_no_sklearn_import(monkeypatch):
    import sklearn.datasets
    from sklearn.datasets import load_digits

    from gradexp.data.tasks import _digits_arrays

    bunch = load_digits()
    def refuse():
        raise AssertionError("load_digits() called: the fast path reads the file without importing sklearn")

    monkeypatch.setattr(sklearn.datasets, "load_digits", refuse)
    x, y = _digits_arrays.__wrapped__()  # uncached
    assert torch.equal(x, torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0)
    assert torch.equal(y, torch.as_tensor(bunch.target, dtype=torch.int64))


def test_seq_digits_is_digits_read_row_by_row():
    image, seq = make_task("digits", 2), make_task("seq_digits", 2)
    assert torch.equal(image.x_train[:, 0], seq.x_train)
    assert torch.equal(image.y_val, seq.y_val)


def test_adding_target_is_sum_of_marked_values():
    task = make_task("adding", 0, n_train=200, n_val=10, seq_len=9)
    x, y = task.x_train, task.y_train
    marks = x[..., 1]
    assert torch.equal(marks.sum(1), torch.full((200,), 2.0))
    assert (marks[:, :4].sum(1) == 1).all() and (marks[:, 4:].sum(1) == 1).all()  # one per half
    assert torch.allclose((x[..., 0] * marks).sum(1, keepdim=True), y)
    assert x[..., 0].min() >= 0 and x[..., 0].max() <= 1


def test_copy_layout_and_targets():
    seq_len, L = 6, 5
    task = make_task("copy", 0, n_train=50, n_val=10, seq_len=seq_len)
    tokens = task.x_train.argmax(-1)  # (N, T)
    assert torch.equal(task.x_train.sum(-1), torch.ones(50, seq_len + 2 * L))  # one-hot
    assert torch.equal(tokens[:, :L], task.y_train)
    blanks = torch.cat([tokens[:, L:L + seq_len - 1], tokens[:, -L:]], dim=1)
    assert (blanks == 8).all() and (tokens[:, L + seq_len - 1] == 9).all()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown task"):
        make_task("imagenet", 0, None, None, None)
    with pytest.raises(ValueError, match="seq_len"):
        make_task("blobs", 0, None, None, 10)
    for name, minimum in MIN_SEQ_LEN.items():
        make_task(name, 0, 4, 4, minimum)
        with pytest.raises(ValueError, match="seq_len"):
            make_task(name, 0, 4, 4, minimum - 1)
    with pytest.raises(ValueError, match="n_train"):
        make_task("blobs", 0, n_train=0)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_loss_and_metrics_match_oracle(name):
    task = small(name)
    y = task.y_val
    k = max(task.readout_steps, 1)
    output = torch.randn(32, k, task.num_outputs) if task.sequence else torch.randn(32, task.num_outputs)
    if task.kind == "regression":
        pred = output.reshape(32, 1)
        pred[:8] = y[:8] + 0.035  # just inside the 0.04 tolerance
        pred[8:16] = y[8:16] - 0.045  # just outside
        output = pred.reshape(output.shape)
        expected_loss = F.mse_loss(pred, y)
        expected_acc = ((pred - y).abs() < 0.04).float().mean()
        assert expected_acc >= 0.25
    else:
        logits = output.reshape(32 * k, -1)
        targets = y.reshape(32 * k)
        expected_loss = F.cross_entropy(logits, targets)
        expected_acc = (logits.argmax(1) == targets).float().mean()
    assert torch.allclose(task.loss(output, y), expected_loss)
    acc = task.metrics(output, y)["acc"]
    assert acc.dim() == 0 and torch.allclose(acc, expected_acc)


def test_copy_loss_averages_over_steps_and_acc_per_symbol():
    task = small("copy")
    y = task.y_val  # (B, L)
    output = F.one_hot(y, 8).float() * 10
    output[0, 0] = torch.roll(output[0, 0], 1)  # one wrong symbol
    per_step = [F.cross_entropy(output[:, t], y[:, t]) for t in range(5)]
    assert torch.allclose(task.loss(output, y), torch.stack(per_step).mean())
    assert torch.allclose(task.metrics(output, y)["acc"], torch.tensor(1 - 1 / (32 * 5)))


def test_task_to_moves_tensors():
    moved = small("blobs").to("meta")
    assert all(t.device.type == "meta" for t in _tensors(moved))


@pytest.mark.parametrize("n,batch_size", [(10, 5), (10, 3), (7, 16)])
def test_batches_cover_every_example_once_per_epoch(n, batch_size):
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(n)
    batches = Batches(x, y, batch_size, seed=0)
    drawn = []
    while len(drawn) < 4 * n:
        xb, yb = batches.next()
        assert len(xb) == batch_size and torch.equal(xb[:, 0].long(), yb)
        drawn += yb.tolist()
    epochs = [sorted(drawn[i * n:(i + 1) * n]) for i in range(4)]
    assert all(e == list(range(n)) for e in epochs)
    assert drawn[:n] != drawn[n:2 * n] or n < 3  # reshuffled each epoch


def test_batches_seeded():
    x, y = torch.randn(20, 2), torch.arange(20)
    a, b, c = (Batches(x, y, 4, s) for s in (1, 1, 2))
    ya, yb, yc = (torch.cat([it.next()[1] for _ in range(5)]) for it in (a, b, c))
    assert torch.equal(ya, yb) and not torch.equal(ya, yc)


def test_batches_state_dict_round_trip():
    x, y = torch.randn(10, 3), torch.arange(10)
    original = Batches(x, y, 4, seed=7)
    for _ in range(6):  # into the third epoch, mid-permutation
        original.next()
    state = original.state_dict()
    resumed = Batches(x, y, 4, seed=123)
    resumed.load_state_dict(state)
    for _ in range(8):
        assert torch.equal(original.next()[1], resumed.next()[1])
