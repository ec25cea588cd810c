"""Kaggle's "Histopathologic Cancer Detection" layout: `train/<id>.tif` + `train_labels.csv`, `test/<id>.tif`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .base import PatchDataset
from .common import IMAGE_EXTENSIONS, PATCH_SHAPE, UNLABELLED, DataError, decode_image, list_images

KAGGLE_SPLITS = ("train", "test")
LABELS_FILE = "train_labels.csv"


def is_kaggle_root(root: str | Path) -> bool:
    root = Path(root)
    return (root / "train").is_dir() or (root / "test").is_dir()


def read_labels_csv(path: str | Path) -> pd.DataFrame:
    """Read and check a Kaggle labels file (`id,label`); returns a frame with `id` (str) and `label` (int).

    Refuses, naming the CSV lines (line 1 is the header): missing columns, empty ids, duplicate ids,
    and labels other than 0 or 1 (missing ones included).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"labels file not found: {path} (expected columns id,label)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in ("id", "label") if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns) or 'none'}")
    ids = frame["id"].str.strip()
    labels = frame["label"].str.strip()
    line = np.arange(len(frame)) + 2  # CSV line numbers, header on line 1
    problems: list[str] = []
    empty = ids == ""
    if empty.any():
        problems.append(f"empty id on line(s) {_lines(line[empty.to_numpy()])}")
    dup = ids.duplicated(keep=False) & ~empty
    if dup.any():
        dups = ids[dup]
        problems.append(
            f"{dups.nunique()} duplicate id(s) on line(s) {_lines(line[dup.to_numpy()])} (e.g. {dups.iloc[0]})"
        )
    bad = ~labels.isin(["0", "1"])
    if bad.any():
        examples = sorted({repr(v) for v in labels[bad].head(5)})
        problems.append(f"label not 0 or 1 on line(s) {_lines(line[bad.to_numpy()])} (found {', '.join(examples)})")
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))
    return pd.DataFrame({"id": ids.to_numpy(), "label": labels.astype(int).to_numpy()})


def _lines(lines: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in lines[:limit])
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


class ImageFiles(PatchDataset):
    """Any list of image files (tif/png/jpg); the id is the file stem; labels optional.

    With `convert=True` grayscale/RGBA/16-bit images are converted to RGB (see `decode_image`);
    otherwise any image that is not 96x96 8-bit RGB raises a `DataError` naming the file when read.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int] | np.ndarray | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        convert: bool = False,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(transform, target_transform)
        self.paths = [Path(p) for p in paths]
        self.convert = convert
        self.skip_bad = skip_bad
        if labels is None:
            self._labels = np.full(len(self.paths), UNLABELLED, dtype=np.int64)
        else:
            self._labels = np.asarray(labels, dtype=np.int64)
            if len(self._labels) != len(self.paths):
                raise ValueError(f"{len(self._labels)} labels for {len(self.paths)} images")

    @property
    def ids(self) -> list[str]:
        return [p.stem for p in self.paths]

    def _read(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *PATCH_SHAPE), dtype=np.uint8)
        for k, i in enumerate(indices):
            out[k] = decode_image(self.paths[i], convert=self.convert).pixels
        return out

    def read_checked(self, indices: np.ndarray) -> tuple[np.ndarray, list[str | None], list[str | None]]:
        if not self.skip_bad or self._cache is not None:
            return super().read_checked(indices)
        out = np.zeros((len(indices), *PATCH_SHAPE), dtype=np.uint8)
        errors: list[str | None] = [None] * len(indices)
        notes: list[str | None] = [None] * len(indices)
        for k, i in enumerate(indices):
            try:
                decoded = decode_image(self.paths[i], convert=self.convert)
            except DataError as err:
                errors[k] = str(err)
            else:
                out[k] = decoded.pixels
                notes[k] = "; ".join(decoded.notes) or None
        return out, errors, notes

    def _ids(self, indices: np.ndarray, pixels: np.ndarray) -> list[str]:
        return [self.paths[i].stem for i in indices]

    def describe(self) -> str:
        return f"{type(self).__name__}({len(self.paths)} images)"


class KaggleFolder(ImageFiles):
    """The Kaggle layout. ``split="train"``: `train/<id>.tif` labelled by `train_labels.csv`;
    ``split="test"``: `test/<id>.tif`, unlabelled (label -1). The id is the file stem.

    Every id of the labels file must have an image and every image a label; otherwise a `DataError`
    lists the first offenders. `labels_csv` overrides the location of the labels file.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        labels_csv: str | Path | None = None,
        convert: bool = False,
        skip_bad: bool = False,
        cache: bool = False,
    ) -> None:
        if split not in KAGGLE_SPLITS:
            raise ValueError(f"unknown Kaggle split {split!r}; valid splits: {', '.join(KAGGLE_SPLITS)}")
        self.root = Path(root)
        self.split = split
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Kaggle split {split!r} not found: expected a folder {folder} of <id>.tif images"
                + (f" and {self.root / LABELS_FILE}" if split == "train" else "")
                + ". Download 'Histopathologic Cancer Detection' from Kaggle and unpack it there, "
                "or use PCam HDF5 files (`pcam download`) or synthetic demo data (`pcam demo-data`)."
            )
        files = {p.stem: p for p in list_images(folder)}
        if not files:
            raise DataError(f"{folder}: no images (.tif, .png, .jpg) in this folder")
        if split == "test":
            names = sorted(files)
            super().__init__([files[n] for n in names], None, transform, target_transform, convert=convert, skip_bad=skip_bad)
            return
        table = read_labels_csv(labels_csv or self.root / LABELS_FILE)
        ids = table["id"].tolist()
        no_image = [i for i in ids if i not in files]
        no_label = sorted(set(files) - set(ids))
        if no_image or no_label:
            parts = []
            if no_image:
                parts.append(f"{len(no_image)} labelled id(s) have no image in {folder} (e.g. {', '.join(no_image[:3])})")
            if no_label:
                parts.append(f"{len(no_label)} image(s) have no row in the labels file (e.g. {', '.join(no_label[:3])})")
            raise DataError(f"{labels_csv or self.root / LABELS_FILE}: " + "; ".join(parts))
        super().__init__([files[i] for i in ids], table["label"].to_numpy(), transform, target_transform, convert=convert, skip_bad=skip_bad)
        if cache:
            self.cache()

    def describe(self) -> str:
        return f"KaggleFolder({self.root}, split={self.split!r})"


def image_folder(folder: str | Path, **kwargs: Any) -> ImageFiles:
    """An unlabelled dataset over the images directly inside `folder`, or over one image file."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFiles([folder], **kwargs)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"{folder}: no images (.tif, .png, .jpg) in this folder")
    return ImageFiles(paths, **kwargs)
