"""Cases (a patient's lymph-node slides), their pN stages and the agreement with reference stages.

A slide's class is the size class of its largest metastasis as its analysis's summary.json states it
(`size_class`: none/itc/micro/macro, or "not assessed"); a patient's stage follows from its slides' classes by the
CAMELYON17 rules (`staging.pn_stage`). A slide not assessed, or listed but not analysed, counts as negative
and makes the stage provisional: it can only rise once that slide is read.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from ..staging import NODE_CLASSES, PN_STAGES, SIZE_CLASSES, deciding_classes, node_size_class, pn_stage
from .truth import slide_key


@dataclass(frozen=True)
class Case:
    """A patient's stage from its slides: `classes` maps each slide to its class (a size class, "not assessed" or
    "not analysed"); `provisional` when any slide is not assessed or not analysed."""

    patient: str
    stage: str
    classes: dict[str, str]
    deciding: list[str] = field(default_factory=list)

    @property
    def unread(self) -> list[str]:
        return [slide for slide, name in self.classes.items() if name not in SIZE_CLASSES]

    @property
    def provisional(self) -> bool:
        return bool(self.unread)


def read_cases(path: str | Path) -> dict[str, list[str]]:
    """Patients and their slide names, from a `patient,slide` CSV (a header optional) or from a folder holding one
    folder per patient (its slides: the analysis folders or slide files inside)."""
    path = Path(path)
    cases: dict[str, list[str]] = {}
    if path.is_dir():
        for patient in sorted(p for p in path.iterdir() if p.is_dir()):
            cases[patient.name] = [slide_key(s.name) for s in sorted(patient.iterdir()) if not s.name.startswith(".")]
    elif path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                if not row or not row[0].strip() or [c.strip().lower() for c in row[:2]] == ["patient", "slide"]:
                    continue
                if len(row) < 2 or not row[1].strip():
                    raise ValueError(f"{path}: the row {row} has no slide (expected patient,slide)")
                cases.setdefault(_patient_key(row[0]), []).append(slide_key(row[1]))
    else:
        raise FileNotFoundError(f"cases not found: {path} (a patient,slide CSV or a folder per patient)")
    if not cases:
        raise ValueError(f"{path}: no cases in it (expected patient,slide rows or a folder per patient)")
    return cases


def _patient_key(name: str) -> str:
    name = name.strip()
    return name[:-4] if name.lower().endswith(".zip") else name


def stage_case(patient: str, classes: dict[str, str]) -> Case:
    """The pN stage of a patient whose slides have these classes (unread slides counting as negative)."""
    read = {slide: name for slide, name in classes.items() if name in SIZE_CLASSES}
    stage = pn_stage(list(read.values()))
    deciding = [slide for slide, name in read.items() if name in deciding_classes(stage)]
    return Case(patient, stage, dict(classes), deciding)


def write_cases_csv(path: str | Path, cases: list[Case]) -> None:
    """`patient,stage,provisional,deciding_slides,unread_slides` (slides joined by ';')."""
    lines = ["patient,stage,provisional,deciding_slides,unread_slides"]
    lines += [f"{c.patient},{c.stage},{str(c.provisional).lower()},{';'.join(c.deciding)},{';'.join(c.unread)}" for c in cases]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def write_submission(path: str | Path, cases: list[Case]) -> None:
    """CAMELYON17's submission format: `patient,stage` header, then per patient `<patient>.zip,<stage>` and a
    `<slide>.tif,<class>` row per slide (negative/itc/micro/macro; an unread slide as negative, as its stage)."""
    lines = ["patient,stage"]
    for case in cases:
        lines.append(f"{case.patient}.zip,{case.stage}")
        lines += [f"{slide}.tif,{NODE_CLASSES.get(name, 'negative')}" for slide, name in case.classes.items()]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def read_stages(path: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """A CAMELYON17 reference (or submission) CSV: ({patient: stage}, {slide: size class}); a row is a patient's
    when its value is a pN stage, a node's when it is a node class."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stages not found: {path}")
    stages: dict[str, str] = {}
    nodes: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if len(row) < 2 or row[0].strip().lower() == "patient":
                continue
            name, value = row[0].strip(), row[1].strip()
            if value in PN_STAGES:
                stages[_patient_key(name)] = value
            else:
                try:
                    nodes[slide_key(name)] = node_size_class(value)
                except ValueError as err:
                    raise ValueError(f"{path}: {name}: {value!r} is neither a pN stage ({', '.join(PN_STAGES)}) "
                                     f"nor a node class ({', '.join(NODE_CLASSES.values())})") from err
    return stages, nodes


def _confusion(truth: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(truth, predicted, labels=labels) if truth else np.zeros((len(labels),) * 2, dtype=int)
    return {"labels": labels, "rows": "reference", "columns": "ours", "matrix": matrix.tolist()}


def quadratic_kappa(reference: list[str], ours: list[str]) -> float | None:
    """Cohen's kappa with quadratic weights over the ordered pN stages (CAMELYON17's measure); None when undefined
    (no patients, or one stage only on both sides)."""
    from sklearn.metrics import cohen_kappa_score

    if not reference:
        return None
    value = cohen_kappa_score(reference, ours, labels=list(PN_STAGES), weights="quadratic")
    return None if not np.isfinite(value) else float(value)


def agreement(cases: list[Case], reference_path: str | Path) -> dict[str, Any]:
    """Kappa and the confusion of stages (patients in both) and of slide classes (slides read in both)."""
    stages, nodes = read_stages(reference_path)
    both = [c for c in cases if c.patient in stages]
    ref, ours = [stages[c.patient] for c in both], [c.stage for c in both]
    slides = {slide: name for c in cases for slide, name in c.classes.items() if name in SIZE_CLASSES and slide in nodes}
    return {
        "kappa": quadratic_kappa(ref, ours), "patients": len(both),
        "patients_without_reference": [c.patient for c in cases if c.patient not in stages],
        "provisional_patients": sum(c.provisional for c in both),
        "stage_confusion": _confusion(ref, ours, list(PN_STAGES)),
        "slide_confusion": _confusion([nodes[s] for s in slides], list(slides.values()), list(SIZE_CLASSES)),
        "slides": len(slides),
    }


__all__ = ["Case", "agreement", "quadratic_kappa", "read_cases", "read_stages", "stage_case", "write_cases_csv",
           "write_submission"]
