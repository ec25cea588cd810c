"""`pcam slide`'s engine: one slide or a folder of slides, each into its own analysis folder.

A completed analysis (its summary.json exists) is never recomputed: it is reported "already done".
One slide that fails (not a slide, truncated, no resolution) is listed with its reason and the others
go on.

Sharding (`shard=(i, n)`, or under torchrun shard RANK/WORLD_SIZE): when the input is a folder of at least
n slides, shard i takes the i-th of n contiguous parts of the sorted slide list; when it is one slide, or a
folder of fewer slides than shards, every slide is split and shard i scores the i-th part of each slide's
region tiles (`analysis.shard_tiles`). A slide's outputs are written once all its shards are complete: by
the shard that completes it (under `shards.merge_lock`), or by `merge()` (`pcam slide --merge`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..decision import DEFAULT_THRESHOLD, check_threshold, is_tumour
from ..fileio import atomic_write_json, read_json
from ..scoring_options import AUTO_WORKERS, ScoringOptions
from ..sharding import shard_indices
from ..scope import ScopeModel
from .analysis import UNREADABLE, score_slide
from .dense import effective_mode
from .scope_map import NOT_ASSESSED, NOT_ASSESSED_CLASS, OUT_OF_SCOPE, assessed_map, slide_scope
from .shards import merge_lock, merge_shards, missing_shards, shard_records
from .decision import TOP_K, SlideDecision, load_slide_decision, slide_decision
from .folder import AnalysisFolder, slide_folder
from .reader import SLIDE_SUFFIXES, slide_files
from .report import write_report
from .outputs import tumour_regions, valid_cells, write_heatmap_png, write_heatmap_tif, write_regions, write_tiles_csv, write_tissue_png

log = logging.getLogger(__name__)

SLIDE_WORKERS = 2  # region-reading processes when the options say "automatic" (-1)


def is_one_slide(path: str | Path) -> bool:
    """A slide file, or a folder that is one slide (a DICOM series' folder): analysed into `out` itself."""
    path = Path(path)
    return path.is_file() or (path.is_dir() and slide_files(path) == [path])


def find_slides(path: str | Path) -> list[Path]:
    """`path` itself when a file, else the slide-like files directly in the folder, sorted by name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if is_one_slide(path):
        return [path]
    slides = slide_files(path)
    if not slides:
        raise FileNotFoundError(f"no slide files in {path} (looked for {', '.join(SLIDE_SUFFIXES)})")
    return slides


def summarise(heat: np.ndarray, regions: list[dict[str, Any]], threshold: float, cell_mm2: float,
              decision: SlideDecision) -> dict[str, Any]:
    """Slide-level figures from the map (an `assessed_map`: out-of-scope cells count for no score) and its regions,
    which are decided here (reported or below the reporting threshold, `slides.decision`); `cells_scored` counts
    every window scored, in scope or not. `slide_score` is the slide decision's tumour score, `slide_max_cell`
    the highest cell probability (what `slide_score` meant before the slide decision)."""
    values = np.sort(heat[valid_cells(heat)])[::-1]
    decided = slide_decision(values, regions, threshold, cell_mm2, decision)
    return {
        **decided,
        "slide_max_cell": decided["slide_features"]["max_cell"],
        "slide_topk_mean": decided["slide_features"]["topk_mean"],
        "top_k": TOP_K,
        "regions": len(regions),
        "cells_scored": int(len(values) + (heat == OUT_OF_SCOPE).sum()),
        "cells_at_threshold": int(is_tumour(values, threshold).sum()),
        "cells_unreadable": int((heat == UNREADABLE).sum()),
    }


def write_outputs(folder: AnalysisFolder, state: dict[str, Any], meta: dict[str, Any], threshold: float) -> dict[str, Any]:
    """Every output from the folder's heatmap.npy and a scoring `state` (`score_slide`'s or `merge_shards`'s);
    summary.json last. `meta`: slide (as given), run, model, checkpoint, checkpoint_epoch, tta, min_tissue, mode."""
    threshold = check_threshold(threshold)
    lattice = state["lattice"]
    heat = np.load(folder.heatmap_npy, mmap_mode="r")
    distances = np.load(folder.scope_npy, mmap_mode="r") if folder.scope_npy.exists() else None
    guard = meta.get("scope")
    scored = valid_cells(heat)
    assessed = assessed_map(heat, distances, guard)  # out of scope: no probability counts, no region forms there
    outside = assessed == OUT_OF_SCOPE
    scope = slide_scope(scored, outside, mpp=lattice.mpp, mpp_source=state["slide"].get("mpp_source", "metadata"), guard=guard,
                        synthetic_model=bool(meta.get("synthetic_model")))
    regions = tumour_regions(assessed, lattice, threshold)
    tiles = write_tiles_csv(folder, heat, lattice, distances, guard["threshold"] if guard else None)
    write_tissue_png(folder, state["tissue"])
    write_heatmap_tif(folder, heat, lattice)
    summary = {
        **summarise(assessed, regions, threshold, lattice.cell_mm**2, SlideDecision.from_record(meta["decision"])
                    if meta.get("decision") else SlideDecision()),
        "scope": scope,
        "slide": meta["slide"], "slide_info": state["slide"], "run": meta["run"], "model": meta["model"],
        "checkpoint": meta["checkpoint"], "checkpoint_epoch": meta["checkpoint_epoch"], "threshold": threshold, "mpp": lattice.mpp,
        "stride": lattice.stride, "cell_um": lattice.cell_px * lattice.mpp, "map_shape": list(heat.shape), "windows_scored": tiles,
        "tta": bool(meta.get("tta", False)), "min_tissue": meta.get("min_tissue", 0.25),
        "seconds": round(float(state["seconds"]), 3), "resumed": state["resumed"], "mode": meta.get("mode", "window"),
        "skipped_regions": state["skipped"],
        "region_list": [f["properties"] for f in regions],
        "lattice": "cell (i, j) = PCam-scale px [stride*j, stride*j+stride) x [stride*i, stride*i+stride) from level-0 (0, 0); "
                   "window top-left = PCam px (stride*j + stride/2 - 48, stride*i + stride/2 - 48)",
    }
    if not scope["in_scope"]:
        summary["call"] = summary["size_class"] = NOT_ASSESSED
        for feature in regions:  # a slide not assessed gives no size class, not even to a region it would report
            props = feature["properties"]
            props.update(size_class=None, assessed=False)
            # nor a "Tumor" annotation in QuPath (QA: three on a skin slide): named and classed as what it is
            props["name"] = f"{props['name']} (slide not assessed: out of the model's scope)"
            props["classification"] = {"name": NOT_ASSESSED_CLASS, "color": [120, 120, 120]}
    write_regions(folder, regions, None if scope["in_scope"] else {"call": NOT_ASSESSED, "scope": scope})
    if state.get("cascade"):
        summary["cascade"] = state["cascade"]
    if state.get("shards"):  # seconds above: the shards' seconds summed (compute time, not wall time)
        summary["shards"] = state["shards"]
    title = (f"{Path(meta['slide']).name}: slide score {summary['slide_score']:.3f}, {summary['regions_reported']} reported "
             f"region(s) ({summary['regions_below_threshold']} below the reporting threshold), largest {summary['largest_diameter_mm']:.2f} mm ({summary['size_class']})" if scope["in_scope"] else
             f"{Path(meta['slide']).name}: NOT ASSESSED, {scope['out_of_scope_fraction']:.0%} of the tissue out of the model's scope (hatched)")
    write_heatmap_png(folder, assessed, state["thumbnail"], lattice, threshold, title)
    write_report(folder, summary)
    atomic_write_json(folder.summary_json, summary)  # last: its presence marks the analysis complete
    return summary


def merge_folder(folder: AnalysisFolder, threshold: float, *, partial_ok: bool = False) -> dict[str, Any] | None:
    """Merge `folder`'s shards and write its outputs, once: under the merge lock, and only if no other
    process did meanwhile; the shard files are removed after. When shards are missing: None with
    `partial_ok`, else a ValueError naming them."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(merge_lock(folder))
        except FileNotFoundError:  # shards/ is gone: another process merged (summary.json was written first)
            if folder.is_complete():
                return read_json(folder.summary_json)
            raise ValueError(f"{folder.path}: no shards to merge (no {folder.shards_dir.name}/ folder)") from None
        if folder.is_complete():
            return read_json(folder.summary_json)
        n, records = shard_records(folder)
        if partial_ok and missing_shards(n, records):
            return None
        state = merge_shards(folder, n, records)
        summary = write_outputs(folder, state, state["meta"], threshold)
        shutil.rmtree(folder.shards_dir, ignore_errors=True)
        return summary


def analyse_slide(
    model: torch.nn.Module,
    slide: str | Path,
    folder: AnalysisFolder,
    *,
    run: str,
    checkpoint: str,
    checkpoint_epoch: int | None,
    model_name: str,
    threshold: float = DEFAULT_THRESHOLD,
    synthetic_model: bool = False,
    shard: tuple[int, int] | None = None,
    scope: ScopeModel | None = None,
    decision: SlideDecision | None = None,
    mode: str | None = None,
    progress_factory: Callable[[str], tuple[Callable[[int, int], None], Callable[[int], None]]] | None = None,
    **options: Any,
) -> dict[str, Any] | None:
    """Score one slide into `folder` and write every output; returns summary.json's content. `decision`: the
    run's slide decision (`slides.decision.load_slide_decision`; None: the default). With `shard`,
    score that shard of the slide; the outputs are written (and the summary returned) only when this shard
    completes the set, else None. `mode`: how the windows are scored (`dense.effective_mode`: None is the cascade, for
    a shard the per-window reference)."""
    threshold = check_threshold(threshold)
    on_start, progress = progress_factory(Path(slide).name) if progress_factory else (None, None)
    mode = effective_mode(model, mode, stride=options.get("stride", 32), sharded=shard is not None)
    meta = {"slide": str(slide), "run": str(run), "model": model_name, "checkpoint": checkpoint, "checkpoint_epoch": checkpoint_epoch,
            "tta": bool(options.get("tta", False)), "min_tissue": options.get("min_tissue", 0.25),
            "scope": scope.record() if scope is not None else None, "decision": (decision or SlideDecision()).record(),
            "mode": mode, "synthetic_model": synthetic_model}
    state = score_slide(model, slide, folder, checkpoint=checkpoint, checkpoint_epoch=checkpoint_epoch, shard=shard, meta=meta,
                        scope=scope, model_name=model_name, mode=mode, threshold=threshold, on_start=on_start, progress=progress,
                        **options)
    if shard is None:
        summary = write_outputs(folder, state, meta, threshold)
        folder.progress_json.unlink(missing_ok=True)
        return summary
    return merge_folder(folder, threshold, partial_ok=True)  # None while another shard is at work: the last one merges


def torchrun_shard() -> tuple[tuple[int, int], int] | None:
    """((RANK, WORLD_SIZE), LOCAL_RANK) when this process is one of several torchrun started, else None."""
    from ..distributed import launched_by_torchrun

    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return None
    return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])), int(os.environ.get("LOCAL_RANK", 0))


def plan(input_path: str | Path, out: str | Path, shard: tuple[int, int] | None) -> tuple[list[tuple[Path, AnalysisFolder]], tuple[int, int] | None]:
    """The (slide, analysis folder) pairs this process works on, and the shard of each slide it scores (None:
    whole slides): a folder of at least n slides is split by slide, one slide or fewer slides by tiles."""
    slides = find_slides(input_path)
    single = is_one_slide(input_path)
    pairs = [(slide, AnalysisFolder(Path(out)) if single else slide_folder(out, slide)) for slide in slides]
    if shard is None or shard[1] == 1:
        return pairs, None
    if single or len(slides) < shard[1]:
        return pairs, shard
    return [pairs[k] for k in shard_indices(len(pairs), shard)], None


def analyse(
    run: str | Path,
    input_path: str | Path,
    out: str | Path,
    options: ScoringOptions = ScoringOptions(),
    *,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    progress_factory: Callable | None = None,
    **slide_options: Any,
) -> list[dict[str, Any]]:
    """Analyse every slide of `input_path` (a slide or a folder) into `out/<slide name>/` (a slide file: into `out`).

    `options`: checkpoint, device, TTA, batch size, region-reading worker processes (-1: `SLIDE_WORKERS`) and
    the threshold of the regions (None: the run's own). `slide_options`: `score_slide`'s stride, mpp,
    min_tissue, region_px. Under torchrun (RANK, WORLD_SIZE in the environment) each process takes shard
    RANK/WORLD_SIZE on device cuda:LOCAL_RANK (or the CPU), and the last to finish a slide writes its outputs.
    Returns one record per slide: {"slide", "folder", "status" ("done", "already done", "shard done",
    "failed"), "summary" or "error"; with a shard of a slide also "shard" and "missing" (the shards still
    at work when this one finished)}. With a single slide file, its failure raises instead."""
    from ..devices import resolve_device
    from ..loading import load_run_model

    local_rank = 0
    launched = torchrun_shard()
    if launched is not None:
        if shard is not None:
            raise ValueError(f"--shard {shard[0]}/{shard[1]} under torchrun: torchrun already gives each process its shard "
                             "(RANK/WORLD_SIZE); drop --shard, or run without torchrun")
        shard, local_rank = launched
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be i/n with 0 <= i < n, not {shard[0]}/{shard[1]}")
    pairs, slide_shard = plan(input_path, out, shard)
    single = is_one_slide(input_path)
    dev = resolve_device(options.device, local_rank)
    loaded = load_run_model(run, checkpoint=options.checkpoint, device=dev)
    model, config, info, ckpt = loaded.model, loaded.config, loaded.info, loaded.checkpoint
    threshold = options.threshold_or(loaded.threshold)
    decision = load_slide_decision(loaded.run.folder.slide_decision_path)
    scoring = {"tta": options.tta, "batch_size": options.batch_size,
               "num_workers": SLIDE_WORKERS if options.workers == AUTO_WORKERS else options.workers}
    records = []
    for slide, folder in pairs:
        record: dict[str, Any] = {"slide": str(slide), "folder": str(folder.path)}
        if slide_shard:
            record["shard"] = f"{slide_shard[0]}/{slide_shard[1]}"
        if folder.is_complete():
            record.update(status="already done", summary=read_json(folder.summary_json))
            records.append(record)
            continue
        try:
            summary = analyse_slide(model, slide, folder, run=loaded.run.arg, checkpoint=str(ckpt), checkpoint_epoch=info.get("epoch"),
                                    model_name=config.model.name, threshold=threshold, scope=loaded.scope,
                                    synthetic_model=bool(info.get("synthetic_data")), decision=decision, device=dev, resume=resume,
                                    shard=slide_shard, progress_factory=progress_factory, **scoring, **slide_options)
        except (ValueError, FileNotFoundError, OSError) as err:
            if single:
                raise
            log.warning("%s: %s", slide, err)
            record.update(status="failed", error=str(err))
        else:
            if summary is None:
                n, others = shard_records(folder)
                record.update(status="shard done", missing=missing_shards(n, others))
            else:
                record.update(status="done", summary=summary)
        records.append(record)
    return records


def merge(input_path: str | Path, out: str | Path, *, threshold: float = DEFAULT_THRESHOLD) -> list[dict[str, Any]]:
    """Write the outputs of sharded analyses whose shards are all complete (`pcam slide --merge`); no model
    is loaded. Records as `analyse` returns them; a slide whose shards are not all complete is "failed"
    with the missing shards named (with a single slide file: raises)."""
    single = is_one_slide(input_path)
    pairs, _ = plan(input_path, out, None)
    records = []
    for slide, folder in pairs:
        record: dict[str, Any] = {"slide": str(slide), "folder": str(folder.path)}
        if folder.is_complete():
            record.update(status="already done", summary=read_json(folder.summary_json))
        else:
            try:
                record.update(status="done", summary=merge_folder(folder, threshold))
            except (ValueError, FileNotFoundError, OSError) as err:
                if single:
                    raise
                record.update(status="failed", error=str(err))
        records.append(record)
    return records
