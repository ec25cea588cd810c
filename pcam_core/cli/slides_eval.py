"""`pcam evaluate-slides`: analysed slides against their truth (CAMELYON16 FROC, slide AUC; CAMELYON17 pN stages)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import fmt


def add(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.options import NMS_FLOOR, NMS_RADIUS_UM, NOT_ASSESSED_MODES

    p = sub.add_parser("evaluate-slides", help="FROC, slide AUC and pN stages of analysed slides against their truth", description=(
        "Evaluate the analyses under --analyses (`pcam slide` output: a folder per slide, named after it) against the "
        "truth in --truth: CAMELYON16 mask TIFFs (<slide>_mask.tif, tumour 255), ASAP XML (<slide>.xml) or QuPath GeoJSON "
        "(<slide>.geojson), and reference.csv (name,class[,type]) for slide labels. Writes into --out detections/<slide>.csv "
        "(probability,x,y in level-0 pixels, as CAMELYON16 asks), froc.json (FROC as the challenge's code computes it, "
        "sensitivity at 1/4..8 FP per slide, slide ROC-AUC with its 95% interval, lesions and their sensitivity by size "
        "class), froc.png and report.html. With --cases: cases.csv (patient, pN stage, the slides that decide it), "
        "camelyon17_submission.csv and cases.json; with --stages also the quadratic weighted kappa and the confusion "
        "matrices. See docs/evaluation.md."))
    p.add_argument("--analyses", required=True, help="folder of slide analyses (each with summary.json and heatmap.npy)")
    p.add_argument("--truth", help="folder of truth files and reference.csv (a slide without truth is listed, not fatal)")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--cases", help="patient,slide CSV, or a folder with a folder per patient holding its slides' analyses")
    p.add_argument("--stages", help="reference stages in CAMELYON17's format (patient,stage rows and node,class rows); needs --cases")
    p.add_argument("--floor", type=float, default=NMS_FLOOR, help=f"lowest probability of a detection (default: {NMS_FLOOR})")
    p.add_argument("--radius-um", type=float, default=NMS_RADIUS_UM,
                   help=f"non-maximum suppression radius between detections in microns (default: {NMS_RADIUS_UM:.0f})")
    p.add_argument("--not-assessed", choices=NOT_ASSESSED_MODES, default="map",
                   help="slides out of the model's scope: evaluated from their raw map (map, default) or left out (exclude)")
    p.set_defaults(func=cmd_evaluate_slides)


def cmd_evaluate_slides(args: argparse.Namespace) -> int:
    from ..evaluation import EvaluationOptions, evaluate_slides

    options = EvaluationOptions(floor=args.floor, radius_um=args.radius_um, not_assessed=args.not_assessed)
    result = evaluate_slides(args.analyses, args.out, truth=args.truth, cases=args.cases, stages=args.stages, options=options)
    auc = result["slide_auc"]
    print(f"slides with truth: {len(result['slides'])}, in the FROC: {result['froc_slides']}, lesions counted: "
          f"{result['lesions_counted']}, without truth: {len(result['no_truth'])}")
    print(f"FROC: {fmt(result['froc'], 3)}  (" + ", ".join(f"{k} FP: {v:.3f}" for k, v in result["sensitivity_at_fp"].items()) + ")")
    interval = "" if not auc or auc["low"] is None else f"{auc['low']:.3f}-{auc['high']:.3f}, "
    print(f"slide ROC-AUC: {fmt(auc['value'], 3)} ({interval}{auc['method']}; {result['slide_auc_note']})" if auc
          else f"slide ROC-AUC: - ({result['slide_auc_note']})")
    for name, c in result["lesion_sensitivity"].items():
        if c["lesions"]:
            print(f"  {name}: {c['detected']}/{c['lesions']} lesions detected")
    if result["not_assessed"] or result["excluded_not_assessed"]:
        print(f"not assessed (out of the model's scope): {len(result['not_assessed'])} evaluated from the raw map, "
              f"{len(result['excluded_not_assessed'])} left out")
    cases = result.get("cases")
    if cases:
        for p in cases["patients"]:
            print(f"  {p['patient']}: {p['stage']}{' (provisional)' if p['provisional'] else ''}"
                  f"{' decided by ' + ', '.join(p['deciding_slides']) if p['deciding_slides'] else ''}")
        if "agreement" in cases:
            print(f"quadratic weighted kappa: {fmt(cases['agreement']['kappa'], 3)} over {cases['agreement']['patients']} patient(s)")
    print(f"written: {Path(args.out) / 'froc.json'}, {Path(args.out) / 'report.html'}")
    return 0
