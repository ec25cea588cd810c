"""Shared benchmark helpers: timing, peak memory of a process tree, official-layout test files, and a
dashboard workspace of realistic size with the pages' "rendered" markers."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np


def machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {cpus} CPU cores, {mem_gb:.0f} GiB RAM, {gpu}, torch {torch.__version__}"


def write_official_split(root: Path, split: str, n: int, *, seed: int = 0, block: int = 4096) -> None:
    """A split in the official layout (h5py defaults: `x` contiguous, uncompressed), written in blocks
    of random patches so that even 262,144 patches (7.2 GB) never sit in memory."""
    root.mkdir(parents=True, exist_ok=True)
    stem = root / f"camelyonpatch_level_2_split_{split}"
    rng = np.random.default_rng(seed)
    with h5py.File(f"{stem}_x.h5", "w") as f:
        x = f.create_dataset("x", shape=(n, 96, 96, 3), dtype=np.uint8)
        pool = rng.integers(0, 256, size=(block, 96, 96, 3), dtype=np.uint8)
        for start in range(0, n, block):
            stop = min(n, start + block)
            x[start:stop] = np.roll(pool, start // block, axis=0)[: stop - start]
    with h5py.File(f"{stem}_y.h5", "w") as f:
        f.create_dataset("y", data=rng.integers(0, 2, size=(n, 1, 1, 1), dtype=np.uint8))


def warm_page_cache(*paths: Path) -> None:
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB. PSS splits each shared page between the processes mapping it
    (the torch libraries forked workers share with their parent, shared-memory batches), so PSS sums
    over a process tree to what it really holds; RSS sums count those pages once per process."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(c) for c in text)
    except OSError:
        pass
    return out


class PeakTreeRSS:
    """Samples the memory of this process plus all its descendants (loader workers): the peak of the
    summed PSS (`peak_gb`, what the tree holds) and of the summed RSS (`peak_rss_gb`, an upper bound
    that counts shared pages once per process)."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.peak_kb = 0
        self.peak_rss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        root = os.getpid()
        while not self._stop.is_set():
            pids, frontier = [root], [root]
            while frontier:
                kids = [c for p in frontier for c in _children(p)]
                pids += kids
                frontier = kids
            samples = [_memory_kb(p) for p in pids]
            self.peak_rss_kb = max(self.peak_rss_kb, sum(r for r, _ in samples))
            self.peak_kb = max(self.peak_kb, sum(p for _, p in samples))
            time.sleep(self.every)

    def __enter__(self) -> PeakTreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return self.peak_kb / 2**20

    @property
    def peak_rss_gb(self) -> float:
        return self.peak_rss_kb / 2**20


# -- the dashboard under measurement (bench_dashboard.py, bench_dashboard_load.py) ------------------------

TESTS = Path(__file__).resolve().parents[1] / "tests"
LARGE_SOURCE = "pcam-large"
# page -> (its title in the sidebar, an element only that page shows once drawn). A page counts as
# rendered completely when that element is visible and helpers.PAGE_DRAWN holds (script finished, no
# spinner, no skeleton waiting for an element's code, every chart and image drawn).
DASHBOARD_PAGES = {
    "overview": ("Overview", lambda page: page.get_by_text("Class balance of the active dataset")),
    "dataset": ("Dataset", lambda page: page.get_by_text("The train split in numbers")),
    "train": ("Train", lambda page: page.get_by_text(re.compile(r"epoch \d+ of \d+ · "))),
    "runs": ("Runs and metrics", lambda page: page.get_by_text("False positives: normal patches called tumour")),
    "explain": ("Explain", lambda page: page.get_by_text("It does not say whether the call is right", exact=False)),
    "predict": ("Predict", lambda page: page.get_by_text("Drop one or many patches above")),
}


def page_url(base: str, page: str) -> str:
    """A page's address: the default page (Overview) is the app's root; /overview would open it behind a
    "Page not found" dialog."""
    return f"{base}/" if page == "overview" else f"{base}/{page}"


FULL_VALID = 32_768  # PCam's validation split


def dashboard_workspace(root: Path, *, patches: int = 262_144, runs: int = 20) -> Path:
    """A workspace as a busy lab has it, made once and reused: the SYNTHETIC demo data; an official-layout
    PCam train split of `patches` random patches (7.2 GB for 262,144) and a valid split of 32,768 (PCam's
    size), registered last so that it is the active dataset; and `runs` finished runs: one tiny real run
    (2 epochs of pcamnet on the demo data) copied with new run ids and creation times, the newest of them
    (the one the pages open on) judged on the full-size valid split: its model scored all 32,768 patches
    (`pcam evaluate`), as a run trained on PCam has validation predictions for all of them."""
    from pcam_core.data.demo import DemoSpec
    from pcam_core.fileio import atomic_write_json
    from pcam_core.runs import RunDir, new_run_id
    from pcam_core.workspace import Workspace

    workspace = Workspace(root)
    workspace.bootstrap(spec=DemoSpec(sizes=(("train", 512), ("valid", 256), ("test", 256))))
    large = workspace.data_root / LARGE_SOURCE
    x_file = large / "camelyonpatch_level_2_split_train_x.h5"
    if not x_file.exists() or x_file.stat().st_size < patches * 96 * 96 * 3:
        print(f"writing a {patches:,}-patch train split to {large} ...", flush=True)
        write_official_split(large, "train", patches)
    valid_x = large / "camelyonpatch_level_2_split_valid_x.h5"
    if not valid_x.exists() or valid_x.stat().st_size < FULL_VALID * 96 * 96 * 3:
        print(f"writing a {FULL_VALID:,}-patch valid split to {large} ...", flush=True)
        write_official_split(large, "valid", FULL_VALID, seed=1)
    if LARGE_SOURCE not in [s.name for s in workspace.sources()]:
        workspace.add_source(large, LARGE_SOURCE)
    existing = workspace.runs()
    if not existing:
        print("training one tiny run on the demo data ...", flush=True)
        seed = workspace.runs_root / new_run_id("seed")
        demo = workspace.source("demo").path
        subprocess.run([sys.executable, "-m", "pcam_core", "train", "--data", demo, "--out", str(seed), "--epochs", "2",
                        "--batch-size", "32", "--workers", "0"], check=True, capture_output=True,
                       env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        existing = workspace.runs()
    source = Path(existing[-1].path)
    created = RunDir(source).raw_status().get("created_at") or time.time()
    for i in range(len(existing), runs - 1):
        copy = RunDir(workspace.runs_root / new_run_id(f"copy-{i:02d}"))
        shutil.copytree(source, copy.path)
        atomic_write_json(copy.status_path, {**copy.raw_status(), "created_at": created + i})
    if len(existing) < runs:
        print(f"scoring the {FULL_VALID:,}-patch valid split for a full-size run ...", flush=True)
        full = RunDir(workspace.runs_root / new_run_id("full-valid"))
        shutil.copytree(source, full.path)
        config = json.loads(full.config_path.read_text())
        config["data"]["path"] = str(large)
        atomic_write_json(full.config_path, config)
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "valid.json"
            subprocess.run([sys.executable, "-m", "pcam_core", "evaluate", "--run", str(full.path), "--data", str(large),
                            "--split", "valid", "--no-tta", "--out", str(out)], check=True, capture_output=True,
                           env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
            shutil.copyfile(out.with_name("valid_predictions.csv"), full.path / "valid_predictions.csv")
        atomic_write_json(full.status_path, {**full.raw_status(), "created_at": created + runs, "synthetic_data": False})
    return workspace.root


def load_average() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
