"""gradexp's instruments every step against the techniques of its peers, re-implemented as those tools do them, on
the same model, data and steps, in one process, interleaved (each repeat runs every variant once, in rotating order),
median of the repeats; each figure is the ratio to the plain loop:
  plain       a hand-written loop: forward, loss, zero_grad, backward, SGD step
  lightning   Lightning's grad_norm: a 2-norm and an .item() per parameter gradient, and the total norm
  wandb       wandb.watch(log="gradients"): per parameter gradient, NaN filter, min/max .item(), a 64-bin histc and
              a host copy
  hooks       a naive full backward hook per hidden layer: the output gradient's norm and an .item() per call
  foreach     one batched torch._foreach_norm over every gradient and one host transfer (the floor)
  handmade    gradexp's four default probe families hand-written as tightly as eager PyTorch allows, for this model
              only, with no exactness pass, no names and nothing written (scripts/handmade.py): the floor under
              gradexp's figure
  gradexp     gradexp.Monitor(every=1) with its default probes (gradient, activation-gradient, activation and update
              norms, clip telemetry), writing TensorBoard events and summary.json
  cockpit     Cockpit 1.0.2's GradNorm + UpdateSize quantities every step (BackPACK-extended model), when importable
Models: the tiny MLP (6 hidden layers x 64, batch 64) and an MLP of 20 x 256 (batch 128), ReLU, on the 8x8 digits.

    python scripts/bench_peers.py [--repeats 5] [--threads 1] [--steps-scale 1.0] [--only tiny,mlp20]"""
from __future__ import annotations

import argparse
import warnings
import importlib.metadata
import statistics
import sys
import tempfile
import time
import types
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

import gradexp
from gradexp.data.tasks import make_task

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # scripts/ itself
import handmade  # noqa: E402

MODELS = {"tiny": dict(depth=6, width=64, batch=64, steps=300), "mlp20": dict(depth=20, width=256, batch=128, steps=100)}
LABELS = {"tiny": "tiny MLP (6x64)", "mlp20": "MLP 20x256"}
BINS = 64  # wandb.watch's default num_bins


def build(depth: int, width: int) -> nn.Sequential:
    """Hidden blocks as Sequential(Linear, ReLU), so that each variant (and gradexp's discovery) sees the same layers."""
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(64 if i == 0 else width, width), nn.ReLU()) for i in range(depth)]
    return nn.Sequential(*blocks, nn.Linear(width, 10))


def plain(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def lightning_style(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norms = {n: torch.linalg.vector_norm(p.grad, 2) for n, p in model.named_parameters() if p.grad is not None}
    total = torch.linalg.vector_norm(torch.stack(list(norms.values())), 2)
    logged = {n: v.item() for n, v in norms.items()}  # self.log_dict(...): one float per parameter
    logged["grad_2.0_norm_total"] = total.item()
    opt.step()
    return loss


def wandb_style(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    for _, p in model.named_parameters():  # wandb's torch hook: _log_tensor_stats per gradient
        flat = p.grad.detach().reshape(-1)
        flat = flat[~torch.isnan(flat)]
        lo, hi = flat.min().item(), flat.max().item()
        counts = flat.histc(bins=BINS, min=lo, max=hi).cpu().clone()
        edges = torch.linspace(lo, hi, steps=BINS + 1)
        _ = (counts.tolist(), edges.tolist())
    opt.step()
    return loss


def foreach_style(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    _ = torch.stack(torch._foreach_norm(grads)).tolist()  # one batched kernel, one transfer
    opt.step()
    return loss


class Variant:
    """setup(model, opt) -> the step function; finish() after the timed steps."""

    def __init__(self, name: str, step: Optional[Callable] = None):
        self.name, self._step = name, step

    def setup(self, model, opt, tmp: str) -> Callable:
        return self._step

    def finish(self) -> None:
        pass


class Hooks(Variant):
    def setup(self, model, opt, tmp):
        self.seen = {}

        def hook(name):
            def record(module, grad_input, grad_output):
                self.seen[name] = grad_output[0].norm().item()
            return record

        self.handles = [block.register_full_backward_hook(hook(str(i))) for i, block in enumerate(model[:-1])]
        return plain

    def finish(self):
        for handle in self.handles:
            handle.remove()


class Handmade(Variant):
    def setup(self, model, opt, tmp):
        probes = handmade.Handmade(list(model[:-1]), list(model.parameters()))

        def step(model, opt, x, y):
            probes.attach()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            probes.after_backward()
            opt.step()
            probes.after_step()
            return loss

        return step


class Gradexp(Variant):
    def setup(self, model, opt, tmp):
        self.monitor = gradexp.Monitor(model, run_dir=f"{tmp}/run", every=1, optimizers=[opt])

        def step(model, opt, x, y):
            with self.monitor.step():
                loss = plain(model, opt, x, y)
                self.monitor.record(loss=loss)
            return loss

        return step

    def finish(self):
        self.monitor.close()


class Cockpit(Variant):
    def setup(self, model, opt, tmp):
        from backpack import extend
        from cockpit import Cockpit as Tool, quantities
        from cockpit.utils.schedules import linear

        model = extend(model)
        loss_fn = extend(nn.CrossEntropyLoss())
        per_example = nn.CrossEntropyLoss(reduction="none")
        tool = Tool(model.parameters(), quantities=[quantities.GradNorm(linear(1)), quantities.UpdateSize(linear(1))])
        counter = iter(range(10 ** 9))

        def step(_model, opt, x, y):
            global_step = next(counter)
            out = model(x)
            loss = loss_fn(out, y)
            losses = per_example(out, y)
            opt.zero_grad(set_to_none=True)
            info = {"batch_size": len(x), "individual_losses": losses, "loss": loss, "optimizer": opt}
            with tool(global_step, info=info):
                loss.backward(create_graph=tool.create_graph(global_step))
            opt.step()
            return loss

        return step


def cockpit_available() -> Optional[str]:
    """None if Cockpit imports, else why not. Cockpit 1.0.2 still imports pkg_resources (gone from setuptools >= 81):
    a stand-in answering its one call (its own version) is installed first."""
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            stand_in = types.ModuleType("pkg_resources")

            class DistributionNotFound(Exception):
                pass

            def get_distribution(name):
                try:
                    return types.SimpleNamespace(version=importlib.metadata.version(name))
                except importlib.metadata.PackageNotFoundError:
                    raise DistributionNotFound(name) from None

            stand_in.DistributionNotFound, stand_in.get_distribution = DistributionNotFound, get_distribution
            sys.modules["pkg_resources"] = stand_in
    try:
        import backpack  # noqa: F401
        import cockpit  # noqa: F401
    except Exception as err:  # not installed, or not importable with this torch
        return f"{type(err).__name__}: {err}"
    return None


def time_variant(variant: Variant, spec: dict, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor) -> float:
    model = build(spec["depth"], spec["width"])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with tempfile.TemporaryDirectory() as tmp:
        step = variant.setup(model, opt, tmp)
        started = time.perf_counter()
        for i in range(spec["steps"]):
            batch = order[i]
            step(model, opt, x[batch], y[batch])
        elapsed = time.perf_counter() - started
        variant.finish()  # outside the time, as setup is: the steps' cost, not a run's fixed start and end
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps-scale", type=float, default=1.0)
    parser.add_argument("--only", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # BackPACK's and the full backward hooks' notices
    variants = [Variant("plain", plain), Variant("lightning", lightning_style), Variant("wandb", wandb_style),
                Hooks("hooks"), Variant("foreach", foreach_style), Handmade("handmade"), Gradexp("gradexp")]
    no_cockpit = cockpit_available()
    if no_cockpit is None:
        variants.append(Cockpit("cockpit"))
    task = make_task("digits", 0)
    x, y = task.x_train.reshape(len(task.x_train), -1), task.y_train
    results: dict[str, dict[str, float]] = {}
    for name in args.only.split(","):
        spec = dict(MODELS[name], steps=max(1, int(MODELS[name]["steps"] * args.steps_scale)))
        order = torch.randint(0, len(x), (spec["steps"], spec["batch"]), generator=torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {v.name: [] for v in variants}
        for repeat in range(args.repeats):
            rotated = variants[repeat % len(variants):] + variants[:repeat % len(variants)]
            for variant in rotated:
                times[variant.name].append(time_variant(variant, spec, x, y, order))
        results[name] = {v: statistics.median(t) for v, t in times.items()}
        print(f"{name}: {spec['steps']} steps; seconds per variant, each repeat: "
              + "; ".join(f"{v} {', '.join(f'{s:.3f}' for s in t)}" for v, t in times.items()), file=sys.stderr)
    report(results, args, no_cockpit)
    return 0


def report(results: dict[str, dict[str, float]], args, no_cockpit: Optional[str]) -> None:
    table = Table(title=f"every step, ratio to the plain loop (median of {args.repeats} interleaved repeats, "
                        f"{args.threads} torch thread(s))")
    table.add_column("technique")
    for name in results:
        table.add_column(LABELS[name], justify="right")
    variants = list(next(iter(results.values())))
    table.add_row("plain loop (s)", *[f"{r['plain']:.3f} s" for r in results.values()])
    for v in variants[1:]:
        table.add_row(v, *[f"{r[v] / r['plain']:.2f}x" for r in results.values()])
    Console().print(table)
    if no_cockpit:
        print(f"cockpit: skipped ({no_cockpit}); pip install cockpit-for-pytorch==1.0.2 with torch pinned")


if __name__ == "__main__":
    sys.exit(main())
