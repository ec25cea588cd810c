"""Data: the PCam HDF5 and Kaggle layouts, synthetic demo data, download, conversion and checks."""

from .base import PatchDataset, PatchSubset
from .common import CENTER_SIZE, CENTER_START, PATCH_SIZE, DataError, DecodedImage, decode_image, patch_id
from .h5 import SPLITS, PCamH5, available_splits, split_files, write_split
from .kaggle import ImageFiles, KaggleFolder, image_folder, read_labels_csv
from .loader import TrainValid, detect_format, make_loader, open_dataset, open_split, train_valid_datasets

__all__ = [
    "CENTER_SIZE",
    "CENTER_START",
    "PATCH_SIZE",
    "SPLITS",
    "DataError",
    "DecodedImage",
    "ImageFiles",
    "KaggleFolder",
    "PCamH5",
    "PatchDataset",
    "PatchSubset",
    "TrainValid",
    "available_splits",
    "decode_image",
    "detect_format",
    "image_folder",
    "make_loader",
    "open_dataset",
    "open_split",
    "patch_id",
    "read_labels_csv",
    "split_files",
    "train_valid_datasets",
    "write_split",
]
