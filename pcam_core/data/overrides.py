"""Training with reviewed labels: a review export (`pcam_core.workspace.reviews`, or any CSV with `id`
and `verdict` columns) applied to a training split.

    disagree_label_wrong   the label is flipped (0 <-> 1)
    artefact               the patch is dropped
    agree, disagree_model_wrong, unsure   the patch stays, with its label

Rows are matched to patches by patch id: the SHA-1 of the pixels, which is also Kaggle's file name, so
a review made on either layout of the same patch matches. A Kaggle folder's ids are its file names (no
pixel is read). A PCam HDF5 split has no stored ids: rows that carry `split` and `index` (as the export
does) are checked by hashing only those patches; rows without them make every training patch hashed
once (about a minute for PCam's 262,144). A row of another split is not a training patch. When an id
has several rows (several reviewers, or a history), the last row of the file decides.

Only the training patches change: the validation split stays as it was, so a run's figures compare with
other runs', and a Kaggle run's validation split is the same seeded split whatever was dropped.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .base import PatchDataset, PatchSubset
from .common import DataError, patch_id
from .h5 import PCamH5
from .kaggle import ImageFiles

log = logging.getLogger(__name__)

REQUIRED = ("id", "verdict")
VERDICTS = ("agree", "disagree_label_wrong", "disagree_model_wrong", "artefact", "unsure")  # as workspace.reviews.VERDICTS
FLIP, DROP = "disagree_label_wrong", "artefact"
_HASH_CHUNK = 4096


@dataclass(frozen=True)
class OverrideCounts:
    """What a review export did to a training split."""

    rows: int  # rows of the file
    reviewed: int  # distinct patch ids in it
    flipped: int
    dropped: int
    kept: int  # matched, verdict keeps the label
    unmatched: int  # ids that are not training patches
    conflicting: int  # ids with rows of different verdicts (the last one decided)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def warning(self, path: str | Path) -> str | None:
        if not self.unmatched:
            return None
        return (f"{self.unmatched} of the {self.reviewed} reviewed patch id(s) in {path} are not among the training "
                "patches (reviews of validation or test patches, or of other data); they change nothing")


def read_overrides(path: str | Path) -> pd.DataFrame:
    """The rows of a review export that decide: one per patch id (the file's last), with `id`,
    `verdict` and, when the file has them, `split` and `index`. Refuses a file without `id` and
    `verdict` columns, or with a verdict it does not know, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label overrides file not found: {path} (export one from the Review page, or "
                                "write a CSV with the columns id,verdict)")
    try:
        frame = pd.read_csv(path, dtype={"id": str, "verdict": str, "split": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from err
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: label overrides need the column(s) {', '.join(REQUIRED)}; missing {', '.join(missing)} "
                        f"(found: {', '.join(map(str, frame.columns)) or 'none'})")
    frame["id"] = frame["id"].str.strip().str.lower()
    frame["verdict"] = frame["verdict"].str.strip()
    bad = sorted(set(frame["verdict"]) - set(VERDICTS))
    if bad:
        raise DataError(f"{path}: unknown verdict(s) {', '.join(map(repr, bad[:5]))}; valid: {', '.join(VERDICTS)}")
    if (frame["id"] == "").any():
        raise DataError(f"{path}: empty id on line(s) {', '.join(str(i + 2) for i in np.flatnonzero(frame['id'] == '')[:10])}")
    conflicting = frame.groupby("id")["verdict"].nunique()
    keep = [c for c in ("id", "verdict", "split", "index") if c in frame.columns]
    out = frame[keep].drop_duplicates("id", keep="last").reset_index(drop=True)
    out.attrs.update(rows=len(frame), conflicting=int((conflicting > 1).sum()))
    return out


def _positions(dataset: PatchDataset, table: pd.DataFrame) -> np.ndarray:
    """Position in `dataset` of each row's patch, -1 for a patch not in it."""
    found = np.full(len(table), -1, dtype=np.int64)
    if isinstance(dataset.source, ImageFiles):  # Kaggle: the ids are the file names
        where = {pid.lower(): k for k, pid in enumerate(dataset._ids(np.arange(len(dataset)), None))}
        return np.array([where.get(pid, -1) for pid in table["id"]], dtype=np.int64)
    todo = np.ones(len(table), dtype=bool)
    if isinstance(dataset, PCamH5) and {"split", "index"} <= set(table.columns):
        index = pd.to_numeric(table["index"], errors="coerce")
        same = (table["split"] == dataset.split).to_numpy() & index.notna().to_numpy()
        todo &= ~((table["split"] != "") & (table["split"] != dataset.split)).to_numpy()  # another split: not training
        rows = np.flatnonzero(same & (index.fillna(-1).to_numpy() < len(dataset)) & (index.fillna(-1).to_numpy() >= 0))
        if rows.size:
            candidates = index.to_numpy()[rows].astype(np.int64)
            order = np.argsort(candidates)
            hashed = [patch_id(p) for p in dataset.read_pixels(candidates[order])]
            for row, candidate, pid in zip(rows[order], candidates[order], hashed):
                if pid == table["id"].iat[row]:
                    found[row] = candidate
        todo &= ~same  # a row naming its patch was checked: a mismatch means the data changed since the review
    if todo.any():
        log.info("hashing the %d training patches to find %d reviewed id(s)", len(dataset), int(todo.sum()))
        wanted = {table["id"].iat[r]: r for r in np.flatnonzero(todo)}
        for start in range(0, len(dataset), _HASH_CHUNK):
            indices = np.arange(start, min(start + _HASH_CHUNK, len(dataset)))
            for i, pixels in zip(indices, dataset.read_pixels(indices)):
                row = wanted.get(patch_id(pixels))
                if row is not None:
                    found[row] = i
    return found


def apply_overrides(dataset: PatchDataset, path: str | Path) -> tuple[PatchDataset, OverrideCounts]:
    """`dataset` with the reviewed labels of the export at `path`: flipped labels, artefacts left out
    (a view on the same files), and what was done."""
    table = read_overrides(path)
    positions = _positions(dataset, table)
    matched = positions >= 0
    verdicts = table["verdict"].to_numpy()
    labels = dataset.labels.copy()
    flip = positions[matched & (verdicts == FLIP)]
    labels[flip] = 1 - labels[flip]
    keep = np.ones(len(dataset), dtype=bool)
    keep[positions[matched & (verdicts == DROP)]] = False
    counts = OverrideCounts(rows=int(table.attrs["rows"]), reviewed=len(table), flipped=len(flip), dropped=int((~keep).sum()),
                            kept=int((matched & ~np.isin(verdicts, (FLIP, DROP))).sum()), unmatched=int((~matched).sum()),
                            conflicting=int(table.attrs["conflicting"]))
    indices = np.flatnonzero(keep)
    if isinstance(dataset, PatchSubset):  # a view on its parent, not a view on a view
        result = dataset.parent.subset(dataset.parent_indices[indices], labels=labels[indices])
    else:
        result = dataset.subset(indices, labels=labels[indices])
    log.info("label overrides %s: %s", path, counts.as_dict())
    return result, counts
