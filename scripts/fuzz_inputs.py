"""Feed `gradexp run` bad inputs across every key and group, as a hostile user would, and count what went wrong.

Each case runs in a fresh folder that holds things the user owns (an empty folder, a file, a finished run).
A case passes when gradexp refuses it with exit 2 and exactly one stderr line starting "gradexp:", prints no
traceback, and leaves every file and folder there exactly as it was (none created, removed or rewritten).

    python scripts/fuzz_inputs.py              # every case (README, Reliability)
    python scripts/fuzz_inputs.py --count 12   # an evenly spread subset (the slow test runs this)
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from gradexp.config.schema import _RANGES

BASE = ["train.steps=2", "model.width=8", "model.depth=2", "device=cpu"]  # if a case were accepted: a short run


def range_cases() -> list[list[str]]:
    """Per range-checked key, the first of a few candidates its own check rejects."""
    cases = []
    for key, ok, _ in _RANGES:
        bad = [v for v in (-1, 0, 2, math.inf) if not _passes(ok, v)]
        cases += [[f"{key}={_literal(v)}"] for v in bad[:1]]
    return cases


def _passes(ok, value) -> bool:
    try:
        return bool(ok(value))
    except TypeError:
        return False


def _literal(value) -> str:
    return "inf" if value == math.inf else str(value)


NAMED_CASES = [
    # unknown options of every group
    ["model=resnet9"], ["activation=swish"], ["init=he"], ["norm=groupnorm"], ["optimizer=lamb"], ["clip=norm_2.0"],
    ["data=imagenet"], ["schedule=linear"], ["+experiment=nope"], ["device=tpu"],
    # wrong types and unknown keys
    ["model.depth=abc"], ["optimizer.lr=fast"], ["train.steps=1.5"], ["model.dpth=3"], ["train.step=5"],
    ["+newkey=1"], ["++model.newkey=1"], ["+train.extra=1"], ["init.recurrent=he"], ["activation.name=swish"],
    # issue 11's list
    ["model._target_=nonexist.mod.MLP"], ["model._target_=os.system"], ["model.depth=${oc.env:HOME}"],
    ["seed=99999999999999999999"], ["data.n_val=100000"], ["train.batch_size=100000"], ["data.n_train=10"],
    ["train.stop_on_nonfinite=2"], ["model.residual=yes"], ["train.deterministic=3"],
    ["model.width=10000000"], ["model.depth=100000", "model.width=2000"],
    # intervals and combinations
    ["log.histograms_every=3"], ["log.bptt_every=-25"], ["model=rnn", "data=digits"], ["model=cnn", "data=blobs"],
    ["model=rnn", "model.residual=true"], ["norm=batchnorm", "train.batch_size=1"], ["data.seq_len=3"],
    ["model=rnn", "data=adding", "data.seq_len=1"], ["optimizer=adagrad", "optimizer.momentum=0.5"],
    # syntax
    ["model.depth=["], ["model.depth"], ["=3"], ["model.depth=1,2"],
    # folders the user owns
    ["hydra.run.dir=afile"], ["hydra.run.dir=afile/run"], ["hydra.run.dir=finished"], ["hydra.run.dir=keep/mydir",
                                                                                         "model.depth=0"],
    ["resume=nowhere"], ["resume=afile"], ["resume=keep/mydir"], ["resume=finished"],
    ["-m", "model.depth=abc,3"], ["-m", "resume=finished"], ["-m", "hydra.sweep.dir=keep/mydir", "model.depth=abc,3"],
    ["-m", "hydra.sweep.dir=finished", "optimizer.lr=0.1,0.2"],
]


def cases() -> list[list[str]]:
    found = range_cases() + NAMED_CASES
    import torch

    if not torch.cuda.is_available():
        found.append(["device=cuda"])
    return found


def user_files(root: str) -> None:
    """What the user owns in the folder a case runs in."""
    os.makedirs(os.path.join(root, "keep", "mydir"))
    with open(os.path.join(root, "afile"), "w") as f:
        f.write("the user's\n")
    os.makedirs(os.path.join(root, "finished", ".hydra"))
    with open(os.path.join(root, "finished", ".hydra", "overrides.yaml"), "w") as f:
        f.write("- train.steps=2\n")
    with open(os.path.join(root, "finished", "summary.json"), "w") as f:
        f.write('{"status": "completed", "steps": 2}\n')


def snapshot(root: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for folder, _, files in os.walk(root):
        out[folder] = b"<dir>"
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.join(folder, name)] = f.read()
    return out


def run_case(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as root:
        user_files(root)
        before = snapshot(root)
        sweep = args[:1] == ["-m"]
        argv = [*args[:1], *BASE, *args[1:]] if sweep else [*BASE, *args]
        result = subprocess.run([sys.executable, "-m", "gradexp", "run", *argv], cwd=root, capture_output=True,
                                text=True, timeout=600)
        changed = snapshot(root) != before
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return {
        "args": args,
        "traceback": "Traceback" in result.stderr,
        "accepted": result.returncode == 0,
        "changed": changed,
        "not_one_line": result.returncode != 2 or len(lines) != 1 or not lines[0].startswith("gradexp:"),
        "stderr": result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else [],
    }


def spread(items: list, count: int) -> list:
    """`count` items evenly spread over the list (every kind of case gets its share)."""
    if count >= len(items):
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else items[:1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=0, help="run this many cases (0: all)")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    options = parser.parse_args(argv)
    chosen = spread(cases(), options.count) if options.count else cases()
    with ThreadPoolExecutor(options.jobs) as pool:
        results = list(pool.map(run_case, chosen))
    for r in results:
        problems = [k for k in ("traceback", "accepted", "changed", "not_one_line") if r[k]]
        if problems:
            print(f"FAIL {' '.join(r['args'])}: {', '.join(problems)} {r['stderr']}")
    counts = {k: sum(r[k] for r in results) for k in ("traceback", "accepted", "changed", "not_one_line")}
    print(f"{len(results)} bad inputs: {counts['traceback']} tracebacks, {counts['accepted']} silent acceptances, "
          f"{counts['changed']} with folders created, removed or rewritten, {counts['not_one_line']} not a one-line "
          "refusal (exit 2)")
    return 1 if any(counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
