"""gradexp's instruments in a PyTorch Lightning fit (`pip install 'gradexp[lightning]'`): a small residual MLP
gradexp knows nothing about, with Lightning's own gradient accumulation and clipping. The run folder (TensorBoard
events, summary.json with the verdict) is written under the current directory, runs/monitor-<time>/ unless --run-dir
names one (a new or empty folder: gradexp never writes over a run); `gradexp report runs/` reads them.

    python examples/lightning_callback.py [--steps 60] [--run-dir runs/mine]
"""
import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from gradexp.integrations.lightning import GradexpCallback


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.tanh(self.linear(x))


class ResidualMLP(pl.LightningModule):
    def __init__(self, width: int = 32, blocks: int = 6, classes: int = 4):
        super().__init__()
        self.stem = nn.Linear(16, width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(blocks)])  # discovered: blocks.0 .. blocks.5
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--run-dir", default=None, help="a new or empty folder (default: runs/monitor-<time>)")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(512, 16), torch.randint(0, 4, (512,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    callback = GradexpCallback(run_dir=args.run_dir, every=10)
    trainer = pl.Trainer(callbacks=[callback], max_steps=args.steps, accumulate_grad_batches=2, gradient_clip_val=1.0,
                         accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(ResidualMLP(), loader)
    outcome = callback.monitor.outcome
    print(f"{callback.monitor.run_dir}: {outcome.status}, verdict {outcome.verdict['label']}")


if __name__ == "__main__":
    main()
