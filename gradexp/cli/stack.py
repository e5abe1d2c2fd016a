"""The training stack's imports, once per gradexp process, with the cyclic garbage collector paused, then frozen.

torch and the training stack make ~165,000 objects that live as long as the process (torch._dynamo, which
torch.optim imports at every optimizer's first step, ~120,000 more). While they pile up, the collector's rule (a full
collection whenever the survivors have grown by a quarter) runs full collections over all of them again and again:
six in a default `gradexp run`, 0.53 s of its 3.3 s, and as many in every sweep worker before its first job. Paused,
none runs during these imports. Frozen afterwards (gc.freeze), these objects are left out of every later full
collection: the ones torch._dynamo's import and the end-of-run figures set off, and the interpreter's own at exit.

Only gradexp's own processes freeze (a `gradexp run`, a sweep's worker or SLURM job): a freeze keeps whatever is alive
at that point for good, which suits modules, classes and functions, not a user's long-lived process that called
main(argv) (there the stack is imported plainly: a pause without the freeze only defers the collector's passes). With
them it keeps the imports' own cyclic garbage (8,000-12,000 objects, 1-8 MB) and, under the basic launcher, the first
job's config (~19,000 objects, ~2 MB): once per process, not per job; a full collection first would cost 0.27 s.
torch._dynamo stays where it is imported (after the config is checked), so bad input is refused without waiting for it."""
from __future__ import annotations

import contextlib
import gc
import importlib
import sys
from typing import Iterator

TRAINING_STACK = ("gradexp.training.run",)  # torch, numpy, TensorBoard and gradexp's training modules


def import_training_stack(*more: str, freeze: bool = True) -> None:
    """Import TRAINING_STACK and the modules `more` names where they are not imported yet; with `freeze` (gradexp's
    own process) the collector paused, and what is alive then frozen."""
    names = (*TRAINING_STACK, *more)
    if all(name in sys.modules for name in names):
        return
    with _collector_paused() if freeze else contextlib.nullcontext():
        for name in names:
            importlib.import_module(name)
    if freeze:
        gc.freeze()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off inside the `with`, back as it was after it (off where the caller had it off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
