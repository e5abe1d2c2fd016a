"""gradexp.Monitor under DDP: 2 CPU processes on gloo, each with half the batch. Every logged norm is the global one
(what one process would log on the whole batch, checked against float64 plain torch) and only rank 0 writes."""
import gc
import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import gradexp

WORLD = 2


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                         nn.Linear(8, 3))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


class _ToFile:
    def __init__(self, path):
        self.path, self.logged = path, {}

    def log(self, step, values):
        self.logged[step] = values

    def close(self, outcome):
        with open(self.path, "w") as f:
            json.dump(self.logged[0], f)


def _worker(rank, folder):
    # a file rendezvous in the test's own folder: no port to pick, so no race with another process taking it
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        _train(rank, folder)
        dist.barrier()  # both ranks are done before either tears gloo down
    finally:
        # DDP's reducer and the autograd graph go before the process group they use: torch 2.13's gloo otherwise aborts
        # a rank now and then at interpreter exit ("terminate called without an active exception", ~1 run in 50, with
        # or without gradexp)
        gc.collect()
        dist.destroy_process_group()


def _train(rank, folder):
    torch.set_num_threads(1)
    model = nn.parallel.DistributedDataParallel(_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    shard = slice(rank * 4, rank * 4 + 4)
    sink = _ToFile(os.path.join(folder, f"rank{rank}.json"))
    with gradexp.Monitor(model, run_dir=os.path.join(folder, "run"), every=1, optimizers=[opt],
                         sinks=[sink]) as monitor:
        with monitor.step():
            loss = F.cross_entropy(model(x[shard]), y[shard])
            loss.backward()
            opt.step()
            monitor.record(loss=loss)


def _oracle():
    """The whole batch in one process, float64."""
    ref = _net().double()
    x, y = _batch()
    outs = []
    layers = [(str(i), m) for i, m in enumerate(ref) if isinstance(m, nn.Linear)]
    def keep(module, inputs, output):
        output.retain_grad()
        outs.append(output)

    for _, m in layers:
        m.register_forward_hook(keep)
    loss = F.cross_entropy(ref(x.double()), y)
    loss.backward()
    expected = {f"grad_norm/{n}": p.grad.norm().item() for n, p in ref.named_parameters()}
    expected["grad_norm/total"] = math.sqrt(sum(p.grad.pow(2).sum().item() for p in ref.parameters()))
    expected["loss/train"] = loss.item()
    for (name, _), out in zip(layers, outs):
        expected[f"act_grad_norm/{name}"] = out.grad.norm().item()
        expected[f"act_mean/{name}"] = out.mean().item()
        expected[f"act_std/{name}"] = out.std(correction=0).item()
    return expected


@pytest.mark.slow
def test_ddp_norms_are_global_and_only_rank_0_writes(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    expected = _oracle()
    for logged in ranks:
        for tag, value in expected.items():
            assert logged[tag] == pytest.approx(value, rel=1e-4), tag
    assert (tmp_path / "run" / "summary.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["rank0.json", "rank1.json", "run"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
