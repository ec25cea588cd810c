"""The pictures and the printable page of a slide evaluation: `froc.png` (the FROC curve, its six operating points
marked) and `report.html` (one self-contained file: the figures, the curve, the slides, the lesions, the cases)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text, atomic_write_with
from ..stats import format_interval


def write_froc_png(path: Path, result: dict[str, Any]) -> None:
    """The FROC curve (sensitivity against false positives per slide, log scale) with the six operating points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    curve = result["curve"]
    if curve["fp_per_slide"]:
        ax.plot(curve["fp_per_slide"], curve["sensitivity"], "-", color="#000000", lw=1.2)  # as the official plotFROC
    at = result["sensitivity_at_fp"]
    if at:
        ax.plot(result["fp_rates"], [at[f"{r:g}"] for r in result["fp_rates"]], "o", color="#c00000",
                label=f"FROC {result['froc']:.3f} (mean of the six points)")
        ax.legend(loc="lower right")
    ax.set_xscale("symlog", linthresh=0.25)
    ax.set_xlim(0, 16)
    ax.set_xticks(result["fp_rates"], [f"{r:g}" for r in result["fp_rates"]])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Average number of false positives per slide")
    ax.set_ylabel("Metastasis detection sensitivity")
    ax.set_title("FROC (CAMELYON16)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_with(path, lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)


def _fmt(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cases_html(cases: dict[str, Any]) -> str:
    rows = [[p["patient"], p["stage"] + (" (provisional)" if p["provisional"] else ""), ", ".join(p["deciding_slides"]) or "—",
             ", ".join(f"{s}: {c}" for s, c in p["slides"].items())] for p in cases["patients"]]
    parts = ["<h2>Cases and pN stages (CAMELYON17 rules)</h2>", _table(["patient", "stage", "decided by", "slides"], rows)]
    agreement = cases.get("agreement")
    if agreement:
        parts.append(f"<p>Quadratic weighted kappa against the reference stages: <b>{_fmt(agreement['kappa'])}</b> over "
                     f"{agreement['patients']} patient(s); {agreement['provisional_patients']} of them provisional.</p>")
        for key, title in (("stage_confusion", "Stages"), ("slide_confusion", "Slide classes")):
            confusion = agreement[key]
            rows = [[label, *counts] for label, counts in zip(confusion["labels"], confusion["matrix"])]
            parts += [f"<h3>{title}: reference (rows) against ours (columns)</h3>", _table(["", *confusion["labels"]], rows)]
    return "".join(parts)


def write_report(path: Path, result: dict[str, Any], png: Path) -> None:
    """report.html: every figure of froc.json that a reader needs, the curve embedded."""
    auc = result["slide_auc"]
    figures = [
        ["FROC (mean sensitivity at 1/4, 1/2, 1, 2, 4, 8 FP/slide)", _fmt(result["froc"])],
        *[[f"sensitivity at {rate} FP/slide", _fmt(value)] for rate, value in result["sensitivity_at_fp"].items()],
        ["slide ROC-AUC (95% interval)", "—" if not auc else f"{auc['value']:.3f}, {auc['method']}" if auc["low"] is None else f"{format_interval(auc)}, {auc['method']}"],
        ["slides with truth / in the FROC", f"{len(result['slides'])} / {result['froc_slides']}"],
        ["lesions counted (non-ITC)", result["lesions_counted"]],
    ]
    classes = [[name, c["lesions"], c["detected"], format_interval(c["interval"]) if c["interval"] else "—",
                c["sensitivity_at_threshold"]] for name, c in result["lesion_sensitivity"].items()]
    slides = [[s["slide"], s["label"], s["truth"], "yes" if s["assessed"] else "no", s["slide_score"], s["size_class"],
               s["detections"], s.get("lesions", "—"), s.get("false_positives", "—")] for s in result["slides"]]
    image = base64.b64encode(png.read_bytes()).decode()
    options = result["options"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Slide evaluation</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:1em auto}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #bbb;padding:2px 6px;font-size:90%}</style></head><body>",
        "<h1>Slide evaluation (CAMELYON16 FROC, slide AUC)</h1>", _table(["measure", "value"], figures),
        f"<img alt='FROC curve' src='data:image/png;base64,{image}'>",
        "<h2>Lesion sensitivity by size class</h2><p>Size class of a lesion: the longest diameter of its annotated tumour; "
        "detected: any detection in its evaluation-mask region; at threshold: one at or above the slide's decision threshold.</p>",
        _table(["class", "lesions", "detected", "sensitivity (95% interval)", "at threshold"], classes),
        "<h2>Slides</h2>", _table(["slide", "truth", "from", "assessed", "slide score", "size class", "detections", "lesions",
                                  "false positives"], slides),
        f"<p>Detections: local maxima of the map at or above {options['floor']} by non-maximum suppression within "
        f"{options['radius_um']:.0f} µm; slides not assessed: {html.escape(options['not_assessed'])}. Without truth: "
        f"{html.escape(', '.join(result['no_truth']) or 'none')}.</p>",
    ]
    if "cases" in result:
        parts.append(_cases_html(result["cases"]))
    parts.append("</body></html>")
    atomic_write_text(path, "".join(parts))


__all__ = ["write_froc_png", "write_report"]
