"""Opening a dataset from a path, and the batch loader the trainer and the predictor use."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, get_worker_info

from .base import PatchDataset
from .common import IMAGE_EXTENSIONS, PATCH_SHAPE, DataError, stratified_folds, stratified_split
from .h5 import PCamH5, available_splits, is_h5_root, split_name
from .kaggle import KAGGLE_SPLITS, KaggleFolder, ImageFiles, image_folder, is_kaggle_root
from .overrides import OverrideCounts

log = logging.getLogger(__name__)


def detect_format(path: str | Path) -> str:
    """"h5" for a folder of PCam HDF5 files (or one `..._x.h5` file), "kaggle" for a Kaggle layout,
    "images" for a plain folder of image files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"data path not found: {path}. Expected a folder with PCam HDF5 files "
            f"(camelyonpatch_level_2_split_*_x.h5) or a Kaggle folder (train/, train_labels.csv). "
            f"Create synthetic demo data with `pcam demo-data --out {path}` or get PCam with `pcam download --dest {path}`."
        )
    if path.is_file():
        if path.suffix == ".h5":
            return "h5"
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return "images"
        raise DataError(f"{path}: expected a folder, an image file ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                        "or a PCam `..._x.h5` file")
    if is_h5_root(path):
        return "h5"
    if is_kaggle_root(path):
        return "kaggle"
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir() if p.is_file()):
        return "images"
    raise DataError(
        f"{path}: neither PCam HDF5 files (camelyonpatch_level_2_split_{{train,valid,test}}_x.h5) nor a Kaggle "
        f"layout (train/ with train_labels.csv, or test/) nor a folder of images was found here"
    )


def h5_file_split(path: Path) -> tuple[Path, str]:
    """(root, split) of a path to one `camelyonpatch_level_2_split_<split>_x.h5` (or `_y.h5`) file."""
    name = path.name
    prefix = "camelyonpatch_level_2_split_"
    for suffix in ("_x.h5", "_y.h5"):
        if name.startswith(prefix) and name.endswith(suffix):
            return path.parent, split_name(name[len(prefix) : -len(suffix)])
    raise DataError(f"{path}: not a PCam split file (expected camelyonpatch_level_2_split_<split>_x.h5)")


def open_dataset(
    path: str | Path,
    split: str | None = None,
    *,
    format: str = "auto",
    convert: bool = False,
    skip_bad: bool = False,
    cache: bool = False,
) -> PatchDataset:
    """Open one split of whatever layout `path` holds.

    `split` defaults to "train" for a Kaggle or HDF5 folder; a path to a single `..._x.h5` file names its
    own split; a plain folder of images has no splits. For image files, `convert` converts grayscale,
    RGBA and 16-bit images to RGB and `skip_bad` turns unreadable ones into per-item errors (the batch's
    ``error`` list) instead of exceptions.
    """
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "h5":
        if path.is_file():
            root, file_split = h5_file_split(path)
            return PCamH5(root, split or file_split, cache=cache)
        return PCamH5(path, split or "train", cache=cache)
    if fmt == "kaggle":
        if not is_kaggle_root(path):
            return image_folder(path, convert=convert, skip_bad=skip_bad)
        return KaggleFolder(path, split or "train", convert=convert, skip_bad=skip_bad, cache=cache)
    if fmt == "images":
        ds = image_folder(path, convert=convert, skip_bad=skip_bad)
        return ds.cache() if cache else ds
    raise ValueError(f"unknown data format {fmt!r}; valid: auto, h5, kaggle, images")


@dataclass
class TrainValid:
    train: PatchDataset
    valid: PatchDataset
    description: str
    synthetic: bool
    overrides: OverrideCounts | None = None  # what reviewed labels did to `train` (`pcam_core.data.overrides`)


def train_valid_datasets(path: str | Path, *, format: str = "auto", valid_frac: float = 0.1, seed: int = 0,
                         folds: int = 0, fold: int = 0) -> TrainValid:
    """The training and validation sets of a data folder.

    HDF5 data uses its own `valid` split. Kaggle data, which has none, gets a seeded split stratified by
    label (`valid_frac` of the labelled images); the same seed always gives the same split. With `folds`
    (K >= 2, cross-validation) the training pool (`cv_pool`) is cut into K folds instead (`fold_split`):
    fold `fold` is validated on, the other K - 1 trained on.
    """
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if folds:
        pool = cv_pool(path, fmt)
        assignment = fold_split(pool, folds, seed)
        train_idx, valid_idx = np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)
        desc = (f"{pool.describe()}: fold {fold + 1} of {folds} (seed {seed}, stratified by label"
                f"{', grouped by slide' if slide_ids(pool) is not None else ''}): train {len(train_idx)}, valid {len(valid_idx)}")
        return TrainValid(pool.subset(train_idx), pool.subset(valid_idx), desc, pool.synthetic)
    if fmt == "h5":
        if path.is_file():
            path = h5_file_split(path)[0]
        train = PCamH5(path, "train")
        if "valid" in available_splits(path):
            valid = PCamH5(path, "valid")
            return TrainValid(train, valid, f"PCam HDF5 at {path}: train {len(train)}, valid {len(valid)}", train.synthetic)
        return _split(train, valid_frac, seed, f"PCam HDF5 at {path} (no valid split)")
    if fmt == "kaggle":
        return _split(KaggleFolder(path, "train"), valid_frac, seed, f"Kaggle folder {path}")
    raise DataError(f"{path}: training needs labels (a PCam HDF5 folder or a Kaggle folder with train_labels.csv)")


def cv_pool(path: str | Path, fmt: str = "auto") -> PatchDataset:
    """The labelled patches cross-validation splits into folds: the `train` split of an HDF5 folder (its own
    `valid` split is left out, as its `test`), the train folder of a Kaggle folder."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "h5":
        pool: PatchDataset = PCamH5(h5_file_split(path)[0] if path.is_file() else path, "train")
    elif fmt == "kaggle":
        pool = KaggleFolder(path, "train")
    else:
        raise DataError(f"{path}: cross-validation needs labels (a PCam HDF5 folder or a Kaggle folder with train_labels.csv)")
    if not pool.has_labels:
        raise DataError(f"{pool.describe()}: has no labels to cross-validate on")
    return pool


def slide_ids(dataset: PatchDataset) -> np.ndarray | None:
    """The slide id of each patch (the `wsi` column of the official HDF5 `_meta.csv`), or None when the data
    has none (the Kaggle layout never has)."""
    meta = getattr(dataset, "metadata", None)
    if meta is None or "wsi" not in meta.columns:
        return None
    return meta["wsi"].astype(str).to_numpy()


def fold_split(pool: PatchDataset, folds: int, seed: int) -> np.ndarray:
    """The fold of each patch of `pool`: stratified by label, grouped by slide where the data names slides."""
    return stratified_folds(pool.labels, folds, seed, slide_ids(pool))


def run_datasets(config: Any) -> TrainValid:
    """The training and validation sets of a run with `config` (its ExperimentConfig), exactly as it trained."""
    d = config.data
    return train_valid_datasets(d.path, format=d.format, valid_frac=d.valid_frac, seed=d.split_seed, folds=d.folds, fold=d.fold)


def open_split(path: str | Path, split: str, *, valid_frac: float = 0.1, seed: int = 0) -> PatchDataset:
    """One split of a data folder, as evaluation and explanation name it. "valid" (or "val") of a
    Kaggle folder, which has no validation split of its own, is the seeded stratified split of its
    train folder that `train_valid_datasets` makes: with a run's `valid_frac` and split seed, exactly
    the patches that run validated on. Any other split is `open_dataset`'s."""
    path = Path(path)
    if detect_format(path) == "kaggle" and split not in (*KAGGLE_SPLITS, "valid", "val"):
        raise ValueError(f"unknown split {split!r} of the Kaggle folder {path}; valid splits: train, valid (the run's own "
                         f"validation split of train/), test")
    if split in ("valid", "val") and detect_format(path) == "kaggle":
        return train_valid_datasets(path, format="kaggle", valid_frac=valid_frac, seed=seed).valid
    return open_dataset(path, split)


def dataset_for_split(path: str | Path, split: str, config: Any = None, *, out_of_fold: bool = False) -> PatchDataset:
    """One split of a data folder. "valid" on data without its own validation split (Kaggle) is the
    seeded stratified split a run with `config` (its ExperimentConfig) trained against, rebuilt exactly
    (`open_split`); a fold's held-out patches for a fold of a cross-validation; and, with `out_of_fold` (the
    cross-validation's own folder, whose "valid" predictions are out-of-fold, one per patch of its pool), the
    whole pool (`cv_pool`), in the order of their `index`."""
    if config is None:
        return open_split(path, split)
    same_data = Path(path).resolve() == Path(config.data.path).resolve()
    if config.data.folds and split in ("valid", "val") and same_data:
        if out_of_fold:
            return cv_pool(path, config.data.format)
        return run_datasets(config).valid  # a cross-validation fold's held-out patches
    return open_split(path, split, valid_frac=config.data.valid_frac, seed=config.data.split_seed)


def _split(full: PatchDataset, valid_frac: float, seed: int, what: str) -> TrainValid:
    if not full.has_labels:
        raise DataError(f"{full.describe()}: has no labels to train on")
    train_idx, valid_idx = stratified_split(full.labels, [valid_frac], seed)
    desc = f"{what}: seeded stratified split (seed {seed}) into train {len(train_idx)}, valid {len(valid_idx)}"
    return TrainValid(full.subset(train_idx), full.subset(valid_idx), desc, full.synthetic)


def fits_in_memory(dataset: PatchDataset, max_gb: float) -> bool:
    return len(dataset) * int(np.prod(PATCH_SHAPE)) <= max_gb * 1e9


def default_workers(dataset: PatchDataset) -> int:
    """Worker processes for a loader: none when the data is in RAM (IPC would cost more than it saves)."""
    if dataset.cached:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus - 1))


def _batch_as_is(batch: Any) -> Any:
    """The dataset's `__getitems__` already returns a collated batch."""
    return batch


_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def _fixed_mmap_threshold(_worker_id: int) -> None:
    """Worker start-up: return large freed blocks to the OS at once.

    A worker allocates and frees a batch-sized block (a float batch is 28 MB at 256 patches) per batch;
    glibc's malloc raises its mmap threshold after the first such free and then serves these blocks
    from a heap that fragments, so a worker's memory grows by gigabytes over a long stream. A fixed
    1 MiB threshold keeps it at its start-up size.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


class _LoaderView(Dataset):
    """What a loader's workers fetch through: the dataset's batches with the loader's options."""

    def __init__(self, dataset: PatchDataset, *, ids: bool, batch_transform: Callable | None) -> None:
        self.dataset = dataset
        self.ids = ids
        self.batch_transform = batch_transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        with torch.no_grad():
            batch = self.dataset.fetch(indices, ids=self.ids)
            if self.batch_transform is not None:
                batch["image"] = self._transform(batch["image"])
        return batch

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        """In a worker process, a transform that can write into a given tensor (`Normalize`) writes
        straight into shared memory: the batch then travels to the main process without the copy into
        shared memory that torch makes of every other tensor (28 MB per float batch of 256 patches;
        the copy took longer than the normalisation itself)."""
        if getattr(self.batch_transform, "accepts_out", False) and get_worker_info() is not None:
            out = _shared_float_like(images)
            if out is not None:
                return self.batch_transform(images, out=out)
        return self.batch_transform(images)


def _shared_float_like(images: torch.Tensor) -> torch.Tensor | None:
    """An empty float32 tensor in shared memory with the shape and strides of `images` (None when this
    torch build cannot allocate one directly)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:
        return None
    storage = new_shared(images.numel() * 4)
    strides = images.stride() if images.is_contiguous(memory_format=torch.channels_last) or images.is_contiguous() else None
    if strides is None:
        return torch.empty(0, dtype=torch.float32).set_(storage, 0, images.shape)
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, images.shape, strides)


class SkipBatchesSampler(Sampler[int]):
    """Yields the indices of `sampler` after skipping the first `skip` of them (resuming mid-epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


def make_loader(
    dataset: PatchDataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int = -1,
    drop_last: bool = False,
    seed: int = 0,
    sampler: Sampler[int] | None = None,
    ids: bool = False,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DataLoader:
    """The loader the trainer and the predictor use.

    Each batch is read in one call to the dataset's `__getitems__` (one sorted pass over the file for
    HDF5) and arrives as a dict with ``image`` a uint8 tensor ``(B, 3, 96, 96)``; conversion to float,
    normalisation and augmentation then run on whole batches on the training device (see
    `pcam_core.transforms`), not image by image in the workers. `num_workers=-1` picks a count from
    the machine (0 for a dataset cached in memory).

    ``id`` is None unless ``ids=True``: a patch id is the SHA-1 of the image's pixels for HDF5 data,
    which halves the loader's speed and which training never reads; ask for ids where they are
    written (predictions, explanations). `batch_transform` runs on each uint8 image batch inside the
    workers, e.g. ``eval_preset()`` for normalised float batches made in parallel on a CPU-only machine.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    workers = default_workers(dataset) if num_workers < 0 else num_workers
    # A private generator: creating the iterator must not draw from the global RNG, which drives
    # augmentation and whose state a resumed run restores exactly.
    generator = torch.Generator().manual_seed(seed)
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    view = _LoaderView(dataset, ids=ids, batch_transform=batch_transform) if (not ids or batch_transform) else dataset
    return DataLoader(
        view,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=_batch_as_is,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        multiprocessing_context="fork" if workers > 0 and os.name == "posix" else None,
        worker_init_fn=_fixed_mmap_threshold if workers > 0 and sys.platform.startswith("linux") else None,
    )


__all__ = [
    "ImageFiles",
    "KaggleFolder",
    "PCamH5",
    "SkipBatchesSampler",
    "TrainValid",
    "default_workers",
    "detect_format",
    "fits_in_memory",
    "make_loader",
    "open_dataset",
    "open_split",
    "train_valid_datasets",
]
