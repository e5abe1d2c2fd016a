"""gradexp.Monitor on your own model and training loop: a small residual CNN gradexp knows nothing about, trained
with plain PyTorch on random images. Each run writes a new folder (TensorBoard events, summary.json with the verdict)
under the current directory, runs/monitor-<time>/ unless --run-dir names one; `gradexp report runs/` reads them
like any `gradexp run`'s.

    python examples/monitor_loop.py [--steps 60] [--run-dir runs/mine]
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

import gradexp


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x))


class ResNet(nn.Module):
    def __init__(self, channels: int = 8, blocks: int = 4, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(channels) for _ in range(blocks)])  # discovered: blocks.0 .. blocks.3
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.stem(x))).mean(dim=(2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--run-dir", default=None, help="a new or empty folder (default: runs/monitor-<time>)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))
    with gradexp.Monitor(model, run_dir=args.run_dir, every=10, optimizers=[opt], steps=args.steps) as monitor:
        for step in range(args.steps):
            batch = torch.randint(0, len(x), (32,))
            with monitor.step():
                loss = F.cross_entropy(model(x[batch]), y[batch])
                loss.backward()
                monitor.clip_grad_norm_(model.parameters(), max_norm=1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                monitor.record(loss=loss)
    print(f"{monitor.run_dir}: {monitor.outcome.status}, verdict {monitor.outcome.verdict['label']}")


if __name__ == "__main__":
    main()
