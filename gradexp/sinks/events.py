"""One logging step's scalars as one TensorBoard event, for the sinks that write them (tensorboard.py, tb_views.py).

A run logs the same tags at every logging step, so the Event message with every tag in it is made once per distinct
tuple of tags and afterwards only its numbers are set: making a Summary.Value costs ~1 us a value in protobuf's
Python API, setting the float of an existing one ~60 ns (measured on the depth-20 MLP's 169 values: 169 -> 10 us).
The event is the one Event(summary=Summary(value=[Summary.Value(tag=t, simple_value=v), ...])) would be, byte for
byte (tests/test_tb_events.py). Histograms come as the probe's packed rows (probes/histograms.py) and are encoded
with numpy, all of a step's at once, straight into protobuf's wire format, which the event then parses in one call:
each is the record torch's histogram_raw makes of `histograms.unpack(row)`, bit for bit (the same float64 operations
for the bucket limits; with protobuf's C implementation, upb, the default: its pure-Python one canonicalises NaNs).
Refilling a HistogramProto field by field from Python cost ~4 us a 30-bin histogram, ~140 us a step for the default
MLP's 34 under "everything every step", on the writer thread, whose Python holds the GIL the training thread needs
(scripts/bench_offthread.py); encoding them costs ~1 us each."""
from __future__ import annotations

from functools import lru_cache
from itertools import chain
from typing import Iterable, Sequence

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

from gradexp.probes.histograms import HEADER

TEMPLATES = 16  # distinct tag tuples kept (a run has a few: ordinary, evaluation and first steps); beyond, start over


class ScalarEvents:
    def __init__(self) -> None:
        self.templates: dict[tuple, tuple[Event, list[Summary.Value], tuple[bytes, ...]]] = {}

    def event(self, tags: tuple[str, ...], values: Iterable[float], extra: Sequence[Summary.Value] = (),
              histograms: tuple[str, ...] = (), histogram_rows: Sequence[Sequence[float]] = ()) -> Event:
        """An event of `tags` with `values` (as many, in order) as simple values, then the `histograms`, one packed row
        each (probes/histograms.py: min, max, count, sum, sum of squares, bin counts), then `extra`; its step and
        wall time are set by the FileWriter's add_event. The returned message is reused by the next call: write it
        before then."""
        key = (tags, histograms)
        event, slots, tag_fields = self.templates.get(key) or self._template(key)
        for slot, value in zip(slots, values):
            slot.simple_value = value
        del event.summary.value[len(slots):]  # the previous call's histograms and extra
        if histograms:
            event.summary.MergeFromString(encoded_histograms(tag_fields, histogram_rows))  # appended, in order
        if extra:
            event.summary.value.extend(extra)
        return event

    def _template(self, key: tuple) -> tuple[Event, list[Summary.Value], tuple[bytes, ...]]:
        if len(self.templates) >= TEMPLATES:
            self.templates.clear()
        event = Event()
        add = event.summary.value.add
        tags, histograms = key
        self.templates[key] = entry = (event, [add(tag=tag, simple_value=0.0) for tag in tags],
                                       tuple(_field(1, tag.encode()) for tag in histograms))
        return entry


def encoded_histograms(tag_fields: tuple[bytes, ...], rows: Sequence[Sequence[float]]) -> bytes:
    """Summary.value entries, in protobuf's wire format, of Summary.Value(tag=..., histo=HistogramProto(...)) for each
    packed row; tag_fields: each tag's encoded field (_field(1, tag)). Every field is written, zeros too: parsing
    them back gives the message that setting them would (the event is serialised from the parsed message)."""
    lengths = {len(row) for row in rows}
    if not lengths:
        return b""
    if min(lengths) <= HEADER:
        raise ValueError(f"a packed histogram row holds {HEADER} header values and at least one bin, "
                         f"not {min(lengths)}")
    if len(lengths) > 1:  # rows of different bin counts (gradexp's probe makes one): a group of one each
        return b"".join(encoded_histograms(tag_fields[i:i + 1], rows[i:i + 1]) for i in range(len(rows)))
    protos = _histo_protos(rows, lengths.pop() - HEADER)
    return b"".join(chain.from_iterable(zip(_prefixes(tag_fields, len(protos[0])), protos)))


@lru_cache(maxsize=64)
def _prefixes(tag_fields: tuple[bytes, ...], size: int) -> tuple[bytes, ...]:
    """What comes before each histogram's HistogramProto of `size` bytes: the Summary.value key and length, the tag,
    the histo key and length. The same at every logging step."""
    histo = _key(5, 2) + _varint(size)
    return tuple(_key(1, 2) + _varint(len(tag) + len(histo) + size) + tag + histo for tag in tag_fields)


def _histo_protos(rows: Sequence[Sequence[float]], bins: int) -> list[bytes]:
    """HistogramProto wire bytes of packed rows with `bins` bins each: fields 1-5 (min, max, num, sum, sum_squares) as
    fixed64 doubles, bucket_limit (6) and bucket (7) packed. The limits are histograms.unpack's, lo + width * k with
    width = (hi - lo) / bins, in the same float64 operations (numpy's element by element; inf - inf is NaN, silently,
    as for Python floats)."""
    width = HEADER + bins
    table = np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=len(rows) * width).reshape(len(rows), width)
    record = np.repeat(_keys_only(bins), len(rows))  # every field's key in place, the values to fill
    for column, name in enumerate(_HEADER_FIELDS):
        record[name] = table[:, column]
    lo = table[:, :1]
    with np.errstate(all="ignore"):
        limits = lo + (table[:, 1:2] - lo) / bins * np.arange(1, bins + 1, dtype=np.float64)
    # a NaN min makes every limit NaN; Python's lo + x gives lo's own NaN bits, numpy either operand's (it may swap
    # them), so those rows take lo as it is
    np.copyto(limits, lo, where=np.isnan(lo))
    record["bucket_limit"] = limits
    record["bucket"] = table[:, HEADER:]
    raw, size = record.tobytes(), record.itemsize
    return [raw[at:at + size] for at in range(0, len(raw), size)]


_HEADER_FIELDS = ("min", "max", "num", "sum", "sum_squares")  # HistogramProto fields 1-5, a packed row's header


@lru_cache(maxsize=16)
def _keys_only(bins: int) -> np.ndarray:
    """One HistogramProto record of `bins` bins with its keys set (fixed64 fields 1-5, packed fields 6 and 7 with
    their length) and its values zero."""
    record = np.zeros(1, dtype=_layout(bins))
    for number in range(1, len(_HEADER_FIELDS) + 1):
        record[f"key{number}"] = number << 3 | 1  # fixed64
    for number in (6, 7):
        record[f"key{number}"] = np.frombuffer(_key(number, 2) + _varint(8 * bins), dtype=np.uint8)
    return record


@lru_cache(maxsize=16)
def _layout(bins: int) -> np.dtype:
    """One HistogramProto's bytes as a packed numpy record: each field's key (for the packed fields 6 and 7, the key
    and the byte length), then its value."""
    lengths = len(_key(6, 2) + _varint(8 * bins))
    fields = [item for number, name in enumerate(_HEADER_FIELDS, start=1)
              for item in ((f"key{number}", "u1"), (name, "<f8"))]
    fields += [("key6", "u1", (lengths,)), ("bucket_limit", "<f8", (bins,)),
               ("key7", "u1", (lengths,)), ("bucket", "<f8", (bins,))]
    return np.dtype(fields)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: key, length, payload."""
    return _key(number, 2) + _varint(len(payload)) + payload


@lru_cache(maxsize=None)
def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


@lru_cache(maxsize=4096)  # lengths of a run's records: a handful of distinct ones
def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
