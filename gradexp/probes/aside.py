"""Probe work done beside the training thread: for large CPU tensors whose arithmetic outweighs its Python.

A probe hands over copies (the training thread moves on and may change the originals: clipping scales gradients in
place, the next update moves the weights) and a function of them; one helper thread runs it and the probe returns its
values as a Deferred (probes/base.py). The sinks' writer thread waits for them, so a logging step's training thread
never does. torch's kernels release the GIL, so on a second core a large tensor's passes run while training goes on;
its Python still takes turns with the training thread's (scripts/bench_offthread.py: each microsecond of Python
moved to a thread costs the training thread ~1.3), which is why small tensors, all Python, stay inline.
Accelerators keep everything inline: their kernels are asynchronous already.

Each Aside owns the buffer of its copies and waits for its previous work before it overwrites them, so at most one
hand-over per Aside is in flight; the work itself runs in order on the one thread, so errors come out in order, at
the sinks' writer (which raises them on the training thread) or wherever the Deferred is read."""
from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Callable, Optional

import torch
from torch import Tensor

from gradexp.probes.base import Deferred, Scalars
from gradexp.probes.scratch import Scratch

_POOL: Optional[concurrent.futures.ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's helper thread does not exist there, and work queued for it would never run."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """The one helper thread, made at the first hand-over (a run without such work starts none)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gradexp-aside")
        return _POOL


class Aside:
    def __init__(self) -> None:
        self.copies = Scratch()
        self.previous: Optional[Deferred] = None
        self.pid = os.getpid()  # the process whose helper thread runs `previous`

    def submit(self, tensors: list[Tensor], work: Callable[[list[Tensor]], Scalars]) -> Deferred:
        """work(float32 copies of `tensors`, taken now), on the helper thread. The tensors share a device."""
        self.wait()  # the copies of the previous hand-over are still being read until it is done
        copies = self.copies.views(tensors, torch.float32, tensors[0].device)
        torch._foreach_copy_(copies, [t.detach() for t in tensors])  # converts other float dtypes to float32
        self.previous = Deferred(_pool().submit(_with_threads, torch.get_num_threads(), work, copies))
        self.pid = os.getpid()
        return self.previous

    def wait(self) -> None:
        """Until the previous hand-over's work is done (its errors are for whoever reads its Deferred). In a forked
        child the parent's work is not waited for: no thread of this process runs it."""
        if self.previous is not None and self.pid == os.getpid():
            concurrent.futures.wait([self.previous.future])
        self.previous = None


def _with_threads(threads: int, work: Callable[[list[Tensor]], Scalars], copies: list[Tensor]) -> Scalars:
    """work(copies) with the torch thread count the training thread had at the hand-over: a thread keeps the count it
    first ran with, and a float32 sum's rounding depends on how many threads split it (a second run in the same
    process, `train.threads` changed by a sweep, would otherwise pack with the first one's)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return work(copies)
