"""The printable report of a slide analysis: one self-contained HTML file (every image embedded as a
base64 PNG or JPEG, the styles inline), laid out for A4 paper by its print CSS.

It holds the slide's name and when the report was made and the analysis finished (with their time zone), a SYNTHETIC banner for a synthetic slide, the map over the
thumbnail (`heatmap.png`), the slide's figures, the largest regions with a crop of each (read from the
slide through `reader.open_slide`, the region's outline drawn on it), the model (its card for the bundled
model, the run's config otherwise), the analysis settings, the pathologists' reviews of its regions and
windows when given (`reviews`), and that it is a research tool, not a diagnosis. Regions carry their one
number (`outputs.region_number`: #1 is "tumour region #1" in the GeoJSON and on the Slides page). Written beside summary.json by every analysis (`batch.analyse_slide`) and by
`pcam slide-report`. Imports no torch.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..fileio import atomic_write_text, read_json
from ..decision import call
from ..staging import SIZE_CLASS_WORDS, size_class
from .scope_map import NOT_ASSESSED, SCOPE_LINE
from .folder import AnalysisFolder
from .decision import is_reported, reporting_words, rule_words
from .regions import region_number
from .reader import open_slide

TOP_REGIONS = 12  # regions shown with a crop, largest first
CROP_PX = 240  # a crop's longer side, in pixels
DISCLAIMER = ("Research tool, not a diagnosis. These maps come from a model that scores 96-pixel patches; it is not "
              "a medical device and has not been validated for clinical use. Every finding must be reviewed by a "
              "pathologist on the slide itself.")

_CSS = """
@page { size: A4; margin: 14mm 12mm; }
body { font: 10.5pt/1.4 "Helvetica Neue", Arial, sans-serif; color: #1d1d1f; max-width: 186mm; margin: 1em auto; }
h1 { font-size: 18pt; margin: 0 0 .2em; } h2 { font-size: 13pt; margin: 1.2em 0 .4em; border-bottom: 1px solid #bbb; }
.meta { color: #555; margin-bottom: .6em; }
.disclaimer { border: 2px solid #b00020; background: #fff3f3; padding: .5em .8em; font-weight: 600; margin: .6em 0; }
.synthetic { background: #ffb300; color: #000; font-weight: 700; padding: .4em .8em; margin: .6em 0; letter-spacing: .03em; }
table { border-collapse: collapse; width: 100%; margin: .3em 0; } th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.map { max-width: 100%; max-height: 150mm; display: block; margin: .4em auto; }
.regions { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6mm; }
figure { margin: 0; page-break-inside: avoid; break-inside: avoid; } figure img { width: 100%; border: 1px solid #999; }
figcaption { font-size: 9pt; color: #333; }
.card { font-size: 9pt; } .card h1 { font-size: 12pt; } .card h2 { font-size: 10.5pt; border: 0; }
pre { font-size: 8pt; white-space: pre-wrap; background: #f6f6f6; padding: .5em; }
.section-break { page-break-before: always; break-before: page; }
@media print { body { margin: 0; max-width: none; } a { color: inherit; text-decoration: none; } }
"""

REPORT_CSS = _CSS  # the case report (workspace.case_report) prints with the same styles


def _png_data(image: np.ndarray | Image.Image, *, jpeg: bool = False) -> str:
    """A data: URL of `image` (JPEG for photographs of tissue, PNG otherwise)."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    if jpeg:
        picture.convert("RGB").save(buffer, format="JPEG", quality=85)
    else:
        picture.save(buffer, format="PNG", optimize=True)
    kind = "jpeg" if jpeg else "png"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _file_data(path: Path) -> str:
    return f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def region_crops(slide_path: str | Path, features: list[dict[str, Any]], mpp: float, *, limit: int = TOP_REGIONS) -> list[np.ndarray]:
    """A crop of the slide around each of the first `limit` regions (their bounding box with a margin of
    half its size, at least 0.4 mm across), the region's outline drawn in cyan; uint8 RGB."""
    crops = []
    with open_slide(slide_path, mpp=mpp) as slide:
        for feature in features[:limit]:
            ring = np.asarray(feature["geometry"]["coordinates"][0], dtype=np.float64)
            (x0, y0), (x1, y1) = ring.min(axis=0), ring.max(axis=0)
            side = max(x1 - x0, y1 - y0) * 1.5
            side = max(side, 400.0 / mpp)  # at least 0.4 mm of context
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            left, top = cx - side / 2, cy - side / 2
            image = Image.fromarray(slide.read_scaled(left, top, side, side, (CROP_PX, CROP_PX)))
            scale = CROP_PX / side
            draw = ImageDraw.Draw(image)
            for part in feature["geometry"]["coordinates"]:
                points = [((x - left) * scale, (y - top) * scale) for x, y in part]
                draw.line(points, fill=(0, 220, 255), width=2)
            crops.append(np.asarray(image))
    return crops


def _model_card(summary: dict[str, Any]) -> tuple[str, str]:
    """(title, HTML) of what describes the model: the bundled model's card, or the run's config."""
    from ..bundled import model_card
    from ..runs.resolve import resolve_run

    run = summary.get("run", "")
    if run and resolve_run(run, must_exist=False).bundled:
        import markdown

        return "The model", markdown.markdown(model_card(), extensions=["tables"])
    config = Path(run) / "config.json"
    if config.is_file():
        text = json.dumps(json.loads(config.read_text(encoding="utf-8")), indent=2)
        return f"The run's configuration ({config})", f"<pre>{html.escape(text)}</pre>"
    return "Model", f"<p>No model card or run configuration was found for run <code>{html.escape(str(run))}</code>.</p>"


def local_time(when: float | str | None = None) -> str:
    """A moment (a POSIX time, an ISO 8601 text, or None for now) as local date and time with its time zone,
    e.g. "2026-12-05 13:40 CET (UTC+01:00)": every time this tool shows carries its zone."""
    if when is None:
        moment = _dt.datetime.now().astimezone()
    elif isinstance(when, str):
        moment = _dt.datetime.fromisoformat(when)
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=_dt.timezone.utc)).astimezone()
    else:
        moment = _dt.datetime.fromtimestamp(float(when)).astimezone()
    offset = moment.strftime("%z")
    return f"{moment:%Y-%m-%d %H:%M} {moment.tzname()} (UTC{offset[:3]}:{offset[3:]})"


def window_label(x: float, y: float) -> str:
    """A map window named by its one position, wherever it is shown: the level-0 pixel of its top-left corner."""
    return f"window at {int(round(x)):,}, {int(round(y)):,} (level-0 px, top-left)"


def review_target(review: Mapping[str, Any]) -> str:
    """What a review is about, in the words of the report and the page: "region #3" or `window_label`."""
    if review.get("region") not in (None, ""):
        return f"region #{review['region']}"
    return window_label(review["x"], review["y"])


def review_text(review: Mapping[str, Any]) -> str:
    """One review in words: verdict, note, reviewer and time (with its zone)."""
    note = f" “{review['note']}”" if review.get("note") else ""
    return f"{str(review['verdict']).replace('_', ' ')}{note}: {review['reviewer']}, {local_time(review['created_at'])}"


def _row(name: str, value: str) -> str:
    return f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"


def render_report(folder: str | AnalysisFolder | Path, summary: dict[str, Any] | None = None, *, synthetic: bool | None = None,
                  reviews: Sequence[Mapping[str, Any]] = ()) -> str:
    """The report of the analysis in `folder` as one HTML document. `summary` defaults to its
    summary.json; `synthetic` to what the slide said of itself when analysed; `reviews` are the current
    reviews of its regions and windows (`workspace.slide_reviews.slide_reviews`: region or x, y, verdict,
    note, reviewer, created_at)."""
    folder = folder if isinstance(folder, AnalysisFolder) else AnalysisFolder(Path(folder))
    if summary is None:
        summary = read_json(folder.summary_json)
        if summary is None:
            raise FileNotFoundError(f"{folder.summary_json} not found: the analysis in {folder.path} is not complete")
    info = summary.get("slide_info") or {}
    synthetic = bool(info.get("synthetic")) if synthetic is None else synthetic
    slide_path = Path(summary["slide"])
    name = html.escape(slide_path.name)
    threshold = float(summary["threshold"])
    scope = summary.get("scope") or {}
    assessed = scope.get("in_scope", True)
    slide_call = summary.get("call") or call(summary["slide_score"], threshold)
    call_words = {"tumour": "tumour found", "normal": "no tumour found", "refer": f"refer ({summary.get('call_reason') or 'review'})"}.get(slide_call, slide_call)
    e = html.escape
    # the analysis writes its report just before summary.json: then it finishes now
    finished = local_time(folder.summary_json.stat().st_mtime if folder.summary_json.exists() else None)
    by_region: dict[int, list[str]] = {}
    for review in reviews:
        if review.get("region") not in (None, ""):
            by_region.setdefault(int(review["region"]), []).append(review_text(review))
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Slide report: {name}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Slide report: {name}</h1>",
             f"<div class=\"meta\">Report made {e(local_time())}; analysis finished {e(finished)}"
             f"; slide file <code>{e(str(slide_path))}</code></div>"]
    if synthetic:
        parts.append("<div class=\"synthetic\">SYNTHETIC SLIDE: generated by pcam_core for testing, NOT REAL TISSUE. "
                     "Nothing in this report describes a patient.</div>")
    parts.append(f"<div class=\"disclaimer\">{e(DISCLAIMER)}</div>")
    if not assessed:
        parts.append(f"<div class=\"synthetic\">{e(scope.get('reason', ''))} No size class is given, and no finding below "
                     "may be read as one.</div>")
    parts.append(f"<p class=\"meta\">{e(scope.get('line') or SCOPE_LINE)} {e(scope.get('reason', '')) if assessed else ''}</p>")

    parts.append("<h2>The tumour map</h2>")
    if folder.heatmap_png.exists():
        parts.append(f"<img class=\"map\" alt=\"tumour probability map over the slide\" src=\"{_file_data(folder.heatmap_png)}\">")
    parts.append(f"<p>Tumour probability of each {summary.get('cell_um', 0):.0f} µm cell over the slide's thumbnail; "
                 f"regions at probability &gt;= {threshold:g} outlined; cells out of the model's scope hatched grey.</p>")

    largest = float(summary["largest_diameter_mm"])
    reported = summary.get("regions_reported", summary["regions"])
    below = summary.get("regions_below_threshold", 0)
    decision = summary.get("decision") or {}
    # out of scope, the slide's own figures are not given: "score 0.000" or "0.000 mm²" would read as a negative finding
    judged = (lambda text: text) if assessed else (lambda text: NOT_ASSESSED)
    inspection = "" if assessed else " (for inspection only)"
    parts += ["<h2>Figures</h2><table>",
              _row("slide score (the slide's tumour score)", judged(f"{summary['slide_score']:.3f}"
                   + (f" ({e(summary['slide_score_method'])})" if summary.get("slide_score_method") else ""))),
              _row(f"call at slide score {summary.get('slide_threshold', threshold):g}", call_words),
              _row("highest cell probability" + inspection, f"{summary.get('slide_max_cell', summary['slide_score']):.3f}"),
              _row(f"top-{summary.get('top_k', 10)} mean" + inspection, f"{summary.get('slide_topk_mean', float('nan')):.3f}"),
              _row("in scope", "yes" if assessed else "no: " + scope.get("reason", "")),
              _row("tissue out of scope", f"{scope.get('out_of_scope_fraction', 0.0):.1%}" if scope.get("checked") else "not checked"),
              _row("tumour regions", judged(f"{reported} reported, {below} below the reporting threshold")),
              _row("tumour area (reported regions)", judged(f"{summary['tumour_area_mm2']:.3f} mm²")),
              _row("largest reported region's longest diameter", judged(f"{largest:.2f} mm")),
              _row("size class (of the reported regions)", SIZE_CLASS_WORDS.get(summary["size_class"], summary["size_class"])),
              _row("cells scored / at threshold / unreadable",
                   f"{summary.get('cells_scored', 0):,} / {summary.get('cells_at_threshold', 0):,} / {summary.get('cells_unreadable', 0):,}"),
              "</table>",
              f"<p class=\"meta\">Reporting rule: {e(rule_words(decision.get('rule')))}; its parameters: "
              f"{e(decision.get('source', 'none recorded'))}. Regions below it are listed with what they fell short of, "
              "and given no size class (docs/slides.md, The slide decision).</p>"]

    features = (read_json(folder.regions_geojson) or {}).get("features", [])
    numbered = [(region_number(feature, rank), feature) for rank, feature in enumerate(features, 1)]
    numbered.sort(key=lambda item: not is_reported(item[1]["properties"]))  # reported first, each part largest first
    shown = [item for item in numbered if is_reported(item[1]["properties"])]
    parts.append(f"<h2 class=\"section-break\">Tumour regions ({len(shown)} reported, {len(features) - len(shown)} below the "
                 "reporting threshold), largest first</h2>")
    if not features:
        parts.append("<p>No region reaches the threshold.</p>")
    else:
        parts.append("<table><tr><th>#</th><th>reporting</th><th>area (mm²)</th><th>longest diameter (mm)</th><th>size class</th>"
                     "<th>max probability</th><th>cells</th><th>centre x, y (level-0 px)</th>"
                     + ("<th>reviews</th>" if reviews else "") + "</tr>")
        for number, feature in numbered:
            p = feature["properties"]
            said = "<br>".join(e(text) for text in by_region.get(number, []))
            kept = is_reported(p)
            given = (size_class(p["longest_diameter_mm"]) if kept else "none (below the reporting threshold)") if assessed else NOT_ASSESSED
            parts.append(f"<tr><td class=\"num\">{number}</td><td>{e(reporting_words(p))}</td><td class=\"num\">{p['area_mm2']:.4f}</td>"
                         f"<td class=\"num\">{p['longest_diameter_mm']:.3f}</td><td>{e(given)}</td>"
                         f"<td class=\"num\">{p['max_probability']:.3f}</td><td class=\"num\">{p['cells']}</td>"
                         f"<td class=\"num\">{p['centroid_x']:.0f}, {p['centroid_y']:.0f}</td>"
                         + (f"<td>{said}</td>" if reviews else "") + "</tr>")
        parts.append("</table>")
        try:
            crops = region_crops(slide_path, [feature for _, feature in shown], float(summary["mpp"]))
        except (OSError, ValueError) as err:
            parts.append(f"<p><b>The crops could not be read from the slide:</b> {e(str(err))}</p>")
        else:
            parts.append(f"<p>The {len(crops)} largest reported region(s), outlined in cyan on the slide"
                         + (":" if crops else " (none is reported).") + "</p><div class=\"regions\">")
            for (number, feature), crop in zip(shown, crops):
                p = feature["properties"]
                parts.append(f"<figure><img alt=\"region {number}\" src=\"{_png_data(crop, jpeg=True)}\"><figcaption>#{number}: "
                             f"{p['longest_diameter_mm']:.2f} mm, {p['area_mm2']:.3f} mm², max p {p['max_probability']:.2f}"
                             "</figcaption></figure>")
            parts.append("</div>")

    if reviews:
        parts.append(f"<h2>Reviews ({len(reviews)})</h2><table><tr><th>of</th><th>review</th></tr>")
        parts += [f"<tr><td>{e(review_target(r))}</td><td>{e(review_text(r))}</td></tr>" for r in reviews]
        parts.append("</table>")

    parts += ["<h2 class=\"section-break\">Model and settings</h2><table>",
              _row("model", str(summary.get("model", ""))), _row("run", str(summary.get("run", ""))),
              _row("checkpoint", f"{summary.get('checkpoint', '')} (epoch {summary.get('checkpoint_epoch')})"),
              _row("threshold", f"{threshold:g}"),
              _row("stride", f"{summary.get('stride')} PCam-scale px ({summary.get('cell_um', 0):.1f} µm cells)"),
              _row("resolution", f"{summary.get('mpp')} µm per level-0 pixel"),
              _row("test-time augmentation", "yes (8 symmetries)" if summary.get("tta") else "no"),
              _row("minimum tissue share of a scored cell", f"{summary.get('min_tissue')}"),
              _row("windows scored", f"{summary.get('windows_scored', 0):,} in {summary.get('seconds', 0):.1f} s"),
              _row("slide", f"{info.get('width')} x {info.get('height')} px, vendor {info.get('vendor')}, read by {info.get('backend')}"),
              "</table>"]
    if summary.get("skipped_regions"):
        parts.append(f"<p><b>{len(summary['skipped_regions'])} region(s) of the slide could not be read</b> and were not scored.</p>")
    title, card = _model_card(summary)
    parts += [f"<h2>{e(title)}</h2><div class=\"card\">{card}</div>",
              f"<div class=\"disclaimer\">{e(DISCLAIMER)}</div>", "</body></html>\n"]
    return "".join(parts)


def write_report(folder: str | Path | AnalysisFolder, summary: dict[str, Any] | None = None, out: str | Path | None = None,
                 *, reviews: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write the report of the analysis in `folder` to `out` (default: its report.html), atomically."""
    folder = folder if isinstance(folder, AnalysisFolder) else AnalysisFolder(Path(folder))
    target = Path(out) if out is not None else folder.report_html
    atomic_write_text(target, render_report(folder, summary, reviews=reviews))
    return target
