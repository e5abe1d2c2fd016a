"""An environment variable set for the length of a `with`, then as the caller had it (unset again where it was
unset): a `gradexp` command run inside a caller's process (main(argv), completion) must not leave its settings in
the environment that the caller's later commands and subprocesses inherit."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional


@contextlib.contextmanager
def environment_variable(key: str, value: str) -> Iterator[Optional[str]]:
    """os.environ[key] = value inside the `with`; yields the caller's own value (None: unset)."""
    previous = os.environ.get(key)
    os.environ[key] = value
    try:
        yield previous
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous
