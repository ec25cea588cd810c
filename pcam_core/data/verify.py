"""`pcam verify`: check every image of a Kaggle folder, an image folder or an HDF5 split, file by file."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py

from .common import PATCH_SHAPE, DataError, decode_image, list_images, patch_id
from .h5 import PCamH5, available_splits, split_files
from .kaggle import LABELS_FILE, read_labels_csv
from .loader import detect_format, h5_file_split

_SHA1 = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class VerifyReport:
    """What was checked and every problem found: (file or file:row, what is wrong)."""

    target: str
    checked: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str | Path, what: str) -> None:
        self.problems.append((str(where), what))


def verify_images(paths: list[Path], report: VerifyReport, *, require_ids: bool, progress: Callable[[int, int], None] | None = None) -> None:
    """Decode each image strictly (96x96 8-bit RGB) and compare a file stem that is a SHA-1 id with the
    SHA-1 of the pixels (a mismatch means the file was altered or misnamed). With `require_ids` (the
    Kaggle layout) a name that is not an id is a problem too."""
    for k, path in enumerate(paths):
        report.checked += 1
        try:
            pixels = decode_image(path).pixels
        except DataError as err:
            report.add(path, str(err).removeprefix(f"{path}: "))
        else:
            if _SHA1.match(path.stem) and patch_id(pixels) != path.stem:
                report.add(path, f"pixel SHA-1 is {patch_id(pixels)}, not the id in its name: the file is corrupted or misnamed")
            elif require_ids and not _SHA1.match(path.stem):
                report.add(path, "name is not a 40-hex-digit SHA-1 id, so its integrity cannot be checked")
        if progress and (k % 256 == 0 or k == len(paths) - 1):
            progress(k + 1, len(paths))


def verify_kaggle(root: Path, report: VerifyReport, progress=None) -> None:
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            continue
        paths = list_images(folder)
        others = sorted(p.name for p in folder.iterdir() if p.is_file() and p not in set(paths) and not p.name.startswith("."))
        for name in others:
            report.add(folder / name, "not an image file name (.tif, .png, .jpg expected)")
        if not paths:
            report.add(folder, "no images in this folder")
        verify_images(paths, report, require_ids=True, progress=progress)
        if split == "train":
            labels_path = root / LABELS_FILE
            try:
                table = read_labels_csv(labels_path)
            except (DataError, FileNotFoundError) as err:
                report.add(labels_path, str(err).removeprefix(f"{labels_path}: "))
                continue
            stems = {p.stem for p in paths}
            ids = set(table["id"])
            for missing in sorted(ids - stems)[:1000]:
                report.add(f"{labels_path}:{missing}", "labelled id has no image in train/")
            for extra in sorted(stems - ids)[:1000]:
                report.add(folder / f"{extra}.tif", f"image has no row in {LABELS_FILE}")


def verify_h5_split(root: Path, split: str, report: VerifyReport, progress=None) -> None:
    files = split_files(root, split)
    try:
        ds = PCamH5(root, split)
    except (DataError, FileNotFoundError, OSError) as err:
        report.add(files["x"], str(err))
        return
    n = len(ds)
    step = 4096
    with h5py.File(files["x"], "r") as fx:
        x = fx["x"]
        for start in range(0, n, step):
            stop = min(n, start + step)
            try:
                block = x[start:stop]
            except (OSError, ValueError) as err:  # a corrupt chunk: narrow it down to single patches
                for i in range(start, stop):
                    try:
                        x[i]
                    except (OSError, ValueError) as err_i:
                        report.add(f"{files['x']}[{i}]", f"unreadable patch ({err_i})")
                report.checked += stop - start
                continue
            if block.shape[1:] != PATCH_SHAPE:  # pragma: no cover - PCamH5 checked the shape already
                report.add(files["x"], f"patches have shape {block.shape[1:]}")
            report.checked += stop - start
            if progress:
                progress(stop, n)
    if split != "test" and not ds.has_labels:
        report.add(files["y"], "no label file: this split is unlabelled")


def verify_path(path: str | Path, *, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check a Kaggle folder, a folder of images, a PCam HDF5 folder (every split) or one `_x.h5` file."""
    path = Path(path)
    report = VerifyReport(str(path))
    fmt = detect_format(path)
    if fmt == "kaggle":
        verify_kaggle(path, report, progress)
    elif fmt == "images":
        verify_images(list_images(path), report, require_ids=False, progress=progress)
    elif path.is_file():
        root, split = h5_file_split(path)
        verify_h5_split(root, split, report, progress)
    else:
        for split in available_splits(path):
            verify_h5_split(path, split, report, progress)
    return report


__all__ = ["VerifyReport", "verify_path"]
