"""When an end-of-run image (a heatmap, a profile) is logged: shared by the sinks that draw one."""
from __future__ import annotations

from gradexp.outcome import Outcome

UNFINISHED = ("interrupted", "failed", "running")  # statuses a run can be resumed from


def image_step(steps: list[int], outcome: Outcome) -> int:
    """The step an end-of-run image is logged at: the last logged step; for a run that may be resumed, the step it
    stopped at, so that the resumed run's purge (from its checkpoint step) replaces this session's images."""
    return max(steps[-1], outcome.steps) if outcome.status in UNFINISHED else steps[-1]
