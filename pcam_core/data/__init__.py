"""Data: the PCam HDF5 and Kaggle layouts, synthetic demo data, download, conversion and checks.

The names below are imported on first use (PEP 562): the readers need torch, and a module that only
wants `data.common` (the dashboard's services) should not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    ".base": ("PatchDataset", "PatchSubset"),
    ".common": ("CENTER_SIZE", "CENTER_START", "PATCH_SIZE", "DataError", "DecodedImage", "decode_image", "patch_id"),
    ".h5": ("SPLITS", "PCamH5", "available_splits", "split_files", "write_split"),
    ".kaggle": ("ImageFiles", "KaggleFolder", "image_folder", "read_labels_csv"),
    ".overrides": ("OverrideCounts", "apply_overrides", "read_overrides"),
    ".loader": ("TrainValid", "detect_format", "make_loader", "open_dataset", "open_split", "train_valid_datasets"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:
    from .base import PatchDataset, PatchSubset
    from .common import CENTER_SIZE, CENTER_START, PATCH_SIZE, DataError, DecodedImage, decode_image, patch_id
    from .h5 import SPLITS, PCamH5, available_splits, split_files, write_split
    from .kaggle import ImageFiles, KaggleFolder, image_folder, read_labels_csv
    from .overrides import OverrideCounts, apply_overrides, read_overrides
    from .loader import TrainValid, detect_format, make_loader, open_dataset, open_split, train_valid_datasets


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


__all__ = sorted(_MODULE_OF)
