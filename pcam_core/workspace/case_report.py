"""The printable report of a case (a patient's lymph-node slides): one self-contained HTML file, laid out for A4.

Its first page is the case's: the patient, the pN stage by the CAMELYON17 rules (`evaluation.cases.stage_case`),
whether it is provisional and why (the slides not assessed, out of the model's scope, or not analysed: they count
as negative, so the stage can only rise once they are read), the slides that decide it, a table of every slide with
its size class, call and reviews, and a pathologist's sign-off (the stage agreed or amended, name, date,
signature, written on the printed page). Then, a page break before each, every slide's own report
(`slides.report.render_report`, with the reviews of its regions and windows); a slide not analysed gets a line
saying so. No Streamlit here; the Slides page's case view offers it for download.
"""

from __future__ import annotations

import html
from pathlib import Path

from ..bundled import BUNDLED
from ..decision import call
from ..slides.decision import SLIDE_CALL_WORDS
from ..evaluation.cases import Case, stage_case
from ..slides.report import DISCLAIMER, REPORT_CSS, local_time, render_report, review_target, review_text
from ..slides.scope_map import NOT_ASSESSED
from ..staging import SIZE_CLASS_WORDS
from .reviews import ReviewStore
from .slide_cases import NOT_ANALYSED, CaseSlide, case_slides, load_cases
from .slide_library import SlideLibrary
from .slide_queue import run_label

_CSS = """
.stage { font-size: 22pt; font-weight: 700; margin: .2em 0; } .provisional { color: #b00020; }
.signoff { border: 1.5px solid #333; padding: .6em 1em; margin-top: 1.2em; page-break-inside: avoid; break-inside: avoid; }
.signoff .line { display: flex; gap: .6em; margin: 1.3em 0 .2em; } .signoff .line span { white-space: nowrap; }
.signoff .line i { flex: 1; border-bottom: 1px solid #333; }
"""


def _unread_reason(slide: CaseSlide) -> str:
    if slide.size_class == NOT_ASSESSED:
        reason = ((slide.summary or {}).get("scope") or {}).get("reason") or "out of the model's scope"
        reason = reason.removeprefix("Not assessed:").strip()  # the scope guard's words begin with it
        return f"{slide.name}: not assessed ({reason.rstrip('.')})"
    return f"{slide.name}: not analysed"


def _slide_row(slide: CaseSlide, case: Case) -> str:
    e = html.escape
    summary = slide.summary or {}
    read = slide.size_class not in (NOT_ASSESSED, NOT_ANALYSED)
    if read:
        threshold = float(summary["threshold"])
        verdict = SLIDE_CALL_WORDS[summary.get("call") or call(summary["slide_score"], threshold)]
        figures = [f"{verdict} (at {threshold:g})", f"{summary['slide_score']:.3f}", f"{summary['largest_diameter_mm']:.2f} mm",
                   str(summary["regions"])]
    else:
        figures = [slide.size_class, "—", "—", "—"]
    cells = [e(slide.name) + (" (SYNTHETIC)" if slide.synthetic else ""),
             e(SIZE_CLASS_WORDS.get(slide.size_class, slide.size_class)), *map(e, figures),
             "yes" if slide.name in case.deciding else "", str(len(slide.reviews)) if slide.reviews else ""]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _slide_body(slide: CaseSlide) -> str:
    """The slide's own report (its body, under the case's styles), or a line when it was not analysed."""
    if slide.folder is None or slide.summary is None:
        return (f"<h1>Slide: {html.escape(slide.name)}</h1><p><b>Not analysed</b> with this model: no map, no size class. "
                "It counts as negative for the stage, which stays provisional until the slide is read.</p>")
    document = render_report(slide.folder, slide.summary, reviews=slide.reviews)
    return document.split("<body>", 1)[1].rsplit("</body>", 1)[0]  # render_report writes one body, closed last


def render_case_report(case: Case, slides: list[CaseSlide], *, model: str = "") -> str:
    """The report of `case` (its stage from `stage_case`) over its `slides` (in the case's order) as one HTML document."""
    e = html.escape
    synthetic = any(s.synthetic for s in slides)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Case report: {e(case.patient)}</title>",
             f"<style>{REPORT_CSS}{_CSS}</style></head><body>",
             f"<h1>Case report: {e(case.patient)}</h1>",
             f"<div class=\"meta\">Report made {e(local_time())}; {len(slides)} lymph-node slide(s)"
             + (f"; model {e(model)}" if model else "") + "</div>"]
    if synthetic:
        parts.append("<div class=\"synthetic\">SYNTHETIC SLIDES in this case: generated for testing, NOT REAL TISSUE. "
                     "Nothing in this report describes a patient.</div>")
    parts.append(f"<div class=\"disclaimer\">{e(DISCLAIMER)}</div>")
    parts.append("<h2>pN stage (CAMELYON17 rules)</h2>")
    parts.append(f"<div class=\"stage{' provisional' if case.provisional else ''}\">{e(case.stage)}"
                 + (" (provisional)" if case.provisional else "") + "</div>")
    unread = [s for s in slides if s.name in case.unread]
    if unread:
        parts.append("<p class=\"provisional\"><b>Provisional:</b> " + "; ".join(e(_unread_reason(s)) for s in unread)
                     + ". Such slides count as negative here, so the stage can only rise once they are read by a pathologist.</p>")
    else:
        parts.append(f"<p>Every slide of the case was read by the model ({len(slides)}).</p>")
    by_name = {s.name: s for s in slides}
    if case.deciding:
        parts.append("<p><b>Decided by:</b> " + "; ".join(
            f"{e(name)} ({e(SIZE_CLASS_WORDS.get(by_name[name].size_class, ''))})" for name in case.deciding if name in by_name) + "</p>")
    else:
        parts.append("<p><b>Decided by:</b> no slide holds isolated tumour cells, a micro- or a macrometastasis.</p>")
    parts += ["<table><tr><th>slide</th><th>size class (largest region)</th><th>call</th><th>slide score</th>"
              "<th>largest diameter</th><th>regions</th><th>decides the stage</th><th>reviews</th></tr>",
              *[_slide_row(s, case) for s in slides], "</table>",
              "<p class=\"meta\">pN0 no ITC, micro- or macrometastasis; pN0(i+) only ITC; pN1mi micrometastases, no "
              "macrometastasis; pN1 metastases in 1-3 nodes, one at least a macrometastasis; pN2 in 4-9 nodes. Size "
              "classes by the largest region's longest diameter: ITC ≤ 0.2 mm, micro ≤ 2 mm, macro above.</p>"]
    reviewed = [(s, r) for s in slides for r in s.reviews]
    parts.append(f"<h2>Reviews ({len(reviewed)})</h2>")
    if reviewed:
        parts.append("<table><tr><th>slide</th><th>of</th><th>review</th></tr>")
        parts += [f"<tr><td>{e(s.name)}</td><td>{e(review_target(r))}</td><td>{e(review_text(r))}</td></tr>" for s, r in reviewed]
        parts.append("</table>")
    else:
        parts.append("<p>No region or window of these slides has been reviewed on the dashboard.</p>")
    parts.append("<div class=\"signoff\"><h2>Pathologist's sign-off</h2><p>I have reviewed the slides of this case. "
                 "pN stage: ☐ agreed&nbsp;&nbsp; ☐ amended to ____________</p>"
                 + "".join(f"<div class=\"line\"><span>{label}</span><i></i></div>" for label in ("Name", "Date", "Signature"))
                 + "</div>")
    for slide in slides:
        parts.append(f"<div class=\"section-break\">{_slide_body(slide)}</div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def case_report_html(library: SlideLibrary, patient: str, run: str | Path = BUNDLED, *, stride: int = 32,
                     reviews: ReviewStore | None = None) -> str:
    """The printable report of the library's case of `patient` (`slide_cases.load_cases`), its slides read from their
    analyses with `run` at `stride`, with their reviews from `reviews`; `KeyError` when there is no such case."""
    cases = load_cases(library.root)
    if patient not in cases:
        raise KeyError(f"no case for patient {patient!r}; cases: {', '.join(cases) or 'none'}")
    slides = case_slides(library, cases[patient], run, stride=stride, reviews=reviews)
    case = stage_case(patient, {s.name: s.size_class for s in slides})
    return render_case_report(case, slides, model=f"{run_label(str(run))}, stride {stride}")


__all__ = ["case_report_html", "render_case_report"]
