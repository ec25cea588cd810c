"""Shared benchmark helpers: timing, peak memory of a process tree, official-layout test files."""

from __future__ import annotations

import os
import platform
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


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


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
    """Samples the resident memory of this process plus all its descendants (loader workers)."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.peak_kb = 0
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
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in pids))
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
