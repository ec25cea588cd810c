"""Helpers the tests share: official-layout HDF5 files, bad images, running the CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REAL_DEV = REPO.parent / "shared" / "data" / "pcam-real-dev"


def write_official_h5(root: Path, split: str, images: np.ndarray, labels: np.ndarray | None, *, chunks=None,
                      compression=None, meta: pd.DataFrame | None = None) -> None:
    """Write a split the way the official files are laid out, with h5py directly (not our writer)."""
    root.mkdir(parents=True, exist_ok=True)
    stem = f"camelyonpatch_level_2_split_{split}"
    with h5py.File(root / f"{stem}_x.h5", "w") as f:
        f.create_dataset("x", data=images, chunks=chunks, compression=compression)
    if labels is not None:
        with h5py.File(root / f"{stem}_y.h5", "w") as f:
            f.create_dataset("y", data=labels.astype(np.uint8).reshape(-1, 1, 1, 1))
    if meta is not None:
        meta.to_csv(root / f"{stem}_meta.csv")


def random_patches(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pcam_core ARGS` as a user would; returns the completed process (never raises)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pcam_core", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd or REPO)


def tif_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="TIFF")
    return buf.getvalue()


def make_bad_images(folder: Path) -> dict[str, str]:
    """Write one file per kind of bad input into `folder`; returns {file name: the problem to expect}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    full = tif_bytes(good)
    cases = {
        "truncated.tif": (full[: len(full) // 2], "truncated or corrupt"),
        "corrupt.tif": (full[:200] + bytes(rng.integers(0, 256, 2000, dtype=np.uint8)), "truncated or corrupt"),
        "text.tif": (b"this is not an image, just text\n" * 20, "not an image"),
        "empty.tif": (b"", "not an image"),
        "small64.tif": (tif_bytes(good[:64, :64]), "64x64"),
        "big512.tif": (tif_bytes(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)), "512x512"),
        "gray.tif": (tif_bytes(good[..., 0], "L"), "mode"),
        "rgba.png": (_png(np.dstack([good, np.full((96, 96), 255, np.uint8)]), "RGBA"), "mode"),
        "sixteen.png": (_png16(), "mode"),
        "bomb.png": (_bomb(), "refused"),
    }
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    return {name: problem for name, (_, problem) in cases.items()}


def _png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _png16() -> bytes:
    arr = (np.arange(96 * 96, dtype=np.uint16).reshape(96, 96) * 7).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A PNG whose header claims 40000x40000 pixels (1.6 gigapixels): a 1x1 PNG with its IHDR rewritten."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", 40000, 40000)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)
