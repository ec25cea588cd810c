"""The official PCam HDF5 layout: `camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5` (+ `_meta.csv`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import pandas as pd

from .base import PatchDataset
from .common import PATCH_SHAPE, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"val": "valid", "validation": "valid"}
# Patches per split in the released dataset (Zenodo record 2546921).
OFFICIAL_SIZES = {"train": 262_144, "valid": 32_768, "test": 32_768}
_PATCH_BYTES = int(np.prod(PATCH_SHAPE))


def split_name(split: str) -> str:
    """Canonical split name; accepts torchvision's "val"."""
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)} (or 'val')")
    return name


def split_files(root: str | Path, split: str) -> dict[str, Path]:
    """Paths of the image, label and metadata files of one split."""
    root, split = Path(root), split_name(split)
    stem = f"camelyonpatch_level_2_split_{split}"
    return {"x": root / f"{stem}_x.h5", "y": root / f"{stem}_y.h5", "meta": root / f"{stem}_meta.csv"}


def available_splits(root: str | Path) -> list[str]:
    """The splits whose image file exists under `root`."""
    return [s for s in SPLITS if split_files(root, s)["x"].exists()]


def is_h5_root(root: str | Path) -> bool:
    return Path(root).is_dir() and bool(available_splits(root))


class PCamH5(PatchDataset):
    """A map-style dataset over one split of the PCam HDF5 files.

    ``x`` must be uint8 ``(N, 96, 96, 3)``; ``y`` ``(N, 1, 1, 1)`` (or ``(N,)``) of 0/1. The label file
    may be absent for an unlabelled test set (labels are then -1). When ``..._meta.csv`` exists its
    columns (slide id ``wsi``, ``coord_y``, ``coord_x``, ...) are exposed per item in ``meta``.

    The file is opened once per process (each DataLoader worker gets its own handle after fork), never
    once per item. When the image dataset is stored contiguously without compression, as the official
    files and everything `pcam convert` / `pcam demo-data` write are, images are read straight from the
    file with `os.preadv` at their byte offsets, which is several times faster than h5py's own fancy
    indexing; chunked or compressed files fall back to h5py reads.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        cache: bool = False,
    ) -> None:
        super().__init__(transform, target_transform)
        self.root = Path(root)
        self.split = split_name(split)
        self.files = split_files(self.root, self.split)
        self._check_exists()
        self._state: dict[str, Any] = {}
        with h5py.File(self.files["x"], "r") as fx:
            if "x" not in fx:
                raise DataError(f"{self.files['x']}: no dataset named 'x' (found: {', '.join(fx.keys()) or 'nothing'})")
            dx = fx["x"]
            if dx.dtype != np.uint8 or dx.ndim != 4 or tuple(dx.shape[1:]) != PATCH_SHAPE:
                raise DataError(
                    f"{self.files['x']}: dataset 'x' is {dx.dtype} with shape {dx.shape}; "
                    f"expected uint8 with shape (N, 96, 96, 3)"
                )
            n = int(dx.shape[0])
            offset = dx.id.get_offset()
            self._offset = int(offset) if (dx.chunks is None and dx.compression is None and offset is not None) else None
            self.synthetic = bool(fx.attrs.get("synthetic", False))
            self.attrs = {k: _plain(v) for k, v in fx.attrs.items()}
        self._labels = self._load_labels(n)
        self.metadata = self._load_meta(n)
        if cache:
            self.cache()

    def _check_exists(self) -> None:
        if not self.files["x"].exists():
            present = ", ".join(available_splits(self.root)) if self.root.is_dir() else ""
            raise FileNotFoundError(
                f"PCam split {self.split!r} not found: expected {self.files['x'].name} and {self.files['y'].name} "
                f"in {self.root}" + (f" (splits present: {present})" if present else "")
                + f". Get the real data with `pcam download --dest {self.root}`, "
                f"or synthetic demo data with `pcam demo-data --out {self.root}`."
            )

    def _load_labels(self, n: int) -> np.ndarray:
        path = self.files["y"]
        if not path.exists():
            log.info("%s has no label file; labels are unknown (-1)", self.describe())
            return np.full(n, -1, dtype=np.int64)
        with h5py.File(path, "r") as fy:
            if "y" not in fy:
                raise DataError(f"{path}: no dataset named 'y' (found: {', '.join(fy.keys()) or 'nothing'})")
            y = fy["y"][()]
        if y.ndim not in (1, 4) or y.shape[0] != n or (y.ndim == 4 and y.shape[1:] != (1, 1, 1)):
            raise DataError(f"{path}: labels have shape {y.shape}; expected ({n}, 1, 1, 1) to match {n} images")
        y = y.reshape(n)
        bad = np.flatnonzero((y != 0) & (y != 1))
        if bad.size:
            raise DataError(f"{path}: labels must be 0 or 1; rows {_rows(bad)} hold {sorted(set(y[bad].tolist()))[:5]}")
        return y.astype(np.int64)

    def _load_meta(self, n: int) -> pd.DataFrame | None:
        path = self.files["meta"]
        if not path.exists():
            return None
        try:
            meta = pd.read_csv(path, index_col=0)
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
            raise DataError(f"{path}: cannot read the metadata CSV ({err})") from err
        if len(meta) != n:
            raise DataError(f"{path}: {len(meta)} metadata rows for {n} images")
        return meta.reset_index(drop=True)

    def describe(self) -> str:
        return f"PCamH5({self.root}, split={self.split!r})"

    # -- reading -----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_state"] = {}  # open handles never travel to worker processes; each opens its own
        return state

    def _handles(self) -> dict[str, Any]:
        # One handle per process: a DataLoader worker (forked or spawned) opens its own on first use.
        if self._state.get("pid") != os.getpid():
            self._state = {"pid": os.getpid()}
            if self._offset is not None:
                self._state["fd"] = os.open(self.files["x"], os.O_RDONLY)
            else:
                self._state["h5"] = h5py.File(self.files["x"], "r")
        return self._state

    def _read(self, indices: np.ndarray) -> np.ndarray:
        handles = self._handles()
        out = np.empty((len(indices), *PATCH_SHAPE), dtype=np.uint8)
        if not len(indices):
            return out
        order = np.argsort(indices, kind="stable")
        sorted_idx = indices[order]
        if "fd" in handles:
            self._pread_runs(handles["fd"], sorted_idx, order, out)
        else:
            dx = handles["h5"]["x"]
            for k, i in zip(order, sorted_idx):
                dx.read_direct(out, np.s_[i : i + 1], np.s_[k : k + 1])
        return out

    def _pread_runs(self, fd: int, sorted_idx: np.ndarray, order: np.ndarray, out: np.ndarray) -> None:
        """Read sorted indices, coalescing consecutive ones into one read each."""
        start = 0
        n = len(sorted_idx)
        while start < n:
            stop = start + 1
            while stop < n and sorted_idx[stop] == sorted_idx[stop - 1] + 1:
                stop += 1
            first = int(sorted_idx[start])
            targets = order[start:stop]
            if np.all(np.diff(targets) == 1):  # destination is contiguous too: read in place
                buf = memoryview(out[targets[0] : targets[0] + (stop - start)]).cast("B")
                self._pread_exact(fd, buf, self._offset + first * _PATCH_BYTES)
            else:
                tmp = np.empty((stop - start, *PATCH_SHAPE), dtype=np.uint8)
                self._pread_exact(fd, memoryview(tmp).cast("B"), self._offset + first * _PATCH_BYTES)
                out[targets] = tmp
            start = stop

    def _pread_exact(self, fd: int, buf: memoryview, offset: int) -> None:
        got = 0
        while got < len(buf):
            n = os.preadv(fd, [buf[got:]], offset + got)
            if n == 0:
                raise DataError(f"{self.files['x']}: file is truncated (read past its end at byte {offset + got})")
            got += n

    def _meta(self, indices: np.ndarray) -> list[dict[str, Any]]:
        if self.metadata is None:
            return [{} for _ in indices]
        rows = self.metadata.iloc[indices].to_dict("records")
        return [{k: _plain(v) for k, v in row.items()} for row in rows]

    def __del__(self) -> None:
        state = getattr(self, "_state", {})
        if state.get("pid") == os.getpid():
            if "fd" in state:
                os.close(state["fd"])
            if "h5" in state:
                state["h5"].close()


def _plain(value: Any) -> Any:
    """numpy scalars and bytes to plain Python values (JSON- and collate-friendly)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "item"):
        return value.item()
    return value


def _rows(bad: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in bad[:limit])
    return shown + (f" and {bad.size - limit} more" if bad.size > limit else "")


class SplitWriter:
    """Write one split of the official layout in pieces (bounded memory), then publish it atomically.

    Files are written under temporary names and renamed into place by `commit()`; if anything fails
    before that, `abort()` (or leaving the `with` block by an exception) removes them and nothing half
    written is ever visible. ``x`` is stored contiguous and uncompressed (the fast read path).
    """

    def __init__(self, root: str | Path, split: str, n: int, *, labelled: bool = True, attrs: dict[str, Any] | None = None) -> None:
        self.files = split_files(root, split)
        self.files["x"].parent.mkdir(parents=True, exist_ok=True)
        self.n = n
        self._tmp = {k: p.with_name(p.name + ".tmp") for k, p in self.files.items()}
        self._fx = h5py.File(self._tmp["x"], "w")
        self._x = self._fx.create_dataset("x", shape=(n, *PATCH_SHAPE), dtype=np.uint8)
        self._fx.attrs.update(attrs or {})
        self._labels = np.zeros(n, dtype=np.uint8) if labelled else None
        self._attrs = attrs or {}
        self._meta: pd.DataFrame | None = None

    def write(self, start: int, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[1:] != PATCH_SHAPE:
            raise ValueError(f"images must have shape (N, 96, 96, 3); got {images.shape}")
        self._x[start : start + len(images)] = images
        if self._labels is not None and labels is not None:
            self._labels[start : start + len(images)] = labels

    def set_meta(self, meta: pd.DataFrame) -> None:
        if len(meta) != self.n:
            raise ValueError(f"{len(meta)} metadata rows for {self.n} images")
        self._meta = meta

    def commit(self) -> dict[str, Path]:
        self._fx.close()
        written = ["x"]
        if self._labels is not None:
            with h5py.File(self._tmp["y"], "w") as fy:
                fy.create_dataset("y", data=self._labels.reshape(-1, 1, 1, 1))
                fy.attrs.update(self._attrs)
            written.append("y")
        if self._meta is not None:
            self._meta.to_csv(self._tmp["meta"])
            written.append("meta")
        for key in written:
            os.replace(self._tmp[key], self.files[key])
        return self.files

    def abort(self) -> None:
        self._fx.close()
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_split(
    root: str | Path,
    split: str,
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    meta: pd.DataFrame | None = None,
    attrs: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write a whole split held in memory in the official layout, atomically (see `SplitWriter`)."""
    images = np.asarray(images, dtype=np.uint8)
    with SplitWriter(root, split, len(images), labelled=labels is not None, attrs=attrs) as writer:
        writer.write(0, images, None if labels is None else np.asarray(labels))
        if meta is not None:
            writer.set_meta(meta)
        return writer.commit()
