"""One logging step's scalars as one TensorBoard event, for the sinks that write them (tensorboard.py, tb_views.py).

A run logs the same tags at every logging step, so the Event message with every tag in it is made once per distinct
tuple of tags and afterwards only its numbers are set: making a Summary.Value costs ~1 us a value in protobuf's
Python API, setting the float of an existing one ~60 ns (measured on the depth-20 MLP's 169 values: 169 -> 10 us).
The event is the one Event(summary=Summary(value=[Summary.Value(tag=t, simple_value=v), ...])) would be, byte for
byte (tests/test_tb_events.py). Histograms get the same treatment: their values are made once per tuple of tags too and
refilled (~3 us a 30-bin histogram, against ~6 us for torch's histogram_raw and a copy into the event)."""
from __future__ import annotations

from typing import Iterable, Sequence

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

TEMPLATES = 16  # distinct tag tuples kept (a run has a few: ordinary, evaluation and first steps); beyond, start over


class ScalarEvents:
    def __init__(self) -> None:
        self.templates: dict[tuple, tuple[Event, list[Summary.Value], list[Summary.Value]]] = {}

    def event(self, tags: tuple[str, ...], values: Iterable[float], extra: Sequence[Summary.Value] = (),
              histograms: tuple[str, ...] = (), histogram_values: Iterable[dict] = ()) -> Event:
        """An event of `tags` with `values` (as many, in order) as simple values, then the `histograms` with
        `histogram_values` (keyword arguments of torch's histogram_raw: min, max, num, sum, sum_squares, bucket_limits,
        bucket_counts), then `extra`; its step and wall time are set by the FileWriter's add_event. The returned
        message is reused by the next call: write it before then."""
        key = (tags, histograms)
        event, slots, histogram_slots = self.templates.get(key) or self._template(key)
        for slot, value in zip(slots, values):
            slot.simple_value = value
        for slot, fields in zip(histogram_slots, histogram_values):
            _fill(slot.histo, fields)
        del event.summary.value[len(slots) + len(histogram_slots):]  # the previous call's extra
        if extra:
            event.summary.value.extend(extra)
        return event

    def _template(self, key: tuple) -> tuple[Event, list[Summary.Value], list[Summary.Value]]:
        if len(self.templates) >= TEMPLATES:
            self.templates.clear()
        event = Event()
        add = event.summary.value.add
        tags, histograms = key
        self.templates[key] = entry = (event, [add(tag=tag, simple_value=0.0) for tag in tags],
                                       [add(tag=tag) for tag in histograms])
        return entry


def _fill(histo: HistogramProto, fields: dict) -> None:
    """The fields torch.utils.tensorboard.summary.histogram_raw sets from its keyword arguments, set in place."""
    histo.min, histo.max, histo.num = fields["min"], fields["max"], fields["num"]
    histo.sum, histo.sum_squares = fields["sum"], fields["sum_squares"]
    histo.bucket_limit[:] = fields["bucket_limits"]
    histo.bucket[:] = fields["bucket_counts"]
