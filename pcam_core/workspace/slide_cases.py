"""Cases of the slide library: a patient's lymph-node slides, grouped by a person, and their pN stage.

Kept in the workspace's `slide_cases.json` ({patient: [slide id, ...]}, written atomically). A case's stage comes from
its slides' analyses with one run and stride (their summary.json size class) by the CAMELYON17 rules
(`evaluation.cases.stage_case`, `staging.pn_stage`): a slide not assessed or not analysed counts as negative and
keeps the stage provisional. No Streamlit here; the Slides page draws it.
"""

from __future__ import annotations

from pathlib import Path

from ..bundled import BUNDLED
from ..evaluation.cases import Case, stage_case
from ..fileio import atomic_write_json, read_json
from .slide_library import SlideLibrary

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


def library_cases(library: SlideLibrary, run: str | Path = BUNDLED, *, stride: int = 32) -> list[Case]:
    """Every case of the library with its stage from the analyses with `run` at `stride`; a case's slides are
    named by their library name, its classes those of their summaries ("not assessed", "not analysed")."""
    names = {entry.id: entry.name for entry in library.slides()}
    staged = []
    for patient, slides in load_cases(library.root).items():
        classes = {}
        for slide in slides:
            state = library.analysis(slide, run, stride=stride) if slide in names else None
            summary = state.summary if state is not None and state.state == "done" else None
            classes[names.get(slide, slide)] = (summary or {}).get("size_class", NOT_ANALYSED)
        staged.append(stage_case(patient, classes))
    return staged


__all__ = ["CASES_FILE", "NOT_ANALYSED", "cases_path", "library_cases", "load_cases", "save_case"]
