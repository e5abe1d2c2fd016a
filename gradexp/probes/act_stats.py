"""act_mean/<layer>, act_std/<layer>, act_saturation/<layer>: forward statistics of each hidden layer.

Mean and std (population, correction 0) pool every entry of the layer's output (batch, features, and
pixels or time steps). Saturation is measured on the values the layer's activation function produced
(for recurrent layers: the hidden states h_t, before the norm):
- sigmoid, tanh, softsign: the fraction of entries where the derivative, written in terms of the output y,
  is below SATURATION_FRACTION of its maximum (sigmoid y(1-y) < 0.05*0.25, tanh 1-y^2 < 0.05,
  softsign (1-|y|)^2 < 0.05);
- relu, leaky_relu, elu, selu, gelu: the fraction of units (features; channels for conv layers) whose
  output is <= 0 for every example (and every pixel / time step) of the batch: dead units, which sit in
  the flat or negative region of the activation for the whole batch;
- identity: 0 (no flat region).
Hooks exist only inside `watch`, i.e. on logging steps."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from gradexp.probes.act_grads import hidden_layers
from gradexp.probes.base import Probe, Scalars

SATURATION_FRACTION = 0.05
DEAD_FAMILY = ("relu", "leaky_relu", "elu", "selu", "gelu")

# output y -> (derivative of the activation at that point) / (its maximum); shape preserved
_RELATIVE_DERIVATIVE: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": lambda y: y * (1 - y) / 0.25,
    "tanh": lambda y: 1 - y * y,
    "softsign": lambda y: (1 - y.abs()) ** 2,
}


def saturation(y: Tensor, activation: str, unit_dim: int) -> Tensor:
    """Fraction of saturated entries (squashing activations) or dead units (ReLU family) in y; 0-d."""
    if activation in _RELATIVE_DERIVATIVE:
        return (_RELATIVE_DERIVATIVE[activation](y) < SATURATION_FRACTION).float().mean()
    if activation in DEAD_FAMILY:
        units = y.movedim(unit_dim, 0).flatten(1)  # (units, batch * positions)
        return (units <= 0).all(dim=1).float().mean()
    return y.new_zeros(())


def saturation_site(layer: nn.Module) -> tuple[nn.Module, bool, int]:
    """Where a block's activation output can be seen: (module, read its input?, unit dim of that tensor)."""
    if hasattr(layer, "rnn"):  # recurrent block: the norm receives the hidden states (B, T, H)
        return layer.norm, True, -1
    return layer.act, False, 1  # MLP (B, H) / conv (B, C, H, W): the activation module's output


class ActStats(Probe):
    def __init__(self, activation: str) -> None:
        self.activation = activation
        self.values: Scalars = {}

    @contextlib.contextmanager
    def watch(self, model: nn.Module) -> Iterator[None]:
        handles = []
        for name, layer in hidden_layers(model):
            handles.append(layer.register_forward_hook(self._output_hook(name)))
            module, read_input, unit_dim = saturation_site(layer)
            hook = self._saturation_hook(name, unit_dim)
            if read_input:
                handles.append(module.register_forward_pre_hook(lambda m, inputs, hook=hook: hook(m, None, inputs[0])))
            else:
                handles.append(module.register_forward_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _output_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            std, mean = torch.std_mean(output.detach(), correction=0)
            self.values[f"act_mean/{name}"], self.values[f"act_std/{name}"] = mean, std

        return hook

    def _saturation_hook(self, name: str, unit_dim: int):
        def hook(module: nn.Module, inputs, y: Tensor) -> None:
            self.values[f"act_saturation/{name}"] = saturation(y.detach(), self.activation, unit_dim)

        return hook

    def after_backward(self, model: nn.Module) -> Scalars:
        values, self.values = self.values, {}
        return values
