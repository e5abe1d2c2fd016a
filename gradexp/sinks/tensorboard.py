"""TensorBoard event files in the run folder, written with torch.utils.tensorboard.

All scalars and histograms of a logging step go out as one Summary protobuf (one event) instead of one add_* call
each: the same records for readers, a fraction of the Python cost. 1-d values are histograms
(hist/... tags, see probes/histograms.py) or per-time-step profiles (sinks/profiles.py)."""
from __future__ import annotations

import threading
from typing import Optional

from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import histogram_raw

from gradexp.probes import histograms
from gradexp.sinks import profiles
from gradexp.outcome import Outcome
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


def _write_directly(writer: SummaryWriter) -> None:
    """Swap the event file's writer thread for _DirectWriter (same record writer, same bytes). Left as is when
    TensorBoard's internals differ from the ones this was written against."""
    event_writer = getattr(writer._get_file_writer(), "event_writer", None)
    threaded = getattr(event_writer, "_async_writer", None)
    if threaded is None or not hasattr(threaded, "_writer") or not hasattr(threaded, "_worker"):
        return
    event_writer._async_writer = _DirectWriter(threaded._writer)
    threaded._closed = True
    threaded._worker.stop()  # nothing was queued yet: the thread just ends


class TensorBoardSink:
    def __init__(self, run_dir: str, purge_step: Optional[int] = None):
        threading.excepthook = _writer_thread_errors_go_to_the_run
        # purge_step (resume): readers drop the earlier files' points at steps >= it, so one clean curve remains
        self.writer = SummaryWriter(log_dir=run_dir, purge_step=purge_step)
        _write_directly(self.writer)
        self.history: dict[str, tuple[list[int], list[list[float]]]] = {}  # profile tag -> (steps, profiles)

    def log(self, step: int, values: dict) -> None:
        scalars, histos = {}, []
        for tag, value in values.items():
            if not isinstance(value, list):
                scalars[tag] = value
            elif tag.startswith(histograms.PREFIX):
                histos.extend(histogram_raw(tag, **histograms.unpack(value)).value)
            else:
                scalars.update(profiles.profile_scalars(tag, value))
                steps, rows = self.history.setdefault(tag, ([], []))
                steps.append(step)
                rows.append(value)
        # one event per logging step, histograms included: each event is a queue hand-off to the writer thread
        summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()] + histos)
        file_writer = self.writer._get_file_writer()
        try:
            file_writer.add_summary(summary, step)
        except OSError as err:  # the writer thread failed (disk full): name the file it could not write
            err.filename = err.filename or file_writer.event_writer._file_name
            raise

    def state_dict(self) -> dict:
        """The profiles behind the end-of-run heatmaps: a resumed run draws them over the whole run (checkpoint.pt)."""
        return {tag: (list(steps), [list(row) for row in rows]) for tag, (steps, rows) in self.history.items()}

    def load_state_dict(self, state: dict) -> None:
        self.history = {tag: (list(steps), [list(row) for row in rows]) for tag, (steps, rows) in state.items()}

    def close(self, outcome: Outcome) -> None:
        if self.history:
            from gradexp.sinks import figures  # matplotlib loads only when there is a heatmap to draw
        for tag, (steps, rows) in self.history.items():  # the heatmaps, once, covering the whole run
            self.writer.add_figure(tag, figures.time_heatmap(tag, steps, rows), global_step=image_step(steps, outcome))
        self.writer.flush()
        self.writer.close()
