"""The training stack's imports, once per gradexp process, with the cyclic garbage collector paused, then frozen.

torch and the training stack make ~165,000 objects that live as long as the process (torch._dynamo, which
torch.optim imports at every optimizer's first step, ~120,000 more). While they pile up, the collector's rule (a full
collection whenever the survivors have grown by a quarter) runs full collections over all of them again and again:
six in a default `gradexp run`, 0.53 s of its 3.3 s, and as many in every sweep worker before its first job. Paused,
none runs during these imports. Frozen afterwards (gc.freeze), these objects are left out of every later full
collection: the ones torch._dynamo's import and the end-of-run figures set off, and the interpreter's own at exit.

Only gradexp's own processes call this (a `gradexp run`, a sweep's worker or SLURM job): freezing keeps whatever is
alive at that point for good, which suits modules, classes and functions, not a user's long-lived process. torch._dynamo
stays where it is imported (after the config is checked), so bad input is refused without waiting for it."""
from __future__ import annotations

import gc
import importlib
import sys

TRAINING_STACK = ("gradexp.training.run",)  # torch, numpy, TensorBoard and gradexp's training modules


def import_training_stack(*more: str) -> None:
    """Import TRAINING_STACK and the modules `more` names where they are not imported yet, the collector paused, and
    freeze what is alive then."""
    names = (*TRAINING_STACK, *more)
    if all(name in sys.modules for name in names):
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in names:
            importlib.import_module(name)
    finally:
        if enabled:
            gc.enable()
    gc.freeze()
