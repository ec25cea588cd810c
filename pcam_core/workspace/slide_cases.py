"""Cases of the slide library: a patient's lymph-node slides, grouped by a person, and their pN stage.

Kept in the workspace's `slide_cases.json` ({patient: [slide id, ...]}, written atomically). A case's stage comes from
its slides' analyses with one run and stride (their summary.json size class) by the CAMELYON17 rules
(`evaluation.cases.stage_case`, `staging.pn_stage`): a slide not assessed or not analysed counts as negative and
keeps the stage provisional. No Streamlit here; the Slides page draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundled import BUNDLED
from ..evaluation.cases import Case, stage_case
from ..fileio import atomic_write_json, read_json
from ..slides.folder import AnalysisFolder
from .reviews import ReviewStore
from .slide_library import SlideEntry, SlideLibrary
from .slide_reviews import slide_reviews

CASES_FILE = "slide_cases.json"
NOT_ANALYSED = "not analysed"


def cases_path(root: str | Path) -> Path:
    return Path(root) / CASES_FILE


def load_cases(root: str | Path) -> dict[str, list[str]]:
    """The workspace's cases: patient -> slide ids (empty when none were made)."""
    data = read_json(cases_path(root), default=None) or {}
    return {str(patient): [str(s) for s in slides] for patient, slides in data.items()}


def save_case(root: str | Path, patient: str, slides: list[str]) -> dict[str, list[str]]:
    """Make or replace the case of `patient` with these slide ids; no slides removes it. Returns every case."""
    patient = patient.strip()
    if not patient:
        raise ValueError("a case needs a patient name")
    if "," in patient:
        raise ValueError(f"a patient name cannot hold a comma (it goes into CSV files): {patient!r}")
    cases = load_cases(root)
    if slides:
        cases[patient] = list(dict.fromkeys(slides))
    else:
        cases.pop(patient, None)
    atomic_write_json(cases_path(root), dict(sorted(cases.items())))
    return cases


@dataclass(frozen=True)
class CaseSlide:
    """One slide of a case: its library name, class (its summary's size class, "not assessed" or "not analysed"),
    its analysis (folder and summary; None when not analysed) and the current reviews of it."""

    name: str
    size_class: str
    folder: AnalysisFolder | None = None
    summary: dict[str, Any] | None = None
    reviews: list[dict[str, Any]] = field(default_factory=list)
    synthetic: bool = False


def case_slides(library: SlideLibrary, slide_ids: list[str], run: str | Path = BUNDLED, *, stride: int = 32,
                reviews: ReviewStore | None = None, entries: list[SlideEntry] | None = None) -> list[CaseSlide]:
    """The case's slides (library ids) with their analyses with `run` at `stride` and, given a store, their reviews
    (`entries`: the library's `slides()`, when the caller has them)."""
    by_id = {entry.id: entry for entry in (library.slides() if entries is None else entries)}
    out = []
    for slide in slide_ids:
        entry = by_id.get(slide)
        state = library.analysis(slide, run, stride=stride) if entry is not None else None
        summary = state.summary if state is not None and state.state == "done" else None
        said = (slide_reviews(reviews, [slide, *entry.copies], run=state.run)
                if reviews is not None and entry is not None and state is not None and summary is not None else [])
        out.append(CaseSlide(entry.name if entry else slide, (summary or {}).get("size_class", NOT_ANALYSED),
                             state.folder if state is not None and summary is not None else None, summary, said,
                             bool(entry and entry.synthetic) or bool((summary or {}).get("synthetic"))))
    return out


def library_cases(library: SlideLibrary, run: str | Path = BUNDLED, *, stride: int = 32) -> list[Case]:
    """Every case of the library with its stage from the analyses with `run` at `stride`; a case's slides are
    named by their library name, its classes those of their summaries ("not assessed", "not analysed")."""
    entries = library.slides()
    return [stage_case(patient, {s.name: s.size_class for s in case_slides(library, slides, run, stride=stride, entries=entries)})
            for patient, slides in load_cases(library.root).items()]


__all__ = ["CASES_FILE", "NOT_ANALYSED", "CaseSlide", "case_slides", "cases_path", "library_cases", "load_cases", "save_case"]
