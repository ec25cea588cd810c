"""Evaluate analysed slides against their truth, as CAMELYON16 and CAMELYON17 did: lesion detections per slide,
FROC, slide ROC-AUC with its interval, lesion sensitivity per size class, and (given cases) pN stages with their
agreement to reference stages. Writes into `out`: `detections/<slide>.csv`, `froc.json`, `froc.png`,
`report.html`, and with cases `cases.csv`, `camelyon17_submission.csv` and `cases.json`.

Which map is read: an assessed slide's map as it is drawn (`slides.viewer.load_heat`: windows the model's guard
flagged count for nothing) and its summary.json `slide_score`; a slide NOT assessed (out of the model's scope) is
by default (`not_assessed="map"`) evaluated from its raw map all the same (heatmap.npy, every window as scored)
with the highest detection as its slide score, marked `assessed: false` in froc.json; `not_assessed="exclude"`
leaves it out of every figure (it is listed). Either way its size class stays "not assessed" for its case.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_json
from ..slides.folder import AnalysisFolder
from ..slides.outputs import valid_cells
from ..slides.scope_map import NOT_ASSESSED
from ..slides.viewer import lattice_of, load_heat, load_summary
from ..staging import SIZE_CLASSES, size_class
from ..stats import auc_interval, wilson_interval
from .cases import Case, agreement, read_cases, stage_case, write_cases_csv, write_submission
from .detections import lesion_points, write_detections
from .froc import FP_RATES, SlideHits, evaluation_mask, froc_curve, froc_score, itc_labels, slide_hits
from .options import EvaluationOptions
from .truth import EVALUATION_DOWNSAMPLE, EVALUATION_LEVEL, TruthFolder

log = logging.getLogger(__name__)


def find_analyses(path: str | Path) -> dict[str, AnalysisFolder]:
    """The complete analyses under `path` (it, or folders below it, holding summary.json), by folder name."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"analyses folder not found: {path}")
    found: dict[str, AnalysisFolder] = {}
    for summary in sorted(path.rglob("summary.json")):
        name = summary.parent.name
        if name in found:
            raise ValueError(f"two analyses are named {name!r}: {found[name].path} and {summary.parent}; rename one")
        found[name] = AnalysisFolder(summary.parent)
    if not found:
        raise FileNotFoundError(f"no complete analysis under {path} (no summary.json; run `pcam slide` first)")
    return found


def _lesions(name: str, mask: np.ndarray, labels: np.ndarray, hits: SlideHits, mpp: float, threshold: float) -> list[dict[str, Any]]:
    """A record per lesion of the evaluation mask: its size class (the longest diameter of its annotated tumour),
    whether the official rule calls it ITC, the highest detection probability in it and whether that reaches the
    slide's threshold."""
    from skimage import measure

    pixel_mm = EVALUATION_DOWNSAMPLE * mpp / 1000
    records = []
    for prop in measure.regionprops(np.where(mask, labels, 0)):
        label = int(prop.label)
        itc = label in hits.itc
        prob = hits.itc_probs.get(label, 0.0) if itc else float(hits.lesion_probs[label - 1])
        diameter = float(prop.feret_diameter_max * pixel_mm)
        records.append({
            "slide": name, "label": label, "itc": itc, "size_class": size_class(diameter), "diameter_mm": round(diameter, 4),
            "x": int((prop.centroid[1] + 0.5) * EVALUATION_DOWNSAMPLE), "y": int((prop.centroid[0] + 0.5) * EVALUATION_DOWNSAMPLE),
            "probability": round(prob, 6), "detected": prob > 0, "detected_at_threshold": bool(prob > 0 and prob >= threshold),
        })
    return records


def _per_class(lesions: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name in SIZE_CLASSES[1:]:
        group = [r for r in lesions if r["size_class"] == name]
        hit, at = sum(r["detected"] for r in group), sum(r["detected_at_threshold"] for r in group)
        out[name] = {"lesions": len(group), "detected": hit, "sensitivity": hit / len(group) if group else None,
                     "interval": wilson_interval(hit, len(group)), "detected_at_threshold": at,
                     "sensitivity_at_threshold": at / len(group) if group else None}
    return out


def _slide_auc(slides: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    labelled = [s for s in slides if s["label"] in ("tumour", "normal")]
    labels = np.array([s["label"] == "tumour" for s in labelled], dtype=int)
    if len(set(labels.tolist())) < 2:
        return None, f"needs tumour and normal slides ({int(labels.sum())} tumour, {int(len(labels) - labels.sum())} normal)"
    scores = np.array([s["slide_score"] for s in labelled], dtype=np.float64)
    note = f"{int(labels.sum())} tumour and {int(len(labels) - labels.sum())} normal slides"
    if min(labels.sum(), len(labels) - labels.sum()) < 2:  # DeLong's variance needs two of each
        from sklearn.metrics import roc_auc_score

        return {"value": float(roc_auc_score(labels, scores)), "se": None, "low": None, "high": None,
                "method": "none (an interval needs 2 slides of each class)"}, note
    return auc_interval(labels, scores), note


def evaluate_slides(analyses: str | Path, out: str | Path, *, truth: str | Path | None = None, cases: str | Path | None = None,
                    stages: str | Path | None = None, options: EvaluationOptions | None = None) -> dict[str, Any]:
    """Evaluate every complete analysis under `analyses` against the truth in `truth` (and stage the `cases`,
    comparing with `stages`); write the outputs into `out` and return froc.json's content."""
    options = options or EvaluationOptions()
    if stages is not None and cases is None:
        raise ValueError("stages need cases: give the cases (patient,slide) whose stages to compare")
    folders = find_analyses(analyses)
    truths = TruthFolder(truth) if truth is not None else None
    out = Path(out)
    (out / "detections").mkdir(parents=True, exist_ok=True)
    slides, lesions, hits_all, no_truth, excluded, classes = [], [], [], [], [], {}
    for name, folder in folders.items():
        summary = load_summary(folder)
        lattice = lattice_of(summary)
        assessed = summary.get("size_class") != NOT_ASSESSED
        classes[name.lower()] = summary.get("size_class", NOT_ASSESSED)
        if not assessed and options.not_assessed == "exclude":
            excluded.append(name)
            continue
        heat = load_heat(folder) if assessed else np.load(folder.heatmap_npy, mmap_mode="r")
        points = lesion_points(heat, lattice, floor=options.floor, radius_um=options.radius_um)
        write_detections(out / "detections" / f"{name}.csv", points)
        found = truths.truth(name, lattice.width, lattice.height) if truths else None
        if found is None:
            log.info("%s: no truth found (listed in no_truth)", name)
            no_truth.append(name)
            continue
        values = np.asarray(heat)[valid_cells(np.asarray(heat))]
        score = float(summary["slide_score"]) if assessed else float(values.max(initial=0.0))
        record = {"slide": name, "label": found.label, "truth": found.source, "assessed": assessed,
                  "slide_score": score, "score_source": "summary.json slide_score" if assessed else "raw map (not assessed)",
                  "size_class": summary.get("size_class"), "detections": len(points), "threshold": float(summary.get("threshold", 0.5))}
        if found.mask is not None:
            labels = evaluation_mask(found.mask, lattice.mpp, EVALUATION_LEVEL)
            itc = itc_labels(labels, lattice.mpp, EVALUATION_LEVEL)
            hits = slide_hits(points, labels, itc, is_tumour=found.label == "tumour", level=EVALUATION_LEVEL)
            hits_all.append(hits)
            found_lesions = _lesions(name, found.mask, labels, hits, lattice.mpp, record["threshold"])
            lesions += found_lesions
            record.update(lesions=hits.lesions, itc_lesions=len(itc), false_positives=len(hits.fp_probs))
        else:
            record["note"] = "no lesion truth (labelled tumour in reference.csv without annotations): slide AUC only"
        slides.append(record)

    fps, sensitivity = froc_curve(hits_all) if hits_all else (np.zeros(0), np.zeros(0))
    score, at_fp = froc_score(fps, sensitivity)
    auc, auc_note = _slide_auc(slides)
    result: dict[str, Any] = {
        "froc": score, "sensitivity_at_fp": at_fp, "fp_rates": list(FP_RATES),
        "curve": {"fp_per_slide": fps.tolist(), "sensitivity": np.nan_to_num(sensitivity).tolist()},
        "slide_auc": auc, "slide_auc_note": auc_note,
        "lesions": lesions, "lesion_sensitivity": _per_class(lesions),
        "slides": slides, "froc_slides": len(hits_all), "lesions_counted": int(sum(h.lesions for h in hits_all)),
        "no_truth": no_truth, "not_assessed": [s["slide"] for s in slides if not s["assessed"]], "excluded_not_assessed": excluded,
        "options": {"floor": options.floor, "radius_um": options.radius_um, "not_assessed": options.not_assessed,
                    "evaluation_level": EVALUATION_LEVEL, "evaluation_downsample": EVALUATION_DOWNSAMPLE},
    }
    if cases is not None:
        result["cases"] = _cases(read_cases(cases), classes, out, stages)
    from .report import write_froc_png, write_report  # matplotlib only when writing

    write_froc_png(out / "froc.png", result)
    atomic_write_json(out / "froc.json", result)
    write_report(out / "report.html", result, out / "froc.png")
    return result


def _cases(listed: dict[str, list[str]], classes: dict[str, str], out: Path, stages: str | Path | None) -> dict[str, Any]:
    staged: list[Case] = [stage_case(patient, {s: classes.get(s, "not analysed") for s in slides})
                          for patient, slides in listed.items()]
    write_cases_csv(out / "cases.csv", staged)
    write_submission(out / "camelyon17_submission.csv", staged)
    record: dict[str, Any] = {"patients": [{"patient": c.patient, "stage": c.stage, "provisional": c.provisional,
                                            "deciding_slides": c.deciding, "unread_slides": c.unread, "slides": c.classes}
                                           for c in staged]}
    if stages is not None:
        record["agreement"] = agreement(staged, stages)
    atomic_write_json(out / "cases.json", record)
    return record


__all__ = ["evaluate_slides", "find_analyses"]
