"""One slide scored in n shards: which shards are complete, and their maps merged into one.

Each shard (i, n) writes `shards/heatmap.i-of-n.npy` and `shards/progress.i-of-n.json` (see `analysis`);
its progress says `complete` once every one of its tiles is in its map. The shards hold disjoint sets of
region tiles, so the merged map takes each tile's cells from the shard that scored it: it is the map an
unsharded run writes, cell for cell. The merge runs under an exclusive `flock` on `shards/merge.lock`,
so of several shards finishing at once one merges and the others find the analysis complete; the lock
dies with its process, so a merger killed midway leaves no stale lock behind.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..fileio import atomic_write_with, flock, read_json
from .analysis import Lattice
from .folder import AnalysisFolder
from .reader import SlideReadError, open_slide
from .tissue import read_thumbnail, tissue_mask


def shard_records(folder: AnalysisFolder) -> tuple[int, dict[int, dict[str, Any]]]:
    """(n, {i: progress record}) of the shards in `folder`; n is 0 when there are none."""
    files = folder.shard_progress_files()
    counts = sorted({n for _, n in files})
    if len(counts) > 1:
        raise ValueError(f"{folder.shards_dir} holds shards of different counts ({', '.join(map(str, counts))}); "
                         "delete the ones that do not belong")
    if not counts:
        return 0, {}
    records = {}
    for (i, n), path in files.items():
        record = read_json(path)
        if record is None and not path.exists():  # removed by a merge meanwhile
            continue
        if not isinstance(record, dict):
            raise ValueError(f"{path}: not a shard progress record")
        records[i] = record
    return counts[0], records


def missing_shards(n: int, records: dict[int, dict[str, Any]]) -> list[str]:
    """'i/n (why)' for each shard not complete yet."""
    missing = []
    for i in range(n):
        record = records.get(i)
        if record is None:
            missing.append(f"{i}/{n} (not started)")
        elif not record.get("complete"):
            missing.append(f"{i}/{n} (unfinished: {len(record.get('done', []))} of {len(record.get('tiles', []))} region tiles)")
    return missing


@contextlib.contextmanager
def merge_lock(folder: AnalysisFolder) -> Iterator[None]:
    """Hold the folder's merge lock (waiting for it while another process merges). FileNotFoundError when
    `shards/` does not exist (never created here: after a merge it is gone for good)."""
    with flock(folder.merge_lock):
        yield


def _merged(path_of: Callable[[int], Path], n: int, records: dict[int, dict[str, Any]], lattice: Lattice) -> np.ndarray:
    """One map from the shards' maps at `path_of(i)`, each shard's own region tiles taken from its file."""
    boxes = lattice.tiles()
    out = np.full(lattice.shape, np.nan, dtype=np.float32)
    for i in range(n):
        part = np.load(path_of(i), mmap_mode="r")
        if part.shape != out.shape:
            raise ValueError(f"{path_of(i)}: map shape {part.shape} does not match the lattice {out.shape}")
        for k in records[i]["tiles"]:
            i0, i1, j0, j1 = boxes[k]
            out[i0:i1, j0:j1] = part[i0:i1, j0:j1]
    return out


def merge_shards(folder: AnalysisFolder, n: int, records: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Write the merged `heatmap.npy` (atomically) from the complete shards `records` (`shard_records`);
    returns the state the outputs are written from, as `score_slide` returns it, with each shard's record
    under "shards". Raises a ValueError naming the shards that are missing or unfinished."""
    if n == 0:
        raise ValueError(f"{folder.path}: no shards to merge (no {folder.shards_dir.name}/progress.I-of-N.json)")
    missing = missing_shards(n, records)
    if missing:
        raise ValueError(f"{folder.path}: cannot merge: {len(missing)} of {n} shard(s) not complete: {', '.join(missing)}")
    params = records[0]["params"]
    for i in range(1, n):
        if records[i]["params"] != params:
            raise ValueError(f"{folder.shard_progress(i, n)}: shard {i}/{n} was scored with other settings than shard 0/{n}; "
                             "delete the folder and start again")
    lattice = Lattice(params["width"], params["height"], params["mpp"], params["stride"], params["region_px"])
    boxes = lattice.tiles()
    heat = _merged(lambda i: folder.shard_heatmap(i, n), n, records, lattice)
    scoped = params.get("scope_threshold") is not None
    distances = _merged(lambda i: folder.shard_scope(i, n), n, records, lattice) if scoped else None
    owned = sorted(k for r in records.values() for k in r["tiles"])
    if owned != list(range(len(boxes))):
        raise ValueError(f"{folder.path}: the shards do not cover the slide's {len(boxes)} region tiles exactly once")
    with open_slide(Path(params["slide"]), mpp=params["mpp"]) as slide:
        try:
            thumb = read_thumbnail(slide)
        except SlideReadError as err:
            raise ValueError(f"{params['slide']}: cannot read the slide's overview: {err}") from err
        slide_info = slide.describe()
    if distances is not None:
        atomic_write_with(folder.scope_npy, lambda handle: np.save(handle, distances))
    atomic_write_with(folder.heatmap_npy, lambda handle: np.save(handle, heat))
    shards = [{"shard": f"{i}/{n}", "tiles": len(records[i]["tiles"]), "windows": int(records[i]["windows"]),
               "seconds": round(float(records[i]["seconds"]), 3), "resumed": bool(records[i].get("resumed"))} for i in range(n)]
    return {"lattice": lattice, "thumbnail": thumb, "tissue": tissue_mask(thumb), "slide": slide_info,
            "skipped": sorted((s for r in records.values() for s in r["skipped"]), key=lambda s: s["tile"]),
            "windows": sum(s["windows"] for s in shards), "seconds": sum(float(r["seconds"]) for r in records.values()),
            "resumed": any(s["resumed"] for s in shards), "shards": shards, "meta": records[0].get("meta", {})}
