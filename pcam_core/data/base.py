"""The map-style dataset both layouts share: items are dicts, and whole batches are read at once."""

from __future__ import annotations

import abc
import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import PATCH_SHAPE, UNLABELLED, patch_id

log = logging.getLogger(__name__)


class PatchDataset(Dataset, abc.ABC):
    """Base class of `PCamH5` and `KaggleFolder`.

    An item is a dict: ``image`` (uint8 tensor ``(3, 96, 96)`` in channels-last memory order, or
    whatever `transform` returns),
    ``label`` (0/1, or -1 when the split has no labels; passed through `target_transform`),
    ``id`` (the Kaggle id: SHA-1 of the pixels), ``index`` (position in this dataset) and ``meta``
    (a dict of per-patch metadata such as the slide id, empty when there is none).

    `__getitems__` reads a whole batch in one go; `make_loader` relies on it for speed.
    Subclasses implement `_read(indices) -> (B, 96, 96, 3) uint8` and set `self._labels`.
    """

    transform: Callable[[torch.Tensor], Any] | None
    target_transform: Callable[[int], Any] | None

    def __init__(self, transform: Callable | None = None, target_transform: Callable | None = None) -> None:
        self.transform = transform
        self.target_transform = target_transform
        self._labels: np.ndarray = np.empty(0, dtype=np.int64)
        self._cache: np.ndarray | None = None
        self.synthetic = False

    # -- what subclasses provide -------------------------------------------------------------
    @abc.abstractmethod
    def _read(self, indices: np.ndarray) -> np.ndarray:
        """Pixels of `indices` (already bounds-checked, non-negative) as ``(B, 96, 96, 3)`` uint8."""

    def _ids(self, indices: np.ndarray, pixels: np.ndarray) -> list[str]:
        return [patch_id(p) for p in pixels]

    def _meta(self, indices: np.ndarray) -> list[dict[str, Any]]:
        return [{} for _ in indices]

    def describe(self) -> str:
        return type(self).__name__

    # -- public API ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        """All labels as an int array (-1 where unknown), without reading any image."""
        return self._labels

    @property
    def has_labels(self) -> bool:
        return bool(len(self._labels)) and bool((self._labels != UNLABELLED).all())

    def read_pixels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Raw pixels of `indices` as a ``(B, 96, 96, 3)`` uint8 array, in the order given."""
        idx = self._check_indices(indices)
        if self._cache is not None:
            return self._cache[idx]
        return self._read(idx)

    def cache(self) -> PatchDataset:
        """Read every image into RAM once (``N * 27,648`` bytes); later reads never touch the disk."""
        if self._cache is None:
            n = len(self)
            out = np.empty((n, *PATCH_SHAPE), dtype=np.uint8)
            step = 4096
            for start in range(0, n, step):
                out[start : start + step] = self._read(np.arange(start, min(start + step, n)))
            self._cache = out
            log.info("cached %d patches of %s in memory (%.1f MB)", n, self.describe(), out.nbytes / 1e6)
        return self

    @property
    def cached(self) -> bool:
        return self.source._cache is not None

    @property
    def source(self) -> PatchDataset:
        """The dataset that owns the files (itself; the parent for a subset)."""
        return self

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.__getitems__([index])
        return {key: value[0] for key, value in batch.items()}

    def read_checked(self, indices: np.ndarray) -> tuple[np.ndarray, list[str | None], list[str | None]]:
        """Pixels plus, per index, an error message (or None) and a conversion note (or None). Datasets that
        can skip unreadable files (`ImageFiles(skip_bad=True)`) return zeros and a message for those, and say
        how a converted image (grayscale, RGBA, 16-bit) was made RGB; others raise."""
        return self.read_pixels(indices), [None] * len(indices), [None] * len(indices)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """A collated batch: ``image`` stacked into one tensor, ``label``/``index`` tensors, lists otherwise.
        ``error`` holds None per item, or why the item could not be read (skip mode only); ``note`` how an
        image was converted to 8-bit RGB, or None."""
        return self.fetch(indices)

    def fetch(
        self,
        indices: Sequence[int] | np.ndarray,
        *,
        ids: bool = True,
        batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """`__getitems__` with options for loaders: ``ids=False`` leaves ``id`` as None (hashing the
        pixels of every training patch is work no training step needs), and `batch_transform` maps the
        whole uint8 image batch at once (in the loader worker, so it runs in parallel)."""
        idx = self._check_indices(indices)
        pixels, errors, notes = self.read_checked(idx)
        # (B, 3, 96, 96) uint8 as a view of the (B, 96, 96, 3) pixels: channels-last memory, which the
        # models use anyway, so no copy is made here
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        labels = self._labels[idx]
        if self.transform is not None:
            images = torch.stack([torch.as_tensor(self.transform(img.contiguous())) for img in images])
        if batch_transform is not None:
            images = batch_transform(images)
        targets: Any = torch.from_numpy(labels.astype(np.int64))
        if self.target_transform is not None:
            targets = torch.as_tensor([self.target_transform(int(t)) for t in labels])
        return {
            "image": images,
            "label": targets,
            "id": self._ids(idx, pixels) if ids else None,
            "index": torch.from_numpy(idx.astype(np.int64)),
            "meta": self._meta(idx),
            "error": errors,
            "note": notes,
        }

    def subset(self, indices: Sequence[int] | np.ndarray, *, labels: np.ndarray | None = None) -> PatchSubset:
        return PatchSubset(self, indices, labels=labels)

    def _check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {self.describe()} with {n} patches")
        return np.where(idx < 0, idx + n, idx)


class PatchSubset(PatchDataset):
    """A view on some items of another `PatchDataset` (a validation split, a shard); reads go to the parent."""

    def __init__(self, parent: PatchDataset, indices: Sequence[int] | np.ndarray, *, labels: np.ndarray | None = None) -> None:
        """`labels` (one per index) replace the parent's for this view, as reviewed labels do; the
        parent and its files are untouched."""
        super().__init__(parent.transform, parent.target_transform)
        self.parent = parent
        self.parent_indices = np.asarray(indices, dtype=np.int64)
        self._labels = parent.labels[self.parent_indices] if labels is None else np.asarray(labels, dtype=np.int64)
        if len(self._labels) != len(self.parent_indices):
            raise ValueError(f"{len(self._labels)} labels for {len(self.parent_indices)} patches")
        self.synthetic = parent.synthetic

    def _read(self, indices: np.ndarray) -> np.ndarray:
        return self.parent.read_pixels(self.parent_indices[indices])

    def read_checked(self, indices: np.ndarray) -> tuple[np.ndarray, list[str | None], list[str | None]]:
        return self.parent.read_checked(self.parent_indices[indices])

    def _ids(self, indices: np.ndarray, pixels: np.ndarray) -> list[str]:
        return self.parent._ids(self.parent_indices[indices], pixels)

    def _meta(self, indices: np.ndarray) -> list[dict[str, Any]]:
        return self.parent._meta(self.parent_indices[indices])

    @property
    def source(self) -> PatchDataset:
        return self.parent.source

    def describe(self) -> str:
        return f"{self.parent.describe()} (subset of {len(self)})"
