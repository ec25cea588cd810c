"""The slides the viewer may show: slide id -> slide file and analysis folder, in one JSON file of the workspace.

The tile routes turn an id from a URL into a path only through `lookup`: a path never comes from the URL, so
nothing outside the registered slides can be served. (A stand-in for the workspace's slide library: once
`pcam_core.slides.library` is in, it answers the same `lookup`.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_json, read_json
from .folder import AnalysisFolder

INDEX_FILE = "viewer-index.json"
SLIDE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class ViewerSlide:
    slide_id: str
    name: str
    path: Path
    analysis: AnalysisFolder | None
    synthetic: bool = False


def check_slide_id(slide_id: str) -> str:
    if not isinstance(slide_id, str) or not SLIDE_ID.fullmatch(slide_id):
        raise ValueError(f"slide id {slide_id!r} is not valid: 1-64 letters, digits, '-' or '_', starting with a letter or digit")
    return slide_id


class SlideIndex:
    """`<slides_root>/viewer-index.json`: {slide id: {"name", "path", "analysis", "synthetic"}}."""

    def __init__(self, slides_root: str | Path) -> None:
        self.root = Path(slides_root)
        self.file = self.root / INDEX_FILE

    def _read(self) -> dict[str, dict[str, Any]]:
        data = read_json(self.file, {})
        return data if isinstance(data, dict) else {}

    def register(self, slide_id: str, path: str | Path, analysis: str | Path | None = None, *, name: str | None = None,
                 synthetic: bool = False) -> ViewerSlide:
        """Add (or replace) `slide_id`: a slide file read where it is, and its analysis folder if any."""
        check_slide_id(slide_id)
        path = Path(path).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"slide not found: {path}")
        entries = self._read()
        entries[slide_id] = {"name": name or path.name, "path": str(path),
                             "analysis": str(Path(analysis).resolve()) if analysis else None, "synthetic": bool(synthetic)}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.file, entries)
        return self.lookup(slide_id)

    def entries(self) -> list[ViewerSlide]:
        return [self._entry(k, v) for k, v in sorted(self._read().items())]

    @staticmethod
    def _entry(slide_id: str, record: dict[str, Any]) -> ViewerSlide:
        analysis = record.get("analysis")
        return ViewerSlide(slide_id, record.get("name") or slide_id, Path(record["path"]),
                           AnalysisFolder(analysis) if analysis else None, bool(record.get("synthetic")))

    def lookup(self, slide_id: str) -> ViewerSlide:
        """The registered slide `slide_id`; `KeyError` naming it when there is none."""
        check_slide_id(slide_id)
        record = self._read().get(slide_id)
        if record is None:
            raise KeyError(f"no registered slide {slide_id!r}")
        return self._entry(slide_id, record)
