"""The one module that names an analysis folder's files (one folder per slide)."""

from __future__ import annotations

from pathlib import Path


class AnalysisFolder:
    """`heatmap.npy` (float32 probability per cell; NaN: no tissue or not scored; -1: unreadable),
    `heatmap.png`, `heatmap.tif`, `tissue.png`, `tumour_regions.geojson`, `tiles.csv`, `report.html` (the printable report), `summary.json`
    (written last: its presence means complete) and `progress.json` (while an analysis is under way)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AnalysisFolder({str(self.path)!r})"

    heatmap_npy = property(lambda self: self.path / "heatmap.npy")
    heatmap_png = property(lambda self: self.path / "heatmap.png")
    heatmap_tif = property(lambda self: self.path / "heatmap.tif")
    tissue_png = property(lambda self: self.path / "tissue.png")
    regions_geojson = property(lambda self: self.path / "tumour_regions.geojson")
    tiles_csv = property(lambda self: self.path / "tiles.csv")
    summary_json = property(lambda self: self.path / "summary.json")
    progress_json = property(lambda self: self.path / "progress.json")
    report_html = property(lambda self: self.path / "report.html")

    def is_complete(self) -> bool:
        return self.summary_json.exists()

    def is_started(self) -> bool:
        return self.progress_json.exists()


def slide_folder(out_root: str | Path, slide: str | Path) -> AnalysisFolder:
    """The analysis folder of `slide` under `out_root`: named after the slide's file name without suffix."""
    name = Path(slide).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return AnalysisFolder(Path(out_root) / name[: -len(suffix)])
    return AnalysisFolder(Path(out_root) / Path(name).stem)
