"""One logging step's scalars as one TensorBoard event, for the sinks that write them (tensorboard.py, tb_views.py).

A run logs the same tags at every logging step, so the Event message with every tag in it is made once per distinct
tuple of tags and afterwards only its numbers are set: making a Summary.Value costs ~1 us a value in protobuf's
Python API, setting the float of an existing one ~60 ns (measured on the depth-20 MLP's 169 values: 169 -> 10 us).
The event is the one Event(summary=Summary(value=[Summary.Value(tag=t, simple_value=v), ...])) would be, byte for
byte (tests/test_tb_events.py)."""
from __future__ import annotations

from typing import Iterable, Sequence

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

TEMPLATES = 16  # distinct tag tuples kept (a run has a few: ordinary, evaluation and first steps); beyond, start over


class ScalarEvents:
    def __init__(self) -> None:
        self.templates: dict[tuple[str, ...], tuple[Event, list[Summary.Value]]] = {}

    def event(self, tags: tuple[str, ...], values: Iterable[float], extra: Sequence[Summary.Value] = ()) -> Event:
        """An event of `tags` with `values` (as many, in order) as simple values, then `extra` (histograms, ...);
        its step and wall time are set by the FileWriter's add_event. The returned message is reused by the next
        call: write it before then."""
        event, slots = self.templates.get(tags) or self._template(tags)
        for slot, value in zip(slots, values):
            slot.simple_value = value
        del event.summary.value[len(slots):]  # the previous call's extra
        if extra:
            event.summary.value.extend(extra)
        return event

    def _template(self, tags: tuple[str, ...]) -> tuple[Event, list[Summary.Value]]:
        if len(self.templates) >= TEMPLATES:
            self.templates.clear()
        event = Event()
        add = event.summary.value.add
        self.templates[tags] = entry = (event, [add(tag=tag, simple_value=0.0) for tag in tags])
        return entry
