"""How a run ended: the record every stage above reads (the loop fills it, analysis judges it, the sinks and the
report show it). At the very bottom of the stack, so that none of them has to import the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Outcome:
    """The status, the steps done, where it went non-finite, the error, perf figures and the verdict."""
    status: str = "running"          # completed | diverged | interrupted | failed
    steps: int = 0                   # optimizer updates done
    nonfinite: Optional[dict] = None
    error: Optional[str] = None
    perf: dict = field(default_factory=dict)
    verdict: Optional[dict] = None   # set by gradexp.analysis.diagnose once training ends, before the sinks close


class WriteFailed(Exception):
    """A write into the run folder failed (disk full, folder gone): the run ended 'failed'; str() is one line."""
