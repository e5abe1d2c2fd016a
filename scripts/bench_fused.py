"""Would a compiled kernel make the default probes' logging step cheap enough? The four families' arithmetic for
one logging step of a real MLP (per-parameter gradient norms, each hidden layer's output-gradient norm, output mean,
std and dead fraction, the update ratio's norms), written once as a function of the captured tensors, timed three
ways on the same tensors, the values read to the host as any logger must:
- eager: as scripts/handmade.py computes it (batched `_foreach_norm`, the outputs stacked);
- torch.compile: the same function through Dynamo and Inductor (one C++ kernel on CPU), whole graph;
- AOTInductor: the same graph exported and compiled ahead of time, called without Dynamo's guards.
It prints each way's compile time and its median µs a call (interleaved repeats), and the largest difference from
eager. Needs a C++ compiler for the two compiled ways (Inductor's CPU code is C++); without one they are skipped.

    python scripts/bench_fused.py --repeats 5              # the default MLP (6x64, batch 64)
    python scripts/bench_fused.py --model mlp20            # the depth-20 MLP (20x256, batch 128)
"""
from __future__ import annotations

import argparse
import functools
import math
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # scripts/ itself
from bench_peers import MODELS, build  # noqa: E402
from gradexp.data.tasks import make_task  # noqa: E402


def captured(name: str) -> tuple[list[Tensor], ...]:
    """One training step's tensors as the probes see them: gradients, hidden outputs and their gradients, and the
    parameters flat before and after an SGD step."""
    spec = MODELS[name]
    model = build(spec["depth"], spec["width"])
    task = make_task("digits", 0)
    x, y = task.x_train.reshape(len(task.x_train), -1)[:spec["batch"]], task.y_train[:spec["batch"]]
    outputs, output_grads = [], []

    def keep(_module, _inputs, output):
        outputs.append(output.detach())
        output.register_hook(output_grads.append)

    handles = [block.register_forward_hook(keep) for block in list(model)[:-1]]
    F.cross_entropy(model(x), y).backward()
    for handle in handles:
        handle.remove()
    params = list(model.parameters())
    before = torch.cat([p.detach().reshape(-1) for p in params])
    torch.optim.SGD(params, lr=0.01).step()
    after = torch.cat([p.detach().reshape(-1) for p in params])
    return [p.grad for p in params], outputs, output_grads[::-1], [before], [after], [p.numel() for p in params]


def batched_norms(tensors: list[Tensor]) -> Tensor:
    """Eager's fastest: one `_foreach_norm` call (Inductor has no kernel of its own for it and calls it as is)."""
    return torch.stack(torch._foreach_norm(tensors))


def fusable_norms(tensors: list[Tensor]) -> Tensor:
    """A norm per tensor: one reduction each, which Inductor fuses into its kernels."""
    return torch.stack([torch.linalg.vector_norm(t) for t in tensors])


def statistics_of(grads: list[Tensor], outputs: list[Tensor], output_grads: list[Tensor], before: Tensor,
                  after: Tensor, sizes: list[int], norms_of: Callable = batched_norms) -> Tensor:
    """Every number of the four families in one float32 vector, of operators a compiler may fuse; eager PyTorch runs
    them one by one."""
    norms = norms_of(grads + output_grads)
    stacked = torch.stack(outputs)  # (layers, batch, width): the MLPs' hidden layers share one shape
    rows = stacked.flatten(1)
    mean = rows.mean(dim=1)
    std = torch.linalg.vector_norm(rows - mean[:, None], dim=1) / math.sqrt(rows.shape[1])
    dead = (stacked.amax(dim=1) <= 0).mean(dim=1, dtype=torch.float32)
    size = norms_of(list(before.split(sizes)))
    moved = norms_of(list((after - before).split(sizes)))
    return torch.cat([norms, mean, std, dead, moved / size])


def compiled(args: tuple) -> tuple[Callable, float]:
    started = time.perf_counter()
    fn = torch.compile(functools.partial(statistics_of, norms_of=fusable_norms), fullgraph=True, dynamic=False)
    fn(*args)
    return fn, time.perf_counter() - started


def ahead_of_time(args: tuple, folder: str) -> tuple[Callable, float]:
    grads, outputs, output_grads, before, after, sizes = args

    class Statistics(torch.nn.Module):  # torch.export takes a module of tensors: the lists flattened, sizes fixed
        def forward(self, *tensors: Tensor) -> Tensor:
            g, o = len(grads), len(outputs)
            return statistics_of(list(tensors[:g]), list(tensors[g:g + o]), list(tensors[g + o:g + 2 * o]),
                                 tensors[-2], tensors[-1], sizes, fusable_norms)

    flat = (*grads, *outputs, *output_grads, before, after)
    started = time.perf_counter()
    program = torch.export.export(Statistics(), flat)
    runner = torch._inductor.aoti_load_package(
        torch._inductor.aoti_compile_and_package(program, package_path=f"{folder}/statistics.pt2"))
    runner(*flat)
    return (lambda *_: runner(*flat)), time.perf_counter() - started


def per_call(fn: Callable, args: tuple, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn(*args).tolist()
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MODELS), default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-aot", action="store_true", help="leave AOTInductor out (its compile takes ~20 s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # export's and Inductor's notices about internals
    grads, outputs, output_grads, (before,), (after,), sizes = captured(args.model)
    inputs = (grads, outputs, output_grads, before, after, sizes)
    ways: dict[str, Callable] = {"eager": statistics_of}
    with tempfile.TemporaryDirectory() as folder:  # the AOTInductor package lives here while it is called
        if shutil.which("c++") is None:
            print("compiled ways: skipped (no C++ compiler: Inductor's CPU kernels are C++)")
        else:
            ways["torch.compile"], seconds = compiled(inputs)
            print(f"torch.compile: compiled in {seconds:.1f} s")
            if not args.no_aot:
                ways["AOTInductor"], seconds = ahead_of_time(inputs, folder)
                print(f"AOTInductor: compiled in {seconds:.1f} s")
        reference = statistics_of(*inputs).double()
        for name, fn in list(ways.items())[1:]:
            difference = (fn(*inputs).double() - reference).abs().max().item()
            print(f"{name}: {reference.numel()} values, largest difference from eager {difference:.3g}")
        timed: dict[str, list[float]] = {name: [] for name in ways}
        for repeat in range(args.repeats):
            for name in list(ways)[repeat % len(ways):] + list(ways)[:repeat % len(ways)]:
                timed[name].append(per_call(ways[name], inputs, args.calls))
    medians = {name: statistics.median(times) for name, times in timed.items()}
    print(f"{args.model}: µs a call (median of {args.repeats} interleaved repeats of {args.calls} calls, "
          f"{args.threads} torch thread(s))")
    for name, median in medians.items():
        print(f"  {name:14s} {median:8.1f} µs  {median / medians['eager']:5.2f}x eager")
    return 0


if __name__ == "__main__":
    sys.exit(main())
