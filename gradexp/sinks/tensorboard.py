"""TensorBoard event files in the run folder, written with torch.utils.tensorboard."""
from __future__ import annotations

from typing import Optional

from torch.utils.tensorboard import SummaryWriter

from gradexp.train import Outcome


class TensorBoardSink:
    def __init__(self, run_dir: str, purge_step: Optional[int] = None):
        # purge_step (resume): readers drop the earlier files' points at steps >= it, so one clean curve remains
        self.writer = SummaryWriter(log_dir=run_dir, purge_step=purge_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self, outcome: Outcome) -> None:
        self.writer.flush()
        self.writer.close()
