"""`pcam slide`'s engine: one slide or a folder of slides, each into its own analysis folder.

A completed analysis (its summary.json exists) is never recomputed: it is reported "already done".
One slide that fails (not a slide, truncated, no resolution) is listed with its reason and the others
go on. `shard=(i, n)` takes the i-th of n contiguous parts of the sorted slide list.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..fileio import atomic_write_json, read_json
from .analysis import UNREADABLE, score_slide
from .demo import size_class
from .folder import AnalysisFolder, slide_folder
from .reader import SLIDE_SUFFIXES
from .report import write_report
from .outputs import tumour_regions, valid_cells, write_heatmap_png, write_heatmap_tif, write_regions, write_tiles_csv, write_tissue_png

log = logging.getLogger(__name__)

TOP_K = 10  # slide_topk_mean: the mean of the k highest cell probabilities


def find_slides(path: str | Path) -> list[Path]:
    """`path` itself when a file, else the slide-like files directly in the folder, sorted by name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_file():
        return [path]
    slides = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith("."))
    if not slides:
        raise FileNotFoundError(f"no slide files in {path} (looked for {', '.join(SLIDE_SUFFIXES)})")
    return slides


def summarise(heat: np.ndarray, regions: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Slide-level figures from the map and its regions."""
    values = np.sort(heat[valid_cells(heat)])[::-1]
    largest = max((f["properties"]["longest_diameter_mm"] for f in regions), default=0.0)
    return {
        "slide_score": float(values[0]) if len(values) else 0.0,
        "slide_topk_mean": float(values[:TOP_K].mean()) if len(values) else 0.0,
        "top_k": TOP_K,
        "tumour_area_mm2": float(sum(f["properties"]["area_mm2"] for f in regions)),
        "regions": len(regions),
        "largest_diameter_mm": float(largest),
        "size_class": size_class(largest),
        "cells_scored": int(len(values)),
        "cells_at_threshold": int((values >= threshold).sum()),
        "cells_unreadable": int((heat == UNREADABLE).sum()),
    }


def analyse_slide(
    model: torch.nn.Module,
    slide: str | Path,
    folder: AnalysisFolder,
    *,
    run: str,
    checkpoint: str,
    checkpoint_epoch: int | None,
    model_name: str,
    threshold: float = 0.5,
    progress_factory: Callable[[str], tuple[Callable[[int, int], None], Callable[[int], None]]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Score one slide into `folder` and write every output; returns summary.json's content."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1 (exclusive), not {threshold}")
    on_start, progress = progress_factory(Path(slide).name) if progress_factory else (None, None)
    state = score_slide(model, slide, folder, checkpoint=checkpoint, checkpoint_epoch=checkpoint_epoch,
                        on_start=on_start, progress=progress, **options)
    lattice = state["lattice"]
    heat = np.load(folder.heatmap_npy, mmap_mode="r")
    regions = tumour_regions(heat, lattice, threshold)
    write_regions(folder, regions)
    tiles = write_tiles_csv(folder, heat, lattice)
    write_tissue_png(folder, state["tissue"])
    write_heatmap_tif(folder, heat, lattice)
    summary = {
        **summarise(heat, regions, threshold),
        "slide": str(slide), "slide_info": state["slide"], "run": str(run), "model": model_name, "checkpoint": checkpoint,
        "checkpoint_epoch": checkpoint_epoch, "threshold": threshold, "mpp": lattice.mpp, "stride": lattice.stride,
        "cell_um": lattice.cell_px * lattice.mpp, "map_shape": list(heat.shape), "windows_scored": tiles,
        "tta": bool(options.get("tta", False)), "min_tissue": options.get("min_tissue", 0.25),
        "seconds": round(float(state["seconds"]), 3), "resumed": state["resumed"],
        "skipped_regions": state["skipped"],
        "region_list": [f["properties"] for f in regions],
        "lattice": "cell (i, j) = PCam-scale px [stride*j, stride*j+stride) x [stride*i, stride*i+stride) from level-0 (0, 0); "
                   "window top-left = PCam px (stride*j + stride/2 - 48, stride*i + stride/2 - 48)",
    }
    title = (f"{Path(slide).name}: slide score {summary['slide_score']:.3f}, {summary['regions']} region(s), "
             f"largest {summary['largest_diameter_mm']:.2f} mm ({summary['size_class']})")
    write_heatmap_png(folder, heat, state["thumbnail"], lattice, threshold, title)
    write_report(folder, summary)
    atomic_write_json(folder.summary_json, summary)  # last: its presence marks the analysis complete
    folder.progress_json.unlink(missing_ok=True)
    return summary


def analyse(
    run: str | Path,
    input_path: str | Path,
    out: str | Path,
    *,
    shard: tuple[int, int] | None = None,
    device: str = "auto",
    which: str = "best",
    resume: bool = False,
    threshold: float = 0.5,
    progress_factory: Callable | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Analyse every slide of `input_path` (a slide or a folder) into `out/<slide name>/`.

    Returns one record per slide: {"slide", "folder", "status" ("done", "already done", "failed"),
    "summary" or "error"}. With a single slide file, its failure raises instead."""
    from ..devices import resolve_device
    from ..predict import shard_indices
    from ..runs import checkpoint_path
    from ..checkpoint import model_from_checkpoint

    slides = find_slides(input_path)
    single = Path(input_path).is_file()
    slides = [slides[k] for k in shard_indices(len(slides), shard)]
    dev = resolve_device(device)
    ckpt = checkpoint_path(run, which)
    model, config, info = model_from_checkpoint(ckpt, dev)
    records = []
    for slide in slides:
        folder = slide_folder(out, slide) if not single else AnalysisFolder(Path(out))
        record: dict[str, Any] = {"slide": str(slide), "folder": str(folder.path)}
        if folder.is_complete():
            record.update(status="already done", summary=read_json(folder.summary_json))
            records.append(record)
            continue
        try:
            summary = analyse_slide(model, slide, folder, run=str(run), checkpoint=str(ckpt), checkpoint_epoch=info.get("epoch"),
                                    model_name=config.model.name, threshold=threshold, device=dev, resume=resume,
                                    progress_factory=progress_factory, **options)
        except (ValueError, FileNotFoundError, OSError) as err:
            if single:
                raise
            log.warning("%s: %s", slide, err)
            record.update(status="failed", error=str(err))
        else:
            record.update(status="done", summary=summary)
        records.append(record)
    return records
