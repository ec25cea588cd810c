"""Scoring a whole slide on PCam's definition: a 96-px window at PCam scale per 32x32 cell.

The lattice. With f = PCAM_MPP / mpp level-0 pixels per PCam-scale pixel and `stride` s (32 or 96
PCam pixels), map cell (i, j) covers PCam-scale pixels [s*j, s*j + s) x [s*i, s*i + s), i.e. level-0
pixels [s*j*f, (s*j + s)*f) x [s*i*f, (s*i + s)*f), anchored at level-0 pixel (0, 0): maps of any run and
stride align. Its window is the 96 x 96 PCam-pixel square centred on the cell, top-left at PCam pixel
(s*j + s/2 - 48, s*i + s/2 - 48): at stride 32 the cell is exactly the window's central 32x32 region
(PCam's label region); at stride 96 the window is the cell and its label region the cell's centre.
Window pixels outside the slide are white. A cell is scored when its tissue fraction reaches
`min_tissue`; the map holds NaN for cells not scored and -1 for cells of regions that could not be read.

The slide is read in region tiles of about 1024 x 1024 PCam pixels in DataLoader workers, the windows
are cut from them, and the map (a memory-mapped `heatmap.npy`) is written tile by tile; after each tile
the map is flushed and then the tile is recorded in `progress.json` (atomically), so an analysis killed
at any moment resumes with `resume=True` where it stopped and yields the same map.

Sharding one slide: shard (i, n) scores a contiguous run of the row-major tile list (bands of tile rows),
cut so that each shard holds about 1/n of the cells to score (`shard_tiles`), into its own
`shards/heatmap.i-of-n.npy` and `shards/progress.i-of-n.json`, resumable the same way; `shards.py` merges them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..fileio import atomic_write_json, atomic_write_with, read_json
from ..scope import ScopeModel, tap_for
from .folder import AnalysisFolder
from .dense import (block_probes, block_values, can_scan, cascade_bar, cascade_summary, dense_windows, effective_mode, fill_from_blocks,
                    refine_cells, scope_cascade_band)
from .reader import PCAM_MPP, WINDOW, SlideReadError, open_slide
from .tissue import cell_fraction, read_thumbnail, tissue_mask

log = logging.getLogger(__name__)

STRIDES = (32, 96)
REGION_PCAM_PX = 1024  # a region tile spans about this many PCam pixels on a side
UNREADABLE = -1.0


@dataclass(frozen=True)
class Lattice:
    width: int  # level-0 pixels
    height: int
    mpp: float  # microns per level-0 pixel
    stride: int = 32  # PCam-scale pixels per cell
    region_px: int = REGION_PCAM_PX  # PCam-scale pixels per region tile side (reads, resume steps)

    def __post_init__(self) -> None:
        if self.stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES} PCam-scale pixels, not {self.stride}")
        if self.region_px < self.stride:
            raise ValueError(f"region_px ({self.region_px}) must be at least the stride ({self.stride})")

    @property
    def f(self) -> float:
        """Level-0 pixels per PCam-scale pixel."""
        return PCAM_MPP / self.mpp

    @property
    def cell_px(self) -> float:
        """Level-0 pixels per cell side."""
        return self.stride * self.f

    @property
    def cell_mm(self) -> float:
        return self.cell_px * self.mpp / 1000

    @property
    def shape(self) -> tuple[int, int]:
        return math.ceil(self.height / self.cell_px), math.ceil(self.width / self.cell_px)

    def window_origin(self, i: np.ndarray | int, j: np.ndarray | int) -> tuple[Any, Any]:
        """Top-left corner (x, y) of the windows of cells (i, j), in level-0 pixels (may be negative)."""
        offset = self.stride / 2 - WINDOW / 2
        return (self.stride * np.asarray(j) + offset) * self.f, (self.stride * np.asarray(i) + offset) * self.f

    def tiles(self) -> list[tuple[int, int, int, int]]:
        """Region tiles as (i0, i1, j0, j1) cell ranges, row-major; tile k is the k-th of this list."""
        n = max(1, self.region_px // self.stride)
        rows, cols = self.shape
        return [(i, min(i + n, rows), j, min(j + n, cols)) for i in range(0, rows, n) for j in range(0, cols, n)]


def cut_windows(region: np.ndarray, cells: np.ndarray, stride: int) -> np.ndarray:
    """The 96 x 96 windows at `stride` steps of an (h, w, 3) region, for `cells` (n, 2) (row, column) of the
    window grid: a contiguous (n, 3, 96, 96) uint8 array. The region is made channels-first once, so each
    window row gathered is a contiguous run of 96 bytes (9x faster than gathering from channels-last)."""
    chw = np.ascontiguousarray(region.transpose(2, 0, 1))
    views = np.lib.stride_tricks.sliding_window_view(chw, (WINDOW, WINDOW), axis=(1, 2))[:, ::stride, ::stride]
    return views.transpose(1, 2, 0, 3, 4)[cells[:, 0], cells[:, 1]]


def _as_is(item: Any) -> Any:
    return item


# Windows per item of `RegionWindows` (3.5 MB): a tile's windows come in parts of this size, and are scored a part at a
# time, so at most this many at once: PyTorch's activations for 256 windows of `pcamnet` take about 470 MB, for 128
# about 310 MB, for 7 % fewer windows/s on this CPU (the cascade's second pass at CAMELYON size peaked at 2.0 GB).
WINDOWS_PER_ITEM = 128


class RegionWindows(IterableDataset):
    """Per region tile: {"tile", "cells" (n, 2) map indices, "images" (n, 3, 96, 96) uint8, "unreadable"
    (m, 2) map indices, "error", "last"}, the windows of a tile in items of at most `WINDOWS_PER_ITEM`, one after
    another ("last": the tile's final item; with `dense`, one item per tile holding the "region"). Each worker opens the slide once and reads its share of the tiles, one
    region read per tile: a contiguous run of them with about as many cells as the others' (`balanced_run`), so
    that neighbouring regions, which share their edge tiles of the file, are read by one worker and the tiles
    decoded once (the reader's cache). When a region cannot be read (a corrupt tile of the file), its windows are read
    one by one, so that only the windows touching the bad part are lost (listed in "unreadable")."""

    def __init__(self, path: Path, mpp: float, lattice: Lattice, tiles: list[int], score: np.ndarray, *, dense: bool = False) -> None:
        self.path, self.mpp, self.lattice, self.tile_ids, self.score = path, mpp, lattice, tiles, score
        self.dense = dense  # yield the region itself ("region", its first cell "origin") for a dense pass

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        boxes = self.lattice.tiles()
        mine = self.tile_ids
        if info is not None:
            mine = [mine[k] for k in balanced_run(tile_cells(self.score, [boxes[k] for k in mine]), info.id, info.num_workers)]
        s, f = self.lattice.stride, self.lattice.f
        with open_slide(self.path, mpp=self.mpp) as slide:
            for k in mine:
                i0, i1, j0, j1 = boxes[k]
                cells = np.argwhere(self.score[i0:i1, j0:j1])
                item = {"tile": k, "cells": cells + [i0, j0], "images": torch.empty(0, 3, WINDOW, WINDOW, dtype=torch.uint8),
                        "unreadable": np.empty((0, 2), dtype=np.int64), "error": ""}
                if len(cells):
                    # only the box around the cells to score is read: glass at the tile's sides costs nothing
                    (r0, c0), (r1, c1) = cells.min(axis=0), cells.max(axis=0)
                    x0, y0 = self.lattice.window_origin(i0 + r0, j0 + c0)
                    w, h = s * (c1 - c0) + WINDOW, s * (r1 - r0) + WINDOW
                    try:
                        region = slide.read_scaled(float(x0), float(y0), w * f, h * f, (w, h))
                    except SlideReadError as err:
                        item.update(self._window_by_window(slide, item["cells"]), error=str(err))
                        yield item
                        continue
                    if self.dense:
                        item.update(region=torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1))),
                                    origin=np.array([i0 + r0, j0 + c0]))
                    else:  # the windows in parts (a whole tile's: up to 1,024 windows, 28 MB an item)
                        for start in range(0, len(cells), WINDOWS_PER_ITEM):
                            part = cells[start:start + WINDOWS_PER_ITEM]
                            yield {**item, "cells": part + [i0, j0], "images": torch.from_numpy(cut_windows(region, part - [r0, c0], s)),
                                   "last": start + WINDOWS_PER_ITEM >= len(cells)}
                        continue
                yield item

    def _window_by_window(self, slide: Any, cells: np.ndarray) -> dict[str, Any]:
        """The windows of `cells` read one by one: those that read, and the cells of those that do not."""
        f, good, images, bad = self.lattice.f, [], [], []
        for i, j in cells:
            x, y = self.lattice.window_origin(i, j)
            try:
                window = slide.read_scaled(float(x), float(y), WINDOW * f, WINDOW * f, (WINDOW, WINDOW))
            except SlideReadError:
                bad.append((i, j))
                continue
            good.append((i, j))
            images.append(window.transpose(2, 0, 1))
        shape = (len(images), 3, WINDOW, WINDOW)
        return {"cells": np.array(good, dtype=np.int64).reshape(-1, 2), "unreadable": np.array(bad, dtype=np.int64).reshape(-1, 2),
                "images": torch.from_numpy(np.stack(images) if images else np.empty(shape, np.uint8))}


@dataclass(frozen=True)
class AnalysisParams:
    """What a map depends on; a resumed analysis must match it exactly."""

    slide: str
    width: int
    height: int
    mpp: float
    stride: int
    min_tissue: float
    tta: bool
    checkpoint: str
    checkpoint_epoch: int | None
    region_px: int
    scope_threshold: float | None = None  # the guard whose distances fill scope.npy (None: no guard)
    mode: str = "window"  # `scoring_options.SLIDE_MODES`
    cascade_bar: float | None = None  # mode "cascade": the coarse probability that sends a block to stride 32


def tile_cells(score: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """The number of cells to score in each region tile (`Lattice.tiles` boxes: i0, i1, j0, j1 of the map)."""
    return np.array([score[i0:i1, j0:j1].sum() for i0, i1, j0, j1 in boxes], dtype=np.float64)


def balanced_run(weights: np.ndarray, i: int, n: int) -> np.ndarray:
    """The indices of run i of `weights` cut into n contiguous runs of about equal sums: item k goes to the run its
    half-way point falls in (without any weight, the items are split evenly)."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) == 0:
        return np.empty(0, dtype=np.int64)
    if weights.sum() == 0:
        weights = np.ones(len(weights))
    middle = np.cumsum(weights) - weights / 2
    owner = np.minimum((middle * n / weights.sum()).astype(np.int64), n - 1)
    return np.flatnonzero(owner == i)


def shard_tiles(lattice: Lattice, score: np.ndarray, shard: tuple[int, int] | None) -> list[int]:
    """The region tiles shard (i, n) scores: a contiguous run of the row-major tile list holding about 1/n of the
    cells to score (`balanced_run`); together the shards hold every tile once. None: all tiles."""
    boxes = lattice.tiles()
    if shard is None:
        return list(range(len(boxes)))
    return balanced_run(tile_cells(score, boxes), *shard).tolist()


def _check_no_other_layout(folder: AnalysisFolder, shard: tuple[int, int] | None) -> None:
    """Refuse to mix an unsharded analysis with a sharded one, or shards of different counts, in one folder."""
    others = folder.shard_progress_files()
    if shard is None and others:
        names = ", ".join(f"{i}/{n}" for i, n in others)
        raise ValueError(f"{folder.path} holds a sharded analysis (shards {names}): continue it with the same --shard i/n "
                         "and --resume, merge it with --merge, or delete the folder")
    if shard is not None:
        if folder.progress_json.exists():
            raise ValueError(f"{folder.path} holds an unsharded analysis (progress.json): continue it without --shard "
                             "(with --resume), or delete the folder")
        counts = sorted({n for _, n in others} - {shard[1]})
        if counts:
            raise ValueError(f"{folder.path} holds shards of {counts[0]}, not of {shard[1]}: use --shard i/{counts[0]}, "
                             "or delete the folder")


def _new_map(path: Path, shape: tuple[int, int]) -> np.memmap:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    values[:] = np.nan
    values.flush()
    return values


def _scope_map(path: Path, shape: tuple[int, int], resumed: bool) -> np.memmap:
    """The out-of-scope distances beside the map: continued with it, or new."""
    if resumed and path.exists():
        values = np.lib.format.open_memmap(path, mode="r+")
        if values.shape != shape:
            raise ValueError(f"{path}: shape {values.shape} does not match the lattice {shape}; delete the folder")
        return values
    return _new_map(path, shape)


def _prepare(heat_path: Path, progress_path: Path, params: AnalysisParams, shape: tuple[int, int], resume: bool,
             fresh: dict[str, Any]) -> tuple[np.memmap, dict[str, Any]]:
    """Open the map and progress to continue them, or start both afresh (progress from `fresh`)."""
    progress = read_json(progress_path) if resume else None
    if progress is not None and heat_path.exists():
        progress["params"] = {"mode": "window", "cascade_bar": None, **(progress.get("params") or {})}  # recorded before modes
        if progress.get("params") != asdict(params):
            theirs = progress.get("params") or {}
            diff = {k: (theirs.get(k), v) for k, v in asdict(params).items() if theirs.get(k) != v}
            raise ValueError(f"{progress_path.parent}: cannot resume: the unfinished analysis there was started with other settings "
                             f"(was, now: {diff}); use another --out or delete it")
        heat = np.lib.format.open_memmap(heat_path, mode="r+")
        if heat.shape != shape:
            raise ValueError(f"{heat_path}: map shape {heat.shape} does not match the lattice {shape}; delete the folder")
        return heat, progress
    if progress_path.exists() and not resume:
        raise ValueError(f"{progress_path.parent} holds an unfinished analysis ({progress_path.name}); pass --resume to continue it, "
                         "or delete the folder")
    heat = _new_map(heat_path, shape)
    progress = {"params": asdict(params), "done": [], "skipped": [], "seconds": 0.0, "windows": 0, **fresh}
    atomic_write_json(progress_path, progress)
    return heat, progress


def score_slide(
    model: torch.nn.Module,
    slide_path: str | Path,
    folder: AnalysisFolder,
    *,
    checkpoint: str,
    checkpoint_epoch: int | None = None,
    stride: int = 32,
    mpp: float | None = None,
    min_tissue: float = 0.25,
    tta: bool = False,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    num_workers: int = 2,
    resume: bool = False,
    region_px: int = REGION_PCAM_PX,
    shard: tuple[int, int] | None = None,
    meta: dict[str, Any] | None = None,
    scope: ScopeModel | None = None,
    model_name: str | None = None,
    mode: str = "window",
    threshold: float = 0.5,
    on_start: Callable[[int, int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fill `folder`'s heatmap.npy for `slide_path` (with `shard` (i, n): only shard i's tiles, into its own
    files), and with `scope` (the model's out-of-scope guard; `model_name` names its layers) scope.npy, the
    guard's distance of every window from the same forward pass; returns the state the outputs are written from (lattice, thumbnail, tissue mask, skipped regions,
    windows scored, seconds, the mode used). `meta` is kept in the progress record (what a later merge needs to know).

    `mode` (`scoring_options.SLIDE_MODES`): "window" scores each window alone (the reference); "dense" runs the network once
    over each region and reads every window off its output map (models that cannot scan fall back to
    "window", said in the returned "mode"); "cascade" (unsharded) makes a dense pass (models that cannot scan: one
    window per 3 x 3 block, at stride 32), then scores window by window every cell near one whose probability reaches
    `cascade_bar(threshold)` (`slides/dense.py`)."""
    from ..devices import amp_dtype_for, limit_malloc_arenas
    from ..inference import predict_batch
    from ..transforms import eval_preset

    if not 0 <= min_tissue <= 1:
        raise ValueError(f"min_tissue must be between 0 and 1, not {min_tissue}")
    limit_malloc_arenas()  # before ONNX Runtime's threads and the reading workers start
    if effective_mode(model, mode, stride=stride) != mode:
        log.info("%s cannot be scanned densely: mode %s scores window by window", type(model).__name__, mode)
    mode = effective_mode(model, mode, stride=stride)
    if mode == "cascade" and shard is not None:
        raise ValueError("mode 'cascade' cannot be sharded (the cells near a suspect one may lie in another shard); "
                         "use --mode dense or window with --shard")
    started = time.time()
    device = torch.device(device)
    with open_slide(slide_path, mpp=mpp) as slide:
        lattice = Lattice(slide.dimensions[0], slide.dimensions[1], slide.mpp, stride, region_px)
        try:
            thumb = read_thumbnail(slide)
        except SlideReadError as err:
            raise ValueError(f"{slide_path}: cannot read the slide's overview (truncated or corrupt?): {err}") from err
        slide_info = slide.describe()
    mask = tissue_mask(thumb)
    score = cell_fraction(mask, stride, lattice.shape) >= max(min_tissue, 1e-6)
    params = AnalysisParams(str(Path(slide_path).resolve()), lattice.width, lattice.height, lattice.mpp, stride, min_tissue,
                            tta, str(checkpoint), checkpoint_epoch, region_px, scope.threshold if scope else None, mode,
                            cascade_bar(threshold) if mode == "cascade" else None)
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, not {shard}")
    _check_no_other_layout(folder, shard)
    mine = shard_tiles(lattice, score, shard)
    paths = (folder.heatmap_npy, folder.progress_json) if shard is None else (folder.shard_heatmap(*shard), folder.shard_progress(*shard))
    heat, state = _prepare(*paths, params, lattice.shape, resume,
                           {"shard": list(shard) if shard else None, "tiles": mine, "meta": meta or {}})
    boxes = lattice.tiles()
    distances = None
    if scope is not None:
        distances = _scope_map(folder.scope_npy if shard is None else folder.shard_scope(*shard), lattice.shape,
                               bool(state["done"]) or bool(state.get("done_refine")))
        tap = tap_for(model, model_name or scope.model_name)
    state["resumed"] = bool(state["done"]) or bool(state.get("resumed"))

    def cells(tiles: list[int], todo_mask: np.ndarray) -> int:
        return sum(int(todo_mask[i0:i1, j0:j1].sum()) for i0, i1, j0, j1 in (boxes[k] for k in tiles))

    coarse_dense = mode == "dense" or (mode == "cascade" and can_scan(model))
    probes = block_probes(score) if mode == "cascade" and not coarse_dense else score
    total = cells(mine, probes)
    # the total, for a watcher's progress (windows done, windows/s, time left: `workspace.slides`)
    state.update(windows_total=total, tiles_total=len(mine))
    atomic_write_json(paths[1], state)
    if on_start:
        on_start(total, total - cells([k for k in mine if k not in set(state["done"])], probes))
    model.eval()
    normalize = eval_preset().to(device)
    amp = amp_dtype_for(device, None)
    channels_last = device.type == "cuda"
    scope_layers = tuple(scope.layers) if scope is not None else ()
    resumed_seconds = float(state.get("seconds", 0.0))

    def write(rows: np.ndarray, probs: np.ndarray, features: np.ndarray | None) -> None:
        heat[rows[:, 0], rows[:, 1]] = probs
        if distances is not None:
            distances[rows[:, 0], rows[:, 1]] = scope.distance(features)
        if progress:
            progress(len(rows))

    def run(todo_mask: np.ndarray, done_key: str, dense: bool) -> None:
        """Score the cells of `todo_mask` in this analysis's tiles not yet in `state[done_key]`."""
        done = set(state.setdefault(done_key, []))
        todo = [k for k in mine if k not in done]
        dataset = RegionWindows(Path(slide_path), lattice.mpp, lattice, todo, todo_mask, dense=dense)
        loader = DataLoader(dataset, batch_size=None, num_workers=max(0, min(num_workers, len(todo))), collate_fn=_as_is,
                            pin_memory=device.type == "cuda", persistent_workers=False)
        for item in loader:
            cells = np.asarray(item["cells"]).reshape(-1, 2)
            bad = np.asarray(item["unreadable"]).reshape(-1, 2)
            if len(bad):
                _record_unreadable(slide_path, heat, state, lattice, item, bad)
            if "region" in item:
                probs, features = dense_windows(model, item["region"].to(device), stride, normalize=normalize, tta=tta,
                                                amp_dtype=amp, scope_layers=scope_layers if distances is not None else ())
                at = cells - item["origin"]
                write(cells, probs[at[:, 0], at[:, 1]], None if features is None else features[at[:, 0], at[:, 1]])
                state["windows"] += len(cells)
            elif len(cells):
                images = item["images"]
                for b in range(0, len(images), batch_size):
                    batch = images[b:b + batch_size].to(device, non_blocking=True)
                    if distances is not None:
                        tap.clear()
                    probs = predict_batch(model, batch, tta=tta, amp_dtype=amp, channels_last=channels_last, normalize=normalize)
                    write(cells[b:b + batch_size], probs.float().cpu().numpy(), tap.take() if distances is not None else None)
                state["windows"] += len(images)
            heat.flush()  # the maps first, then the record that this tile is in them
            if distances is not None:
                distances.flush()
            if item.get("last", True):  # a tile is done when its last part is in the maps
                state[done_key].append(int(item["tile"]))
            state["seconds"] = resumed_seconds + time.time() - started
            atomic_write_json(paths[1], state)

    try:
        run(probes, "done", coarse_dense)
        if mode == "cascade":
            _cascade_refine(heat, distances, score, probes, cascade_bar(threshold), state,
                            lambda todo_mask: run(todo_mask, "done_refine", False), dense=coarse_dense,
                            scope_band=scope_cascade_band(scope.threshold) if scope is not None else None,
                            saved=folder.cascade_npy, save_state=lambda: atomic_write_json(paths[1], state))
    finally:
        if distances is not None:
            tap.close()
    heat.flush()
    if distances is not None:
        distances.flush()
    state["complete"] = True  # every tile of this analysis (or shard) is in its map
    state["mode"] = mode
    atomic_write_json(paths[1], state)
    if shard is None:
        folder.cascade_npy.unlink(missing_ok=True)  # the second pass's cells are needed only to resume it
    return {"lattice": lattice, "thumbnail": thumb, "tissue": mask, "scored_mask": score, "skipped": state["skipped"],
            "windows": int(np.isfinite(heat).sum() - (heat == UNREADABLE).sum()), "seconds": state["seconds"], "slide": slide_info,
            "resumed": state["resumed"], "shard": shard, "tiles": len(mine), "mode": mode, "cascade": state.get("cascade")}


def _record_unreadable(slide_path: str | Path, heat: np.ndarray, state: dict[str, Any], lattice: Lattice, item: dict[str, Any],
                       bad: np.ndarray) -> None:
    """Mark a tile's unreadable windows in the map and in the record of skipped regions."""
    log.warning("%s: region tile %d: %d window(s) unreadable, skipped: %s", slide_path, item["tile"], len(bad), item["error"])
    heat[bad[:, 0], bad[:, 1]] = UNREADABLE
    i0, i1, j0, j1 = lattice.tiles()[item["tile"]]
    x0, y0 = lattice.window_origin(bad[:, 0].min(), bad[:, 1].min())
    x1, y1 = lattice.window_origin(bad[:, 0].max(), bad[:, 1].max())
    state["skipped"].append({"tile": item["tile"], "cells": [i0, i1, j0, j1], "unreadable_cells": len(bad),
                             "x": round(float(x0)), "y": round(float(y0)), "width": round(float(x1 - x0 + WINDOW * lattice.f)),
                             "height": round(float(y1 - y0 + WINDOW * lattice.f)), "error": item["error"]})


def _cascade_refine(heat: np.ndarray, distances: np.ndarray | None, score: np.ndarray, probes: np.ndarray, bar: float,
                    state: dict[str, Any], run: Callable[[np.ndarray], None], *, dense: bool,
                    scope_band: tuple[float, float] | None, saved: Path, save_state: Callable[[], None]) -> None:
    """The cascade's second pass: score window by window the cells near suspect ones (`run`), and after a dense pass
    those whose out-of-scope distance lies in `scope_band`. After a dense coarse pass the other cells keep their dense
    values; after probes they take their block's coarse value (and out-of-scope distance), and the probes that are not
    cells to score are cleared.

    After a dense pass the cells to score are chosen from the dense map, which the second pass overwrites cell by cell:
    so they are chosen once, saved to `saved` before any is scored (`state["refine_saved"]`), and a resumed analysis
    reads them back instead of choosing again from a half-refined map."""
    if dense:
        if state.get("refine_saved") and saved.exists():
            refine = np.load(saved)
        else:
            refine = refine_cells(np.asarray(heat), score, bar)
            if distances is not None and scope_band is not None:
                far = np.asarray(distances)
                refine &= ~(far > scope_band[1])  # surely out of scope: its probability counts for nothing
                refine |= score & (far >= scope_band[0]) & (far <= scope_band[1])  # the guard's call could flip: look again
            refine &= np.asarray(heat) != UNREADABLE  # a region that could not be read is not read again
            atomic_write_with(saved, lambda handle: np.save(handle, refine))
            state["refine_saved"] = True
            save_state()
        state["windows_total"] = int(score.sum() + refine.sum())
        run(refine)
    else:
        coarse = block_values(np.asarray(heat), probes)
        refine = refine_cells(coarse, score, bar) & ~probes
        state["windows_total"] = int(probes.sum() + refine.sum())
        run(refine)
        fill_from_blocks(heat, coarse, score)
        if distances is not None:
            fill_from_blocks(distances, block_values(np.asarray(distances), probes), score)
        extra = probes & ~score
        heat[extra] = np.nan
        if distances is not None:
            distances[extra] = np.nan
        refine |= probes & score
    state["cascade"] = cascade_summary(score, probes, refine, bar, dense=dense)
