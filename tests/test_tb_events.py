"""The events the TensorBoard sinks write for a logging step are the ones they wrote when each step's Summary was built
from scratch (before sinks/events.py reused one message per tuple of tags), read back from the event files."""
import math
import struct

import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import histogram_raw

from gradexp.analysis.flow import layer_quantities
from gradexp.outcome import Outcome
from gradexp.probes import histograms
from gradexp.sinks import profiles
from gradexp.sinks.events import ScalarEvents
from gradexp.sinks.tb_views import TensorBoardViews, flow_scalars, layout
from gradexp.sinks.tensorboard import TensorBoardSink, _AppendFile

EDGES = [0.0, -0.0, math.nan, -math.inf, math.inf, 1e40, -1e40, 3.4028235677973366e38, 1e-46, 5e-324, 1.4e-45,
         0.1, 1 / 3, 123456789.123]  # float32 overflow, its rounding at the top, subnormals, below them


def reference_log(writer: SummaryWriter, step: int, values: dict) -> None:
    """TensorBoardSink.log before this change: one Summary built from scratch."""
    scalars, histos = {}, []
    for tag, value in values.items():
        if not isinstance(value, list):
            scalars[tag] = value
        elif tag.startswith(histograms.PREFIX):
            histos.extend(histogram_raw(tag, **histograms.unpack(value)).value)
        else:
            scalars.update(profiles.profile_scalars(tag, value))
    summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()] + histos)
    writer._get_file_writer().add_summary(summary, step)


def read(run_dir) -> list[tuple[int, dict[str, bytes]]]:
    """(step, {tag: the value's bytes}) of every summary event in the folder's event file, in order."""
    (path,) = [p for p in run_dir.iterdir() if p.name.startswith("events.out.tfevents")]
    out = []
    for event in EventFileLoader(str(path)).Load():
        if event.HasField("summary"):
            out.append((event.step, {v.tag: v.SerializeToString() for v in event.summary.value}))
    return out


def steps() -> list[tuple[int, dict]]:
    """Logging steps whose tuples of tags change and come back: ordinary, with histograms and a profile, with
    evaluation, ordinary again; every edge value of float32."""
    torch.manual_seed(0)
    hist = histograms.pack(torch.randn(50)).tolist()
    base = {"loss/train": 2.3, "lr": 0.1, **{f"grad_norm/layers.{i}.w": v for i, v in enumerate(EDGES)}}
    return [(0, dict(base)),
            (1, {**base, "loss/train": 2.2, "hist/grad/layers.0.w": hist, "bptt_grad_norm/layers.0": [1e-30, 0.5, 2.0]}),
            (2, {**base, "loss/train": 2.1, "loss/val": 2.0, "acc/val": 0.5}),
            (3, {**base, "loss/train": math.nan}),
            (4, {**base, "bptt_grad_norm/layers.0": [0.0, 1.0, 0.0]})]


def test_the_tensorboard_sinks_events_are_the_ones_a_summary_built_from_scratch_gives(tmp_path):
    sink = TensorBoardSink(str(tmp_path / "new"))
    old = SummaryWriter(str(tmp_path / "old"))
    for step, values in steps():
        sink.log(step, values)
        reference_log(old, step, values)
    sink.writer.close()  # not sink.close(): its end-of-run heatmap is not a logging step's
    old.close()
    new_events = read(tmp_path / "new")
    assert new_events == read(tmp_path / "old")
    assert len(new_events) == 5 and "hist/grad/layers.0.w" not in new_events[2][1]  # no histogram left over


def test_events_are_on_disk_as_soon_as_logged(tmp_path):
    """A live TensorBoard (or a killed run) sees every logged step: the event file is appended to at each record."""
    sink = TensorBoardSink(str(tmp_path))
    assert isinstance(sink.writer._get_file_writer().event_writer._async_writer._writer._writer, _AppendFile)
    for step, values in steps()[:3]:
        sink.log(step, values)
    assert [s for s, _ in read(tmp_path)] == [0, 1, 2]
    sink.close(Outcome(status="completed", steps=3))


def test_a_reused_event_serialises_as_a_fresh_one():
    events = ScalarEvents()
    tags = tuple(f"t{i}" for i in range(len(EDGES)))
    for values in (EDGES, EDGES[::-1], [0.0] * len(EDGES)):
        extra = [Summary.Value(tag="x", simple_value=1.0)] if values[0] == 0.0 else []
        event = events.event(tags, values, extra)
        fresh = Event(summary=Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, values)] + extra))
        assert event.SerializeToString() == fresh.SerializeToString()
    assert struct.unpack("<f", event.summary.value[5].SerializeToString()[-4:])[0] == 0.0


def test_flow_scalars_events_are_the_ones_a_summary_built_from_scratch_gives(tmp_path):
    """TensorBoardViews' Flow/ event, beside the same scalars written the old way."""
    layers = ["layers.0", "layers.1", "layers.2"]
    writer, old = SummaryWriter(str(tmp_path / "new")), SummaryWriter(str(tmp_path / "old"))
    views = TensorBoardViews(writer, {}, layers)
    old.add_custom_scalars(layout(layers))  # as TensorBoardViews does first
    for step, scale in enumerate([1.0, 1e-20, 3.0]):
        values = {f"act_grad_norm/{name}": scale * 0.5 ** (2 - i) for i, name in enumerate(layers)}
        values.update({f"grad_norm/{name}.weight": scale * 2.0 ** i for i, name in enumerate(layers)})
        views.log(step, values)
        per_layer = layer_quantities(values, layers)
        scalars = flow_scalars([per_layer[f"act_grad_norm/{n}"] for n in layers], layers)
        old._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()]), step)
    writer.close()
    old.close()
    assert read(tmp_path / "new") == read(tmp_path / "old") and len(read(tmp_path / "old")) == 4


@pytest.mark.parametrize("chunks", [[b"abc"], [b"x" * 10, b"", b"y" * 70000]])
def test_append_file_writes_every_byte(tmp_path, chunks):
    path = tmp_path / "f"
    path.write_bytes(b"head")
    f = _AppendFile(str(path).encode())
    for chunk in chunks:
        f.write(chunk)
    assert path.read_bytes() == b"head" + b"".join(chunks)  # before close: nothing waits in a buffer
    f.close()
    assert f.closed


def edge_rows(bins: int) -> list[list[float]]:
    """Packed histogram rows (min, max, count, sum, sum of squares, bin counts) with the headers that break naive
    encoders: signed zeros, NaN and infinite ends, a range that overflows float64, subnormals, empty bins."""
    counts = [float(k % 3) for k in range(bins)]
    ends = [(0.0, 0.0), (-0.0, 0.0), (-1.5, 2.25), (math.nan, math.nan), (-math.inf, math.inf), (-math.inf, 1.0),
            (-1.7e308, 1.7e308), (5e-324, 1e-320), (1 / 3, 123456789.123), (3.0, 3.0), (math.nan, -math.nan),
            (-math.nan, math.nan), (1.0, -math.nan)]  # NaNs of either sign: the limits keep the min's own bits
    return [[lo, hi, float(sum(counts)), lo + hi, hi * hi, *counts] for lo, hi in ends] + \
        [histograms.pack(torch.randn(50), bins).tolist(), histograms.pack(torch.randn(9) * 1e-40, bins).tolist()]


@pytest.mark.parametrize("bins", [1, 2, 3, 15, 16, 30, 200])  # the packed arrays' length takes 1 or 2 bytes
@pytest.mark.parametrize("copies", [1, 5])  # where numpy's arrays land decides which NaN it keeps when both are
def test_histograms_encoded_with_numpy_are_the_records_histogram_raw_makes(bins, copies):
    rows = edge_rows(bins) * copies
    tags = tuple(f"hist/grad/p{i}" for i in range(len(rows)))
    event = ScalarEvents().event(("loss/train",), [2.0], [], tags, rows)
    reference = [histogram_raw(tag, **histograms.unpack(row)).value[0] for tag, row in zip(tags, rows)]
    fresh = Event(summary=Summary(value=[Summary.Value(tag="loss/train", simple_value=2.0), *reference]))
    assert event.SerializeToString() == fresh.SerializeToString()


def test_a_reused_event_keeps_no_histogram_of_the_previous_step():
    events = ScalarEvents()
    tags = ("hist/act/a", "hist/act/b")
    first = events.event((), [], [], tags, edge_rows(30)[:2]).SerializeToString()
    rows = edge_rows(30)[2:4]
    second = events.event((), [], [Summary.Value(tag="x", simple_value=1.0)], tags, rows)
    want = Event(summary=Summary(value=[*(histogram_raw(t, **histograms.unpack(r)).value[0] for t, r in zip(tags, rows)),
                                        Summary.Value(tag="x", simple_value=1.0)]))
    assert second.SerializeToString() == want.SerializeToString() != first


def test_a_row_too_short_to_be_a_histogram_is_refused_in_words():
    with pytest.raises(ValueError, match="5 header values and at least one bin, not 5"):
        ScalarEvents().event((), [], [], ("hist/act/a",), [[0.0, 1.0, 2.0, 1.0, 1.0]])


def test_a_nan_minimum_keeps_its_own_bits_in_every_limit_wherever_numpy_puts_the_arrays():
    """numpy may swap the operands of lo + x (which NaN comes out then depends on alignment); Python keeps lo's."""
    rows = [[math.nan, -math.nan, 1.0, 1.0, 1.0, 1.0]]
    want = Event(summary=Summary(value=[histogram_raw("hist/a", **histograms.unpack(rows[0])).value[0]]))
    padding = []
    for i in range(200):
        padding.append(bytearray(8 * i + 1))  # moves where the next arrays are allocated
        assert ScalarEvents().event((), [], [], ("hist/a",), rows).SerializeToString() == want.SerializeToString()
