"""One gradexp process writes into a run folder at a time.

Two `gradexp run resume=R` started together (a second terminal, a job requeued while the first still runs) would
both continue R: overlapping event files, and summary.json and checkpoint.pt from whichever wrote last. The run holds
an exclusive flock on the folder itself for as long as it writes there (no lock file: nothing is added to the folder,
and the kernel lets go of the lock when the process dies, however it dies, so a killed run never blocks its resume).
Filesystems without flock (some network mounts) run unlocked, as before."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Iterator

from gradexp.config.schema import ConfigError


class FolderInUse(ConfigError):
    """Another process is writing into the run folder: one line, exit 2."""

    def __init__(self, run_dir: str):
        ValueError.__init__(self, f"{run_dir} is being written by another gradexp process; a run folder takes one "
                                  "run at a time (wait for it to end, or stop it, then resume)")
        self.key, self.value, self.allowed = "hydra.run.dir", run_dir, "a folder no other run is writing into"


@contextlib.contextmanager
def sole_writer(run_dir: str) -> Iterator[None]:
    """Hold the run folder for this process while the block runs; FolderInUse at once if another holds it. A folder
    that does not exist yet has no other writer to keep out (it is made inside the block)."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        yield
        return
    try:
        _lock(fd, run_dir)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock(fd: int, run_dir: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise FolderInUse(run_dir) from None
        # ENOLCK, EOPNOTSUPP, EBADF: a filesystem without flock on folders; the run goes on unlocked
