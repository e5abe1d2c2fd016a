"""act_mean/<layer>, act_std/<layer>, act_saturation/<layer>: forward statistics of each hidden layer.

Mean and std (population, correction 0) pool every entry of the layer's output (batch, features, and
pixels or time steps). Saturation is measured on the values the layer's activation function produced
(for recurrent layers: the hidden states h_t, before the norm):
- sigmoid, tanh, softsign: the fraction of entries where the derivative, written in terms of the output y,
  is below SATURATION_FRACTION of its maximum (sigmoid y(1-y) < 0.05*0.25, tanh 1-y^2 < 0.05,
  softsign (1-|y|)^2 < 0.05);
- relu, leaky_relu, elu, selu, gelu, mish: the fraction of units (features; channels for conv layers) whose
  output is <= 0 for every example (and every pixel / time step) of the batch: dead units, which sit in
  the flat or negative region of the activation for the whole batch;
- identity: 0 (no flat region).
Saturation needs to know where a layer's activation output is: layers that declare the activation-site
capability (probes/layers.py; gradexp's own blocks do) get it, other layers only mean and std.
Hooks are attached only inside `watch`, i.e. on logging steps (probes/base.py Hooks)."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import ContextManager, Optional

import torch
from torch import Tensor, nn

from gradexp.probes.base import Hooks, Probe, ProbeContext, Scalars, tags
from gradexp.probes.layers import ACTIVATION_SITE, Layers, has_capability, layer_output
from gradexp.probes.norms import LONG, ROW, host_vector, in_doubt, long_norms, norm_vector
from gradexp.probes.scratch import Scratch
from gradexp.config.registry import ACTIVATIONS

SATURATION_FRACTION = 0.05
# a row's float sum whose mean is at least this many times the dtype's smallest normal never rounded to the
# subnormals' grid (absolute error <= N * 2^-150, relative to N * mean: < 2^-48)
SUBNORMAL_SUM = 2.0 ** 24


def saturation(y: Tensor, activation: str, unit_dim: int) -> Tensor:
    """Fraction of saturated entries (squashing activations) or dead units (ReLU family) of each y[i];
    y is (L, ...) — L same-shaped layer outputs stacked — and unit_dim indexes a layer's own tensor. (L,)
    Which rule applies is the activation's registry entry (gradexp/config/registry.py)."""
    entry = ACTIVATIONS[activation]
    if entry.saturation == "squashing":
        # a bool's mean in float32 directly: the same number as .float().mean(), one operator fewer
        return (entry.output_derivative(y) < SATURATION_FRACTION).flatten(1).mean(dim=1, dtype=torch.float32)
    if entry.saturation == "dead_units":
        unit_axis = unit_dim + 1 if unit_dim >= 0 else y.dim() + unit_dim
        others = [d for d in range(1, y.dim()) if d != unit_axis]  # batch and positions
        return (y.amax(dim=others) <= 0).mean(dim=1, dtype=torch.float32)  # dead: max over the batch <= 0; (L, units) -> (L,)
    return y.new_zeros(y.shape[0])


def std_mean_(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Population std and mean of each row of (L, N) float32 or float64, two-pass (on CPU several times faster than
    torch.std_mean's Welford kernel): the mean, then the norm of the centred rows through probes/norms.py, whose
    float32 squares neither round away over long rows nor under- or overflow (a layer whose outputs are ~1e-25 has a
    std of ~1e-25, not 0). The mean is rounded to the rows' dtype before it is subtracted, which leaves `residual`
    (the centred rows' own mean) in them; where the mean is large against the std (1000 + 1e-3 * noise) that residual
    is no longer small against the std, and the corrected two-pass formula takes it out again: std^2 = ||c||^2 / N -
    residual^2, written std0 * sqrt(1 - (residual / std0)^2) so that no square leaves float64's range. Centres `flat`
    in place: it must be a working copy."""
    mean = _row_means(flat)
    flat.sub_(mean[:, None])
    residual = flat.mean(dim=1)  # a correction: its own last digits hardly matter
    std = _centred_norms(flat).to(torch.float64) / math.sqrt(flat.shape[1])
    if flat.is_cpu:  # a handful of host floats: Python, not a handful of tiny operators
        return host_vector([_corrected(s, r) for s, r in zip(std.tolist(), residual.tolist())]), mean
    share = torch.where(std > 0, residual / std, 0.0)  # <= 1 in exact arithmetic: |mean(c)| <= rms(c)
    return std * (1 - share.square()).clamp_min(0).sqrt(), mean  # mean + residual: no better (c rounds too)


def _corrected(std: float, residual: float) -> float:
    """std0 * sqrt(1 - (residual / std0)^2): 0, inf and NaN stay as they are."""
    return std * math.sqrt(max(0.0, 1.0 - (residual / std) ** 2)) if 0 < std < math.inf else std


def _centred_norms(flat: Tensor) -> Tensor:
    """The L2 norm of each row of (L, N): on accelerators accumulated in float64 (memory-bound: no dearer); on CPU in
    the rows' dtype, by runs of norms.ROW entries where the rows are long (probes/norms.py), and where a row's
    squares may have under- or overflowed (outputs of ~1e-25 or ~1e25), that row again through norm_vector."""
    if not flat.is_cpu:
        return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64)
    rows, n = flat.shape
    if n <= LONG:
        norms = torch.linalg.vector_norm(flat, dim=1)
    elif n % ROW:
        norms = long_norms(list(flat.unbind(0)))
    else:  # every row in whole runs: one call for all of them
        runs = torch.linalg.vector_norm(flat.view(rows, -1, ROW), dim=2)
        norms = runs.to(torch.float64).square_().sum(dim=1).sqrt_()
    doubtful = in_doubt(norms.tolist(), [n] * rows, flat.dtype)
    if doubtful:
        norms = norms.to(torch.float64)
        norms[doubtful] = norm_vector([flat[i] for i in doubtful])
    return norms


def _row_means(flat: Tensor) -> Tensor:
    """Each row's mean, summed in the rows' dtype; on accelerators (memory-bound) in float64. A float sum below
    SUBNORMAL_SUM * N rounds to the subnormals' coarse grid on the way: on CPU those rows (the values are on the host
    already) are summed again in float64."""
    if not flat.is_cpu:
        return flat.mean(dim=1, dtype=torch.float64)
    mean = flat.mean(dim=1)
    floor = torch.finfo(flat.dtype).tiny * SUBNORMAL_SUM
    doubtful = [i for i, m in enumerate(mean.tolist()) if not abs(m) >= floor]  # NaN: the float64 sum keeps it
    if doubtful:
        mean = mean.double()
        mean[doubtful] = flat[doubtful].double().mean(dim=1)
    return mean


def stacked(scratch: Scratch, tensors: list[Tensor], at: int) -> Tensor:
    """The tensors stacked into (L, ...) at offset `at` of the scratch buffer of their dtype and device: the stacked
    layer outputs of a wide model are megabytes, and the stack and the centring of a fresh allocation that size would
    cost several times their arithmetic (probes/scratch.py)."""
    first = tensors[0]
    size = at + len(tensors) * first.numel()
    out = scratch.flat(size, first.dtype, first.device)[at:].view(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


def by_shape(tensors: dict[str, Tensor]) -> list[list[str]]:
    """Names grouped by their tensor's shape, dtype and device: each group is stacked into one (L, ...) tensor, a
    handful of kernels for every layer together instead of a handful per layer (hidden layers mostly share a shape)."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, t in tensors.items():
        groups[(tuple(t.shape), t.dtype, t.device)].append(name)
    return list(groups.values())


def _same(a: Tensor, b: Tensor) -> bool:
    """The same values in the same memory (a layer whose output is its activation's output)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


class ActStats(Probe):
    """Forward hooks only keep references to the layers' outputs (detached); the statistics are computed
    after backward, batched across layers of the same shape.

    A reference is only as good as the memory behind it: an in-place operation after the layer (nn.ReLU(inplace=True)
    after a watched Linear) rewrites the output before the statistics are taken, and they described the ReLU's
    output under the Linear's name (found by a researcher). Each kept output's version counter says whether that
    happened. At the first logging step every output is copied, so its values are right whatever follows a layer;
    a layer whose output was rewritten is copied at every logging step from then on; one rewritten where it was not
    copied (an in-place operation that only some steps run) logs no statistics at that step rather than wrong ones."""

    def __init__(self, activation: Optional[str], layers: Layers) -> None:
        self.activation, self.layers = activation, layers
        self.outputs: dict[str, list[Tensor]] = {}     # layer -> its output, per call in this step
        self.activated: dict[str, list[Tensor]] = {}   # layer -> its activation's output (saturation), per call
        self.unit_dim = 1
        self.hooks: Optional[Hooks] = None  # made at the first watch
        self.scratch = Scratch()
        self.kept: list[tuple[str, Tensor, int]] = []  # (layer, its output, that output's version) of this step
        self.copied: set[str] = set()  # layers whose output an in-place operation rewrote: copied in the hook
        self.copy_all = True           # the first logging step copies every output (class docstring)

    @classmethod
    def from_context(cls, context: ProbeContext) -> "ActStats":
        return cls(context.activation, context.layers)

    def watch(self, model: nn.Module) -> ContextManager:
        if self.hooks is None:
            self.hooks = self._make_hooks()
        self.outputs.clear()  # a fresh step: forwards after the last after_backward (LBFGS's closure) are not this step's
        self.activated.clear()
        self.kept.clear()
        return self.hooks.attached()

    def _make_hooks(self) -> Hooks:
        hooks = Hooks()
        for name, layer in self.layers:
            keep_output = self._keep(self.outputs, name)
            if self.activation is None or not has_capability(layer, ACTIVATION_SITE):  # no saturation rule to apply
                hooks.forward(layer, keep_output)
                continue
            module, read_input, self.unit_dim = layer.activation_site()
            keep = self._keep(self.activated, name)
            if module is layer and not read_input:  # the layer's output is the activation's: one hook keeps both
                hooks.forward(layer, self._keep(self.outputs, name, also=self.activated))
                continue
            hooks.forward(layer, keep_output)
            if read_input:
                hooks.forward_pre(module, lambda m, inputs, keep=keep: keep(m, None, inputs[0]))
            else:
                hooks.forward(module, keep)
        return hooks

    def _keep(self, store: dict[str, list[Tensor]], name: str, also: Optional[dict[str, list[Tensor]]] = None):
        """A forward hook keeping the module's output (detached) under `name` in `store`, and in `also` if given."""
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            output = layer_output(output)
            if output is None:
                return
            kept = output.detach()  # shares the output's version counter
            if not kept.is_inference():  # an inference tensor has none (a forward under torch.inference_mode())
                self.kept.append((name, kept, kept._version))
            if self.copy_all or name in self.copied:
                kept = kept.clone()
            store.setdefault(name, []).append(kept)
            if also is not None:
                also.setdefault(name, []).append(kept)
        return hook

    def _drop_rewritten(self) -> None:
        """The layers whose kept output an in-place operation rewrote since the hook (class docstring): copied from
        now on, and where this step kept no copy, their values are not measured."""
        rewritten = {name for name, kept, version in self.kept if kept._version != version}
        self.kept.clear()
        wrong = set() if self.copy_all else rewritten - self.copied
        self.copied |= rewritten
        self.copy_all = False
        for name in wrong:
            self.outputs.pop(name, None)
            self.activated.pop(name, None)

    def after_backward(self, model: nn.Module) -> Scalars:
        values: Scalars = {}
        self._drop_rewritten()
        outputs = {name: pooled(calls, flatten=True) for name, calls in self.outputs.items()}
        activated = {name: pooled(calls, flatten=False) for name, calls in self.activated.items()}
        at = 0  # the saturation stacks first, then the outputs, side by side in the scratch buffer
        shared = {n for n, a in activated.items() if n in outputs and _same(a, outputs[n])}
        for names in by_shape(activated):
            if all(n in shared for n in names):
                continue  # measured on the outputs' own stack below, before it is centred
            y = stacked(self.scratch, [activated[n] for n in names], at)
            at += y.numel()
            values[tags("act_saturation/", names)] = saturation(y, self.activation, self.unit_dim)
        for names in by_shape(outputs):
            y = stacked(self.scratch, [outputs[n] for n in names], at)  # (L, ...)
            at += y.numel()
            if all(n in shared for n in names):
                values[tags("act_saturation/", names)] = saturation(y, self.activation, self.unit_dim)
            flat = y.flatten(1)  # centred in place (a working copy); 16-bit outputs (autocast) in a float32 copy
            std, mean = std_mean_(flat if flat.dtype in (torch.float32, torch.float64) else flat.float())  # (L,) each
            values[tags("act_mean/", names)] = mean
            values[tags("act_std/", names)] = std
        self.outputs.clear()  # the same dicts: the hooks made once write into them
        self.activated.clear()
        return values


def pooled(calls: list[Tensor], flatten: bool) -> Tensor:
    """A layer called several times in one step (weight sharing, gradient accumulation): every call's entries
    together, as one batch. Mean and std pool all entries (flatten); saturation needs the unit axis, so calls are
    joined along the batch axis (the last call alone where their other axes differ)."""
    if len(calls) == 1:
        return calls[0]
    if flatten:
        return torch.cat([c.reshape(-1) for c in calls])
    if all(c.shape[1:] == calls[0].shape[1:] for c in calls):
        return torch.cat(calls)
    return calls[-1]
