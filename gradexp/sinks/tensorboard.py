"""TensorBoard event files in the run folder, written with torch.utils.tensorboard.

All scalars and histograms of a logging step go out as one event instead of one add_* call each: the same records
for readers, a fraction of the Python cost. 1-d values are histograms (hist/... tags, see probes/histograms.py) or
per-time-step profiles (sinks/profiles.py). A tag is a number at every step or a list at every step (a probe's tag
has one kind), so where each tag goes is worked out once per distinct tuple of tags (Routes); a list where a number
was routed fails loudly (protobuf's TypeError), it is never written as something else."""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, NamedTuple, Optional

from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

from gradexp.probes import histograms
from gradexp.sinks import profiles
from gradexp.outcome import Outcome
from gradexp.sinks.state import named, numbers, require, step_number
from gradexp.sinks.events import TEMPLATES, ScalarEvents
from gradexp.sinks.images import image_step

def _writer_thread_errors_go_to_the_run(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread keeps a write error (disk full) and raises it again at the next log call, where
    the run ends 'failed' in one line; printing the thread's own traceback as well would bury that line."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _previous_hook(args)


_previous_hook = threading.excepthook


def _fast_record_checksums() -> None:
    """TensorBoard's event writer checksums every record with a CRC-32C written in pure Python: ~300 us for one
    logging step's event on a small model, holding the GIL that the training thread needs. google-crc32c computes
    the same checksum in C (~0.2 us); it replaces the function the record writer calls (same bytes on disk)."""
    try:
        import google_crc32c
    except ImportError:  # TensorBoard's own, slower
        return
    from tensorboard.summary.writer import record_writer

    def masked_crc32c(data: bytes) -> int:  # TFRecord's masking of the CRC, as tensorboard's own does it
        x = google_crc32c.value(bytes(data))
        return ((((x >> 15) | (x << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

    record_writer.masked_crc32c = masked_crc32c


_fast_record_checksums()


class _DirectWriter:
    """TensorBoard's _AsyncWriter interface (write, flush, close), writing on the caller's thread. gradexp's sinks
    already write on their own thread (sinks/writer.py): a second writer thread per event file would only contend
    with the training thread for the GIL at every hand-over. A write error (disk full) is raised to the caller."""

    def __init__(self, record_writer) -> None:
        self._writer, self._closed = record_writer, False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise IOError("Writer is closed")
        self._writer.write(data)

    def flush(self) -> None:
        if not self._closed:
            self._writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.flush()
            self._writer.close()


class _AppendFile:
    """The event file opened once, appended to without a buffer: each record reaches the operating system at once, as
    with TensorBoard's local GFile (a live TensorBoard or a killed run sees every record written), which instead opens,
    appends and closes the file for every record (~20 us a record, holding the GIL)."""

    def __init__(self, path: bytes) -> None:
        self.file = open(path, "ab", buffering=0)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # an unbuffered write may take part of the bytes (a disk filling up raises at the next one)
            view = view[self.file.write(view):]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.file.close()

    @property
    def closed(self) -> bool:
        return self.file.closed


def _append_to_open_file(record_writer) -> None:
    """Give the record writer _AppendFile in place of TensorBoard's GFile when that is a local file already written
    to (the file-version record): the same bytes in the same file. Left as is for other file systems."""
    gfile = getattr(record_writer, "_writer", None)
    if not (type(gfile).__name__ == "GFile" and type(getattr(gfile, "fs", None)).__name__ == "LocalFileSystem"
            and getattr(gfile, "write_started", False) and not gfile.closed):
        return
    record_writer._writer = _AppendFile(gfile.filename)
    gfile.close()


def _write_directly(writer: SummaryWriter) -> None:
    """Swap the event file's writer thread for _DirectWriter (same record writer, same bytes) and its per-record
    open/close for one open file. Left as is when TensorBoard's internals differ from the ones this was written
    against."""
    event_writer = getattr(writer._get_file_writer(), "event_writer", None)
    threaded = getattr(event_writer, "_async_writer", None)
    if threaded is None or not hasattr(threaded, "_writer") or not hasattr(threaded, "_worker"):
        return
    event_writer._async_writer = _DirectWriter(threaded._writer)
    threaded._closed = True
    threaded._worker.stop()  # writes what was queued (the file-version and purge records), then ends
    _append_to_open_file(threaded._writer)


_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def _opened(run_dir: str, purge_step: Optional[int]) -> SummaryWriter:
    """The run's SummaryWriter. A resumed run's event file must sort after the files it continues: readers take a
    folder's event files in name order, and the purge record drops only the points read before it. The name starts
    with the second it was made; then host, pid and a per-process counter compare as text (counter 10 sorts before
    9), so a session resumed in the second its predecessor's file was made (from Python, or a quick requeue) can sort
    first and lose its points. Then its file, just made and empty of points, is removed and made again in the next
    second: a wait of at most one, only where the names would sort wrong. Left as is when TensorBoard's internals
    differ from the ones this was written against (the file's name is not public)."""
    writer = SummaryWriter(log_dir=run_dir, purge_step=purge_step)
    mine = getattr(getattr(writer._get_file_writer(), "event_writer", None), "_file_name", None)
    if purge_step is None or not isinstance(mine, str):
        return writer
    others = [name for name in os.listdir(run_dir) if _EVENT_FILE.match(name) and name != os.path.basename(mine)]
    if all(name < os.path.basename(mine) for name in others):
        return writer
    writer.close()
    os.remove(mine)  # made by this call, holding only its header records
    _wait_past(max(int(_EVENT_FILE.match(name).group(1)) for name in others))
    return SummaryWriter(log_dir=run_dir, purge_step=purge_step)


def _wait_past(second: int) -> None:
    """Until time.time() is past `second`, or about a second at most (a file dated later still, a clock set back,
    is left to sort as it does)."""
    deadline = time.monotonic() + 1.1
    while second <= time.time() < second + 1 and time.monotonic() < deadline:
        time.sleep(second + 1 - time.time() + 1e-3)  # sleep counts on the monotonic clock, the name on time()'s


class Routes(NamedTuple):
    """Where each tag of a logging step goes, for one tuple of tags (in the step's order)."""
    scalars: tuple[str, ...]     # numbers: one simple value each
    profiles: tuple[str, ...]    # 1-d lists other than histograms: a few scalars each, and the end-of-run heatmap
    histograms: tuple[str, ...]  # hist/... packed histograms

    @classmethod
    def of(cls, values: dict) -> "Routes":
        lists = [tag for tag, value in values.items() if isinstance(value, list)]
        return cls(tuple(tag for tag, value in values.items() if not isinstance(value, list)),
                   tuple(tag for tag in lists if not tag.startswith(histograms.PREFIX)),
                   tuple(tag for tag in lists if tag.startswith(histograms.PREFIX)))


class TensorBoardSink:
    def __init__(self, run_dir: str, purge_step: Optional[int] = None):
        threading.excepthook = _writer_thread_errors_go_to_the_run
        # purge_step (resume): readers drop the earlier files' points at steps >= it, so one clean curve remains
        self.writer = _opened(run_dir, purge_step)
        _write_directly(self.writer)
        self.history: dict[str, tuple[list[int], list[list[float]]]] = {}  # profile tag -> (steps, profiles)
        self.routes: dict[tuple[str, ...], Routes] = {}
        self.events = ScalarEvents()

    def log(self, step: int, values: dict) -> None:
        tags = tuple(values)
        routes = self.routes.get(tags) or self._route(tags, values)
        # the step's numbers in the routed order; with no list among them, that is the dict's own order
        numbers = values.values() if len(routes.scalars) == len(tags) else [values[tag] for tag in routes.scalars]
        extra = []
        for tag in routes.profiles:
            profile = values[tag]
            extra += [Summary.Value(tag=t, simple_value=v) for t, v in profiles.profile_scalars(tag, profile).items()]
            steps, rows = self.history.setdefault(tag, ([], []))
            steps.append(step)
            rows.append(profile)
        # one event per logging step, histograms included
        event = self.events.event(routes.scalars, numbers, extra, routes.histograms,
                                  [values[tag] for tag in routes.histograms])
        file_writer = self.writer._get_file_writer()
        try:
            file_writer.add_event(event, step)
        except OSError as err:  # the write failed (disk full): name the file it could not write
            err.filename = err.filename or file_writer.event_writer._file_name
            raise

    def _route(self, tags: tuple[str, ...], values: dict) -> Routes:
        if len(self.routes) >= TEMPLATES:
            self.routes.clear()
        self.routes[tags] = routes = Routes.of(values)
        return routes

    def state_dict(self) -> dict:
        """The profiles behind the end-of-run heatmaps: a resumed run draws them over the whole run (checkpoint.pt)."""
        return {tag: (list(steps), [list(row) for row in rows]) for tag, (steps, rows) in self.history.items()}

    def load_state_dict(self, state: dict) -> None:
        require(named(_profile_history)(state), "TensorBoard heatmap history")
        self.history = {tag: (list(steps), [list(row) for row in rows]) for tag, (steps, rows) in state.items()}

    def close(self, outcome: Outcome) -> None:
        if self.history:
            from gradexp.sinks import figures  # matplotlib loads only when there is a heatmap to draw
        for tag, (steps, rows) in self.history.items():  # the heatmaps, once, covering the whole run
            self.writer.add_figure(tag, figures.time_heatmap(tag, steps, rows), global_step=image_step(steps, outcome))
        self.writer.flush()
        self.writer.close()


def _profile_history(value: Any) -> bool:
    """(steps, one profile per step, all of one length): what state_dict keeps of each heatmap."""
    return (isinstance(value, (list, tuple)) and len(value) == 2 and numbers(list(value[0]))
            and isinstance(value[1], list) and len(value[1]) == len(value[0]) and all(numbers(r) for r in value[1])
            and len({len(r) for r in value[1]}) <= 1 and all(step_number(s) for s in value[0]))
