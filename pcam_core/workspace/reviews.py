"""Reviews by pathologists: an embedded SQLite database in the workspace (`reviews.sqlite`), and the
review queue (the patches the model is least sure about first).

A review is one verdict on one patch (or one region of a slide) by one named reviewer, with the model's
probability and call at the time. It is saved at once: one INSERT, committed before `add_review`
returns. Nothing is ever updated or deleted: a later review of the same item by the same reviewer
supersedes the earlier one for `current_reviews`, and the earlier one stays in `reviews` (the history).

The database is opened in WAL mode (readers never block the writer, writers queue behind
`BUSY_TIMEOUT_MS`) with `synchronous=NORMAL`: a committed review survives a crash or a kill -9 of
the process that wrote it (the WAL is on disk before `COMMIT` returns); only a power cut of the
machine may lose the last few commits. Each call opens its own connection, so any thread or process
may call any function. The schema carries a version (`PRAGMA user_version`); `MIGRATIONS` upgrades an
older database in place, and a newer one is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import random
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from ..decision import call, check_threshold
from ..fileio import atomic_write_with

DB_NAME = "reviews.sqlite"
VERDICTS = {
    "agree": "agree with the label",
    "disagree_label_wrong": "disagree: the label is wrong",
    "disagree_model_wrong": "disagree: the model is wrong",
    "artefact": "artefact or unusable tissue",
    "unsure": "unsure",
}
BUSY_TIMEOUT_MS = 30_000
SCHEMA_VERSION = 1
# MIGRATIONS[k] takes a database from version k to k + 1. Append; never edit one that has shipped.
MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE reviews (
        review_id   INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at  TEXT NOT NULL,               -- UTC, ISO 8601 with microseconds
        reviewer    TEXT NOT NULL,
        source      TEXT NOT NULL,               -- the data source's name (or its folder)
        item        TEXT NOT NULL,               -- what was reviewed: ReviewTarget.item
        split       TEXT NOT NULL DEFAULT '',
        patch_id    TEXT NOT NULL DEFAULT '',    -- SHA-1 of the patch's pixels (Kaggle's file name)
        patch_index INTEGER,                     -- its number in the split
        slide_id    TEXT,
        x           INTEGER,                     -- level-0 pixels of a slide region's top-left corner
        y           INTEGER,
        region      TEXT,
        verdict     TEXT NOT NULL CHECK (verdict IN ({", ".join(repr(v) for v in VERDICTS)})),
        note        TEXT NOT NULL DEFAULT '',
        probability REAL,
        call        TEXT,
        threshold   REAL,
        run_id      TEXT
    );
    CREATE INDEX reviews_by_item ON reviews (reviewer, source, item, review_id);
    """,
]
assert len(MIGRATIONS) == SCHEMA_VERSION
COLUMNS = ["review_id", "created_at", "reviewer", "source", "item", "split", "patch_id", "patch_index", "slide_id", "x", "y",
           "region", "verdict", "note", "probability", "call", "threshold", "run_id"]


@dataclass(frozen=True)
class ReviewTarget:
    """What a review is about: a patch of a data source (by its id, with its split and number), or a
    region of a slide (level-0 x, y of its corner, or a region id)."""

    source: str
    patch_id: str = ""
    split: str = ""
    index: int | None = None
    slide_id: str | None = None
    x: int | None = None
    y: int | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        if not str(self.source).strip():
            raise ValueError("a review needs the name of the data it is about (source)")
        if not self.patch_id and not self.slide_id:
            raise ValueError("a review needs a patch id, or a slide id with a region")
        if self.slide_id and not self.patch_id and self.region is None and (self.x is None or self.y is None):
            raise ValueError(f"slide {self.slide_id!r}: give the region's level-0 x and y, or a region id")

    @classmethod
    def slide_region(cls, source: str, slide_id: str, *, x: int | None = None, y: int | None = None,
                     region: str | None = None) -> ReviewTarget:
        """A region of a slide: by its level-0 corner (x, y) or by a region id."""
        return cls(source, slide_id=slide_id, x=None if x is None else int(x), y=None if y is None else int(y), region=region)

    @property
    def item(self) -> str:
        """The key under which reviews of the same thing supersede each other: the patch id (the same
        pixels are the same patch in any split), or the slide with the region."""
        if self.patch_id:
            return self.patch_id
        return f"{self.slide_id}#{self.region}" if self.region is not None else f"{self.slide_id}@{self.x},{self.y}"


@dataclass(frozen=True)
class ModelCall:
    """What the model said about the item when it was reviewed."""

    probability: float | None = None
    call: str | None = None
    threshold: float | None = None
    run_id: str | None = None

    @classmethod
    def at(cls, probability: float, threshold: float, run_id: str | None) -> ModelCall:
        """The call at `threshold`: tumour when the probability is at or above it."""
        return cls(float(probability), call(probability, threshold), float(threshold), run_id)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


class ReviewStore:
    """The review database at `path` (created on first use). Every method opens its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as err:
            raise OSError(f"cannot open the review database {self.path}: {err}") from err
        try:
            conn.row_factory = sqlite3.Row
            self._set_up(conn)
            yield conn
        except sqlite3.DatabaseError as err:
            raise OSError(f"review database {self.path}: {err}") from err
        finally:
            conn.close()

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """The connection's settings and the schema. SQLite answers "database is locked" at once, without waiting out
        the busy timeout, where waiting could deadlock: a connection that reads the journal mode while another switches
        it to WAL or checkpoints on closing (five processes reviewing at once, under load, in CI). Those steps are tried
        again until the busy timeout has passed."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":  # set once: it stays in the file
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                self._migrate(conn)
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise ValueError(f"{self.path} has review schema version {version}, newer than this pcam_core knows "
                             f"({SCHEMA_VERSION}); update pcam_core to read it")
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see the new version
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def add_review(self, target: ReviewTarget, verdict: str, reviewer: str, *, note: str = "",
                   model: ModelCall | None = None) -> int:
        """Save one review at once (a single committed INSERT); returns its review id."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        reviewer = str(reviewer).strip()
        if not reviewer:
            raise ValueError("a review needs the reviewer's name")
        model = model or ModelCall()
        row = {"created_at": _now(), "reviewer": reviewer, "source": target.source, "item": target.item, "split": target.split,
               "patch_id": target.patch_id, "patch_index": target.index, "slide_id": target.slide_id, "x": target.x,
               "y": target.y, "region": target.region, "verdict": verdict, "note": str(note).strip(), **asdict(model)}
        if row["probability"] is not None:
            row["probability"] = float(row["probability"])
        with self._connect() as conn:
            cursor = conn.execute(f"INSERT INTO reviews ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                  [int(v) if isinstance(v, np.integer) else v for v in row.values()])
            return int(cursor.lastrowid)

    @staticmethod
    def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column, value in filters.items():
            if value is None:
                continue
            if column not in COLUMNS:
                raise ValueError(f"cannot filter reviews on {column!r}; columns: {', '.join(COLUMNS)}")
            if isinstance(value, (list, tuple, set, frozenset)):
                clauses.append(f"{column} IN ({', '.join('?' * len(value))})")
                params += list(value)
            else:
                clauses.append(f"{column} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def reviews(self, **filters: Any) -> pd.DataFrame:
        """Every review ever saved (the history), oldest first, optionally filtered by column value
        (`reviewer="A"`, `source="demo"`, `verdict=["artefact", "unsure"]`; None: any)."""
        where, params = self._where(filters)
        return self._frame(f"SELECT * FROM reviews{where} ORDER BY review_id", params)

    def current_reviews(self, **filters: Any) -> pd.DataFrame:
        """The latest review of each item by each reviewer (what that reviewer thinks now), oldest
        first; filters as in `reviews`, applied after superseded reviews are set aside."""
        where, params = self._where(filters)
        latest = ("SELECT * FROM reviews WHERE review_id IN "
                  "(SELECT MAX(review_id) FROM reviews GROUP BY reviewer, source, item)")
        return self._frame(f"SELECT * FROM ({latest}){where} ORDER BY review_id", params)

    def _frame(self, sql: str, params: list[Any]) -> pd.DataFrame:
        with self._connect() as conn:
            rows = conn.execute(sql, params).fetchall()
        frame = pd.DataFrame([tuple(r) for r in rows], columns=COLUMNS)
        return frame.astype({"patch_index": "Int64", "x": "Int64", "y": "Int64"})

    def latest(self, target: ReviewTarget, reviewer: str) -> dict[str, Any] | None:
        """This reviewer's current review of `target`, or None."""
        found = self.current_reviews(reviewer=reviewer.strip(), source=target.source, item=target.item)
        return None if found.empty else found.iloc[-1].to_dict()

    def reviewed_items(self, reviewer: str, source: str) -> set[str]:
        """The items of `source` that `reviewer` has reviewed (to leave out of their queue)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT DISTINCT item FROM reviews WHERE reviewer = ? AND source = ?", (reviewer.strip(), source))
            return {r[0] for r in rows}

    def counts(self, **filters: Any) -> dict[str, int]:
        """Current reviews by verdict (every verdict present, 0 when none), and their "total"."""
        frame = self.current_reviews(**filters)
        out = {verdict: int((frame["verdict"] == verdict).sum()) for verdict in VERDICTS}
        out["total"] = len(frame)
        return out

    def export_frame(self, *, history: bool = False, **filters: Any) -> pd.DataFrame:
        """The current reviews (or, with `history`, every review) as the CSV export has them: `id` is
        the patch id and `index` its number in `split`, the columns `pcam train --label-overrides` reads."""
        frame = self.reviews(**filters) if history else self.current_reviews(**filters)
        return frame.rename(columns={"patch_id": "id", "patch_index": "index"})

    def export_csv(self, path: str | Path, *, history: bool = False, **filters: Any) -> int:
        """Write `export_frame` to `path` atomically; returns the number of rows written."""
        frame = self.export_frame(history=history, **filters)
        atomic_write_with(path, lambda handle: frame.to_csv(handle, index=False))
        return len(frame)


def store_for(workspace_root: str | Path) -> ReviewStore:
    """The review database of a workspace folder."""
    return ReviewStore(Path(workspace_root) / DB_NAME)


# -- the review queue ---------------------------------------------------------------------------------

def _percentile_rank(values: pd.Series) -> pd.Series:
    return values.rank(method="average", pct=True)


def review_queue(predictions: pd.DataFrame, threshold: float, *, reviewed: Iterable[str] = (),
                 k: int | None = None) -> pd.DataFrame:
    """The patches of a scored split (`id`, `label`, `probability`, `index`, and `uncertainty` when
    the split was scored with test-time augmentation) that most need a pathologist, first; patches
    whose id is in `reviewed` are left out. Adds `closeness` and `priority` (higher first).

    closeness = 1 - |probability - threshold| / max(threshold, 1 - threshold): 1 on the threshold, 0 at
    the far end. Without an uncertainty the priority is the closeness. With one, the priority is the mean
    of the two percentile ranks (of closeness and of uncertainty) within the split: unit-free, so it
    does not matter on what scale the uncertainty is measured, and a patch high on both comes first."""
    threshold = check_threshold(threshold)
    missing = {"id", "probability"} - set(predictions.columns)
    if missing:
        raise ValueError(f"predictions lack column(s) {', '.join(sorted(missing))}")
    done = set(reviewed)
    rows = predictions[~predictions["id"].astype(str).isin(done)].copy()
    span = max(threshold, 1.0 - threshold) or 1.0
    rows["closeness"] = 1.0 - (rows["probability"] - threshold).abs() / span
    if "uncertainty" in rows.columns and rows["uncertainty"].notna().any():
        rows["priority"] = (_percentile_rank(rows["closeness"]) + _percentile_rank(rows["uncertainty"].fillna(0.0))) / 2
    else:
        rows["priority"] = rows["closeness"]
    rows = rows.sort_values(["priority", "closeness"], ascending=False, kind="stable")
    return rows if k is None else rows.head(k)
