"""Benchmark: `pcam slide --stride 96` against WSInfer (`wsinfer run`) on the same slide with the same model.

    python benchmarks/bench_wsinfer.py --wsinfer /tmp/wsinfer-venv/bin/wsinfer [--size 20000x16000] [--run bundled]

WSInfer is not one of our requirements and must not go into our environment: install it into a venv of its
own that sees ours through a .pth file, so that it uses our torch 2.14.1 unchanged (docs/slides.md, "WSInfer"):

    python -m venv /tmp/wsinfer-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/wsinfer-venv/lib/python3.11/site-packages/pcam.pth
    /tmp/wsinfer-venv/bin/pip install "torch==2.14.1" "torchvision==0.29.1" wsinfer "zarr<3" "tiffslide<3"

On a SYNTHETIC demo slide (`pcam demo-slide`), the run's model exported by `pcam export --format torchscript`
(its WSInfer folder: TorchScript + config.json, 96 px at 0.972 um/px), both tools on the CPU with the same
batch size and worker count. WSInfer tiles without overlap, so ours runs at stride 96 (the same work); then ours
also runs as its users run it, at stride 32 in its default mode (dense for a model that scans exactly, `pcamscan`;
the cascade for `pcamnet`), where every window overlaps eight others and the sharing pays: WSInfer has no such
mode, so that ratio is the windows/s a user gets at stride 32 against WSInfer's only rate. Each figure is
windows scored / wall seconds of the whole command (tissue mask, patching, model load, inference, outputs),
since that is what a user waits for; the two tissue masks differ, so the window counts differ too.
WSInfer's command downloads its model-zoo registry when it starts; offline, it is given an empty registry
(HF_HUB_OFFLINE=1 and a registry file in a throw-away HOME), which it then reads as cached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{cmd[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wsinfer", required=True, help="the wsinfer executable of its own venv")
    parser.add_argument("--size", default="20000x16000")
    parser.add_argument("--run", default="bundled")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if Path(args.run).exists():  # a run folder given relative to here: the commands run in a temporary folder
        args.run = str(Path(args.run).resolve())
    print(machine())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pcam = [sys.executable, "-m", "pcam_core"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([*pcam, "demo-slide", "--out", str(tmp / "slides"), "--size", args.size], env=env, check=True, capture_output=True)
        (tmp / "slides" / "truth.png").unlink()  # WSInfer takes every file of the folder for a slide
        for extra in ("truth.npy", "truth.json"):
            (tmp / "slides" / extra).rename(tmp / extra)
        subprocess.run([*pcam, "export", "--run", args.run, "--format", "torchscript", "--out", str(tmp / "model.pt")], env=env,
                       check=True, capture_output=True)
        home = tmp / "home"
        (home / ".wsinfer-zoo").mkdir(parents=True)
        (home / ".wsinfer-zoo" / "wsinfer-zoo-registry.json").write_text('{"models": {}}')
        wenv = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1"}
        wsinfer_s = timed([args.wsinfer, "run", "-i", str(tmp / "slides"), "-o", str(tmp / "wsinfer"), "-c",
                           str(tmp / "model-wsinfer" / "config.json"), "-p", str(tmp / "model-wsinfer" / "torchscript_model.pt"),
                           "-b", str(args.batch_size), "-n", str(args.workers)], wenv, tmp)
        wsinfer_n = sum(1 for _ in open(tmp / "wsinfer" / "model-outputs-csv" / "slide.csv")) - 1
        ours_s = timed([*pcam, "slide", "--run", args.run, "--input", str(tmp / "slides" / "slide.tif"), "--out", str(tmp / "ours"),
                        "--stride", "96", "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", "cpu", "--no-tta"], env, tmp)
        summary = json.loads((tmp / "ours" / "summary.json").read_text())
        ours_n = summary["windows_scored"]
        dense_s = timed([*pcam, "slide", "--run", args.run, "--input", str(tmp / "slides" / "slide.tif"), "--out", str(tmp / "ours32"),
                         "--stride", "32", "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", "cpu",
                         "--no-tta"], env, tmp)
        summary32 = json.loads((tmp / "ours32" / "summary.json").read_text())
        dense_n = summary32["windows_scored"]
    wsinfer_rate, ours_rate, dense_rate = wsinfer_n / wsinfer_s, ours_n / ours_s, dense_n / dense_s
    print(f"slide {args.size} (pcam demo-slide: 0.243 um/px, a level at PCam scale), model {args.run}, batch {args.batch_size}, "
          f"workers {args.workers}, CPU")
    print(f"WSInfer (wsinfer run):        {wsinfer_n:6d} patches in {wsinfer_s:6.1f} s = {wsinfer_rate:6.1f} windows/s")
    print(f"pcam slide --stride 96:       {ours_n:6d} windows in {ours_s:6.1f} s = {ours_rate:6.1f} windows/s "
          f"(analysis alone {summary['seconds']:.1f} s)")
    print(f"ratio pcam slide / WSInfer:   {ours_rate / wsinfer_rate:.2f}x windows/s, {wsinfer_s / ours_s:.2f}x wall time")
    print(f"pcam slide --stride 32 ({summary32['mode']}): {dense_n:6d} windows in {dense_s:6.1f} s = {dense_rate:6.1f} windows/s "
          f"(analysis alone {summary32['seconds']:.1f} s)" + (f", {summary32['cascade']['refined_share']:.1%} of cells refined"
                                                              if summary32.get("cascade") else ""))
    print(f"ratio at stride 32 / WSInfer: {dense_rate / wsinfer_rate:.2f}x windows/s")


if __name__ == "__main__":
    main()
