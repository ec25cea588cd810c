"""What every data layout shares: the patch geometry, the sample format, image decoding and checks."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

PATCH_SIZE = 96
CENTER_SIZE = 32
CENTER_START = (PATCH_SIZE - CENTER_SIZE) // 2  # 32: the label box is [32, 64) on both axes
PATCH_SHAPE = (PATCH_SIZE, PATCH_SIZE, 3)
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# Largest image we are willing to decode at all. A patch is 96x96; anything bigger than this is refused
# from its header alone, before decoding, so a decompression bomb never reaches memory.
MAX_DECODE_PIXELS = 4096 * 4096
UNLABELLED = -1


class DataError(ValueError):
    """Data that exists but is wrong: a bad image, a bad labels row, a malformed HDF5 file."""


def patch_id(pixels: np.ndarray) -> str:
    """The Kaggle id of a patch: SHA-1 of its raw RGB bytes (96*96*3 uint8, row-major HWC)."""
    return hashlib.sha1(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


@dataclass
class DecodedImage:
    """An image decoded to a 96x96x3 uint8 array, with what had to be done to get there."""

    pixels: np.ndarray
    notes: list[str] = field(default_factory=list)


def decode_image(source: str | Path | bytes, *, name: str | None = None, convert: bool = False) -> DecodedImage:
    """Decode a patch from a path or bytes into a (96, 96, 3) uint8 array.

    Refuses with a `DataError` that names the file: unreadable or non-image content, images larger than
    `MAX_DECODE_PIXELS` (checked from the header, before decoding), and any size other than 96x96 (a
    patch at another size is at another magnification; resizing it would silently change what the model
    sees). With `convert=True`, grayscale, palette, RGBA and 16-bit images are converted to 8-bit RGB and
    each conversion is reported in `notes`; without it they are refused.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<uploaded bytes>")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as err:
        raise DataError(f"{label}: cannot open ({err.strerror or err})") from err
    with handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # "Corrupt EXIF data": said below
                image = Image.open(handle)
                width, height = image.size
                if width * height > MAX_DECODE_PIXELS:
                    raise DataError(
                        f"{label}: {width}x{height} pixels is far larger than a 96x96 patch; refused without decoding"
                    )
                image.load()
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise DataError(f"{label}: refused as a possible decompression bomb ({err})") from err
        except UnidentifiedImageError as err:
            if _is_empty(handle):
                raise DataError(f"{label}: an empty file (0 bytes)") from err
            kind = _format_by_signature(handle)
            if kind is not None:  # its first bytes say what it is meant to be: damaged, not of another kind
                raise DataError(f"{label}: a damaged or truncated {kind} file (its header says {kind}, but the image "
                                "cannot be read)") from err
            raise DataError(f"{label}: not an image file (or a format Pillow cannot read)") from err
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise DataError(f"{label}: the image is truncated or corrupt ({err})") from err
    return _to_rgb_patch(image, label, convert=convert)


_SIGNATURES = {b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG"}


def _is_empty(handle: Any) -> bool:
    try:
        handle.seek(0, io.SEEK_END)
        return handle.tell() == 0
    except (OSError, ValueError):
        return False


def _format_by_signature(handle: Any) -> str | None:
    """The image format a file's first bytes announce (TIFF, PNG, JPEG), or None."""
    try:
        handle.seek(0)
        head = handle.read(4)
    except (OSError, ValueError):
        return None
    return next((kind for magic, kind in _SIGNATURES.items() if head.startswith(magic)), None)


def _to_rgb_patch(image: Image.Image, label: str, *, convert: bool) -> DecodedImage:
    notes: list[str] = []
    width, height = image.size
    if (width, height) != (PATCH_SIZE, PATCH_SIZE):
        raise DataError(
            f"{label}: image is {width}x{height} pixels; a PCam patch is {PATCH_SIZE}x{PATCH_SIZE} "
            f"(crop or tile it at the PCam magnification first)"
        )
    mode = image.mode
    if mode != "RGB":
        if not convert:
            raise DataError(f"{label}: image mode is {mode!r}; expected 8-bit RGB")
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(image, dtype=np.float64)
            top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            gray = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
            image = Image.fromarray(gray, "L").convert("RGB")
            notes.append(f"converted {mode} (16-bit) to 8-bit RGB")
        elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            notes.append(f"dropped the alpha channel of a {mode} image (composited on white)")
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba).convert("RGB")
        elif mode in ("L", "1"):
            notes.append("converted a grayscale image to RGB (three equal channels: the model was trained on colour H&E)")
            image = image.convert("RGB")
        else:
            notes.append(f"converted image mode {mode} to RGB")
            image = image.convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.shape != PATCH_SHAPE:
        raise DataError(f"{label}: decoded to shape {pixels.shape}; expected {PATCH_SHAPE}")
    return DecodedImage(np.ascontiguousarray(pixels), notes)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def same_id_reason(stem: str, first: str) -> str:
    """Why a file is refused whose id (its name without extension) an earlier file already has."""
    return f"same id {stem!r} as {first}; a submission needs one row per id"


def id_clashes(paths: Sequence[str | Path]) -> dict[int, str]:
    """Files whose id (name without extension, as Kaggle names patches) an earlier file of `paths` already has, such as
    `a.tif` and `a.jpg`: {position: reason}. The first file of each id is not among them."""
    seen: dict[str, str] = {}
    clashes: dict[int, str] = {}
    for i, path in enumerate(paths):
        stem, name = Path(path).stem, Path(path).name
        if stem in seen:
            clashes[i] = same_id_reason(stem, seen[stem])
        else:
            seen[stem] = name
    return clashes


def stratified_folds(labels: Sequence[int] | np.ndarray, k: int, seed: int,
                     groups: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
    """The fold (0..k-1) of each of N patches: stratified by label and seeded; with `groups` (a slide id per
    patch) no group is split across folds (scikit-learn's StratifiedGroupKFold), else StratifiedKFold."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    counts = np.bincount(labels.astype(np.int64), minlength=2)
    if counts.min() < k:
        raise ValueError(f"{k} folds need at least {k} patches of each class; got {counts[0]} normal and {counts[1]} tumour")
    fold = np.full(len(labels), -1, dtype=np.int64)
    if groups is not None:
        groups = np.asarray(groups)
        if np.unique(groups).size < k:
            raise ValueError(f"{k} folds grouped by slide need at least {k} slides; the data has {np.unique(groups).size}")
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(labels, labels, groups)
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(labels, labels)
    for f, (_, held) in enumerate(splits):
        fold[held] = f
    return fold


def stratified_split(
    labels: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split indices 0..N-1 into len(fractions)+1 parts, stratified by label and seeded.

    The first part gets what the fractions leave; each following part gets its fraction of N.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    rest = np.arange(len(labels))
    parts: list[np.ndarray] = []
    remaining = 1.0
    for frac in fractions:
        if frac <= 0:
            parts.append(np.array([], dtype=np.int64))
            continue
        take = frac / remaining
        stratify = labels[rest] if np.unique(labels[rest]).size > 1 else None
        if take >= 1.0:
            rest, part = np.array([], dtype=np.int64), rest
        else:
            rest, part = train_test_split(rest, test_size=take, stratify=stratify, random_state=seed)
        parts.append(np.sort(part))
        remaining -= frac
    return [np.sort(rest), *parts]

