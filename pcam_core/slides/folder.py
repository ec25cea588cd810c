"""The one module that names an analysis folder's files (one folder per slide) and writes its markers."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from ..fileio import atomic_write_text, read_json


@dataclass(frozen=True)
class Progress:
    """How far an unfinished analysis is, from its progress.json: windows scored, their total (None until
    the tissue is found) and the seconds spent; the rate and the time left follow from them."""

    windows_done: int = 0
    windows_total: int | None = None
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        return min(1.0, self.windows_done / self.windows_total) if self.windows_total else 0.0

    @property
    def windows_per_s(self) -> float | None:
        return self.windows_done / self.seconds if self.windows_done and self.seconds > 0 else None

    @property
    def seconds_left(self) -> float | None:
        """An estimate at the rate so far; None before the first windows are scored."""
        rate = self.windows_per_s
        return max(0.0, self.windows_total - self.windows_done) / rate if rate and self.windows_total is not None else None


class AnalysisFolder:
    """`heatmap.npy` (float32 probability per cell; NaN: no tissue or not scored; -1: unreadable), `scope.npy`
    (float32 out-of-scope distance per cell, NaN where not scored; when the model has a guard),
    `heatmap.png`, `heatmap.tif`, `tissue.png`, `tumour_regions.geojson`, `tiles.csv`, `report.html` (the printable report), `summary.json`
    (written last: its presence means complete) and `progress.json` (while an analysis is under way).
    `stopped` (the time a person stopped it, ISO 8601 with its time zone) marks an analysis stopped on request:
    written by `mark_stopped`, removed by `clear_stopped` when it is started again.
    A sharded analysis keeps, until it is merged, `shards/heatmap.I-of-N.npy` and `shards/progress.I-of-N.json`
    per shard and `shards/merge.lock` (the lock its merge is written under)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AnalysisFolder({str(self.path)!r})"

    heatmap_npy = property(lambda self: self.path / "heatmap.npy")
    scope_npy = property(lambda self: self.path / "scope.npy")  # out-of-scope distance per cell (`pcam_core.scope`)
    heatmap_png = property(lambda self: self.path / "heatmap.png")
    heatmap_tif = property(lambda self: self.path / "heatmap.tif")
    tissue_png = property(lambda self: self.path / "tissue.png")
    regions_geojson = property(lambda self: self.path / "tumour_regions.geojson")
    tiles_csv = property(lambda self: self.path / "tiles.csv")
    summary_json = property(lambda self: self.path / "summary.json")
    progress_json = property(lambda self: self.path / "progress.json")
    # the cells the cascade's second pass scores, fixed when that pass starts: a resumed analysis scores the same ones
    cascade_npy = property(lambda self: self.path / "cascade_refine.npy")
    report_html = property(lambda self: self.path / "report.html")
    shards_dir = property(lambda self: self.path / "shards")
    merge_lock = property(lambda self: self.path / "shards" / "merge.lock")
    stopped_marker = property(lambda self: self.path / "stopped")

    @property
    def stopped(self) -> bool:
        """Whether the analysis was stopped on request (and not started again since)."""
        return self.stopped_marker.exists()

    def mark_stopped(self) -> None:
        """Record that the analysis was stopped on request (the folder made if needed)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.stopped_marker, _dt.datetime.now().astimezone().isoformat(timespec="seconds") + "\n")

    def clear_stopped(self) -> None:
        self.stopped_marker.unlink(missing_ok=True)

    def version(self) -> str:
        """A token that changes whenever the analysis is written again (summary.json's modification time):
        put in the URLs of what is drawn from it, so that no cache serves an older analysis. "" when incomplete."""
        try:
            return format(self.summary_json.stat().st_mtime_ns, "x")
        except FileNotFoundError:
            return ""

    def shard_heatmap(self, i: int, n: int) -> Path:
        return self.shards_dir / f"heatmap.{i}-of-{n}.npy"

    def shard_scope(self, i: int, n: int) -> Path:
        return self.shards_dir / f"scope.{i}-of-{n}.npy"

    def shard_progress(self, i: int, n: int) -> Path:
        return self.shards_dir / f"progress.{i}-of-{n}.json"

    def shard_progress_files(self) -> dict[tuple[int, int], Path]:
        """The shard progress files present, by (i, n)."""
        found = {}
        for path in sorted(self.shards_dir.glob("progress.*-of-*.json")) if self.shards_dir.is_dir() else []:
            i, _, n = path.name[len("progress."):-len(".json")].partition("-of-")
            if i.isdigit() and n.isdigit():
                found[int(i), int(n)] = path
        return found

    def is_complete(self) -> bool:
        return self.summary_json.exists()

    def is_started(self) -> bool:
        return self.progress_json.exists() or bool(self.shard_progress_files())

    def progress(self) -> Progress:
        """Where the unsharded analysis under way here stands (nothing done when it has not started)."""
        record = read_json(self.progress_json, default=None) or {}
        total = record.get("windows_total")
        return Progress(int(record.get("windows", 0)), None if total is None else int(total), float(record.get("seconds", 0.0)))


def slide_folder(out_root: str | Path, slide: str | Path) -> AnalysisFolder:
    """The analysis folder of `slide` under `out_root`: named after the slide's file name without suffix."""
    name = Path(slide).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return AnalysisFolder(Path(out_root) / name[: -len(suffix)])
    return AnalysisFolder(Path(out_root) / Path(name).stem)
