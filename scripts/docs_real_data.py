"""Regenerates the real-data comparisons of docs/real_data.md: runs each sweep with the gradexp CLI, writes its
report with `gradexp report SWEEP --dpi 60`, copies report.png to docs/img/, and prints the numbers the page quotes.

  he2016 at real size: ResNet-20/56 and their plain twins on CIFAR-10, when cifar10/cifar-10-binary.tar.gz is in
      data.root (--cifar-root, default gradexp's cache); the same four nets on the 8x8 digits otherwise (stand-in).
  text: an Elman RNN against an LSTM, character level, on a text file most Linux machines have.
Usage: python scripts/docs_real_data.py [--only he2016_real,text] [--cifar-root DIR] [--steps-scale 1.0]"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from gradexp.data.download import default_root

IMG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "img")
TEXT_FILES = ("/usr/share/common-licenses/GPL-3", "/usr/share/dict/words")
RESNETS = ["model.depth=3,9", "model.residual=false,true"]  # 20 and 56 layers, plain and residual


def he2016(cifar_root: str, scale: float) -> list[str]:
    if os.path.isfile(os.path.join(cifar_root, "cifar10", "cifar-10-binary.tar.gz")):
        return ["experiment=he2016_cifar", f"data.root={cifar_root}", f"train.steps={int(5000 * scale)}", *RESNETS]
    print("CIFAR-10 is not in", cifar_root, "- running the stand-in on the 8x8 digits")
    return ["model=resnet", "data=digits", "optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0.9",
            "train.batch_size=32", f"train.steps={int(200 * scale)}", "train.eval_every=50", *RESNETS]


def text(scale: float) -> list[str]:
    path = next((p for p in TEXT_FILES if os.path.isfile(p)), None)
    if path is None:
        sys.exit(f"none of {', '.join(TEXT_FILES)} exists here: pass a text file of your own to gradexp run")
    return ["model=rnn,lstm", "data=text", f"data.path={path}", "model.width=128", f"train.steps={int(300 * scale)}",
            "train.eval_every=50"]


def sweep(name: str, overrides: list[str], folder: str) -> None:
    out = os.path.join(folder, name)
    subprocess.run(["gradexp", "run", "-m", *overrides, f"hydra.sweep.dir={out}"], check=True)
    subprocess.run(["gradexp", "report", out, "--dpi", "60"], check=True, stdout=subprocess.DEVNULL)
    shutil.copy(os.path.join(out, "report.png"), os.path.join(IMG, f"{name}.png"))
    rows = json.loads(subprocess.run(["gradexp", "report", out, "--format", "json"], check=True,
                                     capture_output=True, text=True).stdout)
    print(json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="he2016_real,text")
    parser.add_argument("--cifar-root", default=default_root())
    parser.add_argument("--steps-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.only.split(","):
            sweep(name, he2016(args.cifar_root, args.steps_scale) if name == "he2016_real" else text(args.steps_scale),
                  folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
