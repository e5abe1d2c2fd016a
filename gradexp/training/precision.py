"""train.precision and train.loss_scale: torch.autocast for the forward pass and torch.amp.GradScaler for the
loss scale, on CPU and CUDA alike.

The order of a step follows torch's AMP recipe: forward under autocast, backward of the scaled loss outside
it, then `unscale` (every gradient divided by the scale, and inf/NaN found) before clipping and before any
instrument reads a gradient, then `step` (skipped by the scaler when a gradient is not finite) and the scale
update. A fixed scale (train.loss_scale=NUMBER) uses the same scaler with the scale put back after each
update, so overflowing steps are still skipped but the scale never moves."""
from __future__ import annotations

import contextlib
import math
from typing import Any, ContextManager, Optional, Union

import torch
from torch import Tensor

from gradexp.config.registry import PRECISIONS, precision_name, resolve


class Precision:
    def __init__(self, name: str, loss_scale: Union[str, float, None], device: torch.device) -> None:
        self.name = precision_name(name)
        entry = PRECISIONS[self.name]
        self.dtype = resolve(entry.autocast) if entry.autocast else torch.float32
        self.device_type = device.type
        mode = entry.default_loss_scale if loss_scale is None else loss_scale
        self.fixed: Optional[float] = None if mode in ("dynamic", "none") else float(mode)
        self.scaler = None
        if mode != "none":
            init = 2.0**16 if self.fixed is None else self.fixed  # GradScaler's own default start
            self.scaler = torch.amp.GradScaler(device.type, init_scale=init)
        self.skipped: Optional[Tensor] = None  # 0-d: optimizer steps skipped for inf/NaN so far, on the device
        self._found: Optional[Tensor] = None   # this step's inf/NaN flag (set by unscale)

    @property
    def mixed(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> ContextManager:
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scale(self) -> Optional[Tensor]:
        """The loss scale in force, 0-d on the device (no sync); None without a scaler."""
        return None if self.scaler is None else self.scaler._get_scale_async()

    def backward(self, loss: Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide every gradient by the scale (in place) and note whether one is inf or NaN. No host sync."""
        if self.scaler is None:
            return
        self.scaler.unscale_(optimizer)
        # GradScaler keeps the flag per device; it has no public accessor (stable since torch 1.6)
        self._found = sum(self.scaler._found_inf_per_device(optimizer).values())

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update(new_scale=self.fixed)
        found = self._found.to(torch.long)
        self.skipped = found if self.skipped is None else self.skipped + found

    def end_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After the instruments' last phase. A skipped step leaves inf/NaN in .grad; they were not used, so they
        must not read as divergence (the non-finite guard checks the gradients)."""
        if self.scaler is not None:
            optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"scaler": None if self.scaler is None else self.scaler.state_dict(),
                "skipped": None if self.skipped is None else int(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        skipped = state.get("skipped")
        if skipped is not None and (type(skipped) is not int or skipped < 0):  # a tampered checkpoint: a count
            raise ValueError(f"the skipped-step count {skipped!r} is not a count")
        if self.scaler is not None and state.get("scaler"):
            _check_scaler_state(state["scaler"])
            self.scaler.load_state_dict(state["scaler"])
        if state.get("skipped") is not None:
            # on the scaler's device; its scale tensor does not exist yet before the first backward
            self.skipped = torch.tensor(state["skipped"], device=torch.device(self.device_type))


def _check_scaler_state(state: Any) -> None:
    """A GradScaler's saved state as GradScaler writes it, or ValueError (a tampered checkpoint): a scale of 'abc'
    failed inside torch, and a negative or NaN one was used silently."""
    if not isinstance(state, dict):
        raise ValueError("the loss scaler's state is not a mapping")
    positive = {"scale": math.inf, "growth_factor": math.inf, "backoff_factor": 1.0}  # key -> its upper bound
    for key, bound in positive.items():
        value = state.get(key)
        if type(value) not in (int, float) or not 0 < value < bound or (key == "growth_factor" and value <= 1):
            raise ValueError(f"the loss scaler's {key} {value!r} is not one GradScaler keeps")
    for key, low in (("growth_interval", 1), ("_growth_tracker", 0)):
        value = state.get(key)
        if type(value) is not int or value < low:
            raise ValueError(f"the loss scaler's {key} {value!r} is not one GradScaler keeps")
