"""The floor under gradexp's default probes: the same four families hand-written as tightly as eager PyTorch allows,
for the benchmarks to time beside gradexp (scripts/bench_overhead.py's `handmade` column, scripts/bench_peers.py's
`handmade` row). What an expert would write for one known model, with none of what a tool must add:
- per-parameter gradient norms and their total; each hidden layer's output gradient (a tensor hook that keeps it)
  normed in the same _foreach_norm as the gradients;
- each hidden layer's output mean, std and dead-unit fraction (ReLU), over the layers' outputs stacked: the
  hidden layers must share one output shape, as in the MLPs these benchmarks build;
- the update ratio ||theta_after - theta_before|| / ||theta_before|| per parameter, from one flat copy of the
  parameters before the step and one after, all norms in one _foreach_norm.
Left out: the exactness pass for norms below float32's range, names and tags, mixed precision and clipping,
anything written to disk. The values are read to the host (Python floats), as any logger must, and dropped."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Handmade:
    def __init__(self, layers: list[nn.Module], params: list[nn.Parameter]) -> None:
        self.layers, self.params = layers, params
        self.outputs: list[Tensor] = []
        self.output_grads: list[Tensor] = []
        self.handles: list = []
        self.flat = [p.detach().view(-1) for p in params]  # share storage: they see the step's in-place update
        self.before, self.after = (torch.empty(sum(p.numel() for p in params)) for _ in range(2))
        at, slices = 0, []
        for p in params:
            slices.append(slice(at, at + p.numel()))
            at += p.numel()
        self.before_views = [self.before[s] for s in slices]
        self.after_views = [self.after[s] for s in slices]

    def attach(self) -> None:
        """Before a logging step's forward: a forward hook per hidden layer, removed again in after_backward."""
        self.handles = [layer.register_forward_hook(self._keep) for layer in self.layers]

    def _keep(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        self.outputs.append(output.detach())
        if output.requires_grad:
            output.register_hook(self.output_grads.append)

    def after_backward(self) -> tuple:
        for handle in self.handles:
            handle.remove()
        norms = [n.item() for n in torch._foreach_norm([p.grad for p in self.params] + self.output_grads)]
        total = math.sqrt(math.fsum(n * n for n in norms[:len(self.params)]))
        stacked = torch.stack(self.outputs)  # (layers, batch, width)
        rows = stacked.flatten(1)
        mean = rows.mean(dim=1)
        std = torch.linalg.vector_norm(rows - mean[:, None], dim=1) / math.sqrt(rows.shape[1])
        dead = (stacked.amax(dim=1) <= 0).mean(dim=1, dtype=torch.float32)
        self.outputs.clear()
        self.output_grads.clear()
        torch.cat(self.flat, out=self.before)  # theta before the step (no clip policy: gradients are final)
        return norms, total, mean.tolist(), std.tolist(), dead.tolist()

    def after_step(self) -> list[float]:
        torch.cat(self.flat, out=self.after)
        torch.sub(self.before, self.after, out=self.after)  # the step, negated
        norms = [n.item() for n in torch._foreach_norm(self.before_views + self.after_views)]
        size, moved = norms[:len(self.params)], norms[len(self.params):]
        return [d / b if b else math.inf for b, d in zip(size, moved)]
