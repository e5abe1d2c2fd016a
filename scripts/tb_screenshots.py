"""Screenshots of TensorBoard's views of a 2x2 sweep, taken with headless Chromium (on demand, not in CI).

    python scripts/tb_screenshots.py --out tb_shots          # runs the sweep, starts TensorBoard, writes PNGs
    python scripts/tb_screenshots.py --sweep multirun/... --out tb_shots   # an existing sweep instead

Needs Debian's `chromium` (apt-get install chromium). The sweep: activation=sigmoid,relu x init=xavier_normal,
kaiming_normal, a 12-layer MLP, 150 steps; sigmoid vanishes, relu+kaiming stays level. One PNG per page:
scalars, custom scalars, images, hparams (and TensorBoard's time-series page)."""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

PAGES = ("scalars", "custom_scalars", "images", "hparams", "timeseries")
SWEEP = ["activation=sigmoid,relu", "init=xavier_normal,kaiming_normal", "model.depth=12", "model.width=32",
         "train.steps=150", "log.every=10", "train.eval_every=50"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the PNGs (created; existing files are kept)")
    parser.add_argument("--sweep", help="an existing sweep folder (default: run the 2x2 sweep into a temp folder)")
    parser.add_argument("--size", default="1600,1200", help="browser window, pixels (default 1600,1200)")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("tb_screenshots: chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sweep = args.sweep or run_sweep(os.path.join(tmp, "sweep"))
        port = free_port()
        board = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", sweep, "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_up(port)
            for page in PAGES:
                path = os.path.join(os.path.abspath(args.out), f"{page}.png")
                shoot(browser, f"http://localhost:{port}/#{page}", path, args.size, os.path.join(tmp, "profile"))
                print(path)
        finally:
            board.terminate()
            board.wait(timeout=30)
    return 0


def run_sweep(folder: str) -> str:
    cmd = [sys.executable, "-m", "gradexp", "run", "-m", *SWEEP, f"hydra.sweep.dir={folder}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"tb_screenshots: the sweep failed:\n{done.stderr[-2000:]}")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_until_up(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://localhost:{port}/data/runs", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"TensorBoard did not answer on port {port} within {timeout:.0f} s")


def shoot(browser: str, url: str, path: str, size: str, profile: str) -> None:
    """virtual-time-budget lets the page's scripts load the data and draw before the screenshot is taken."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--window-size={size}", "--virtual-time-budget=20000", f"--screenshot={path}", url]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)


if __name__ == "__main__":
    sys.exit(main())
