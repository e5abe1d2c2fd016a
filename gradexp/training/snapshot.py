"""A device-side copy of everything a training step reads and changes: model parameters and buffers,
optimizer state and hyper-parameters, scheduler state and the position in the batch stream. Restoring
it and re-running the same steps reproduces them (same batches, same arithmetic), which is what the
non-finite localisation replays from.

Taking it again reuses its buffers (one batched torch._foreach_copy_), so the steady-state cost is a
device memcpy of model + optimizer state; it doubles their memory."""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from gradexp.probes.base import named_parameters


class Snapshot:
    def __init__(self, run: Any) -> None:
        self.run = run
        self.keys: list = []             # which live tensor each buffer copies (its signature)
        self.buffers: list[Tensor] = []
        self.take()

    def _live(self) -> tuple[list, list[Tensor], dict]:
        """(signature, live tensors, non-tensor optimizer state) in a fixed order."""
        model, opt = self.run.model, self.run.optimizer
        params = [p for _, p in named_parameters(model)]
        tensors = params + list(model.buffers())
        keys: list = [("model", i, tuple(t.shape)) for i, t in enumerate(tensors)]
        other = {}
        for i, p in enumerate(params):
            for k, v in opt.state.get(p, {}).items():
                if isinstance(v, Tensor):
                    keys.append(("opt", i, k, tuple(v.shape), v.device))
                    tensors.append(v)
                else:
                    other[(i, k)] = copy.deepcopy(v)
        return keys, tensors, other

    @torch.no_grad()
    def take(self) -> None:
        keys, tensors, self.other = self._live()
        if keys == self.keys:
            torch._foreach_copy_(self.buffers, tensors)
        else:  # first time, or the optimizer created its state: allocate
            self.keys, self.buffers = keys, [t.detach().clone() for t in tensors]
        run = self.run
        self.groups = [copy.deepcopy({k: v for k, v in g.items() if k != "params"}) for g in run.optimizer.param_groups]
        self.scheduler = copy.deepcopy(run.scheduler.state_dict()) if run.scheduler is not None else None
        self.batches = run.batches.state_dict()

    @torch.no_grad()
    def restore(self) -> None:
        run, params = self.run, list(self.run.model.parameters())
        model_keys = [k for k in self.keys if k[0] == "model"]
        live = list(run.model.parameters()) + list(run.model.buffers())
        torch._foreach_copy_(live, self.buffers[:len(model_keys)])
        state: dict = defaultdict(dict)
        for key, buf in zip(self.keys[len(model_keys):], self.buffers[len(model_keys):]):
            state[params[key[1]]][key[2]] = buf.clone()  # the replay updates optimizer state in place
        for (i, k), v in self.other.items():
            state[params[i]][k] = copy.deepcopy(v)
        run.optimizer.state = state
        for group, saved in zip(run.optimizer.param_groups, self.groups):
            group.update(copy.deepcopy(saved))
        if self.scheduler is not None:
            run.scheduler.load_state_dict(copy.deepcopy(self.scheduler))
        run.batches.load_state_dict(self.batches)
