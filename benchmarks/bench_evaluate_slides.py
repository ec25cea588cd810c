"""CAMELYON16/17 figures on the SYNTHETIC demo slides: FROC, slide AUC, lesion sensitivity, pN stages and kappa.

    python benchmarks/bench_evaluate_slides.py --out /tmp/demo-eval [--stride 96] [--floor 0.5]

Four 20,000 x 16,000 demo slides at 0.243 um/px (`pcam demo-slide`'s size): two with the default regions (a
macrometastasis, two micrometastases, ITC), two with none; analysed with the bundled model on the CPU (skipped when
an analysis is already complete in --out); their truth written as QuPath GeoJSON from the regions' ellipses; two
cases (a tumour and a normal slide each, reference stage pN1). Then `evaluate_slides`, as `pcam evaluate-slides`.
The demo tissue is synthetic and out of the bundled model's scope: every slide is "not assessed", evaluated from its
raw map (docs/evaluation.md), so the figures measure the map of a model on tissue it was not made for.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pcam_core.bundled import BUNDLED  # noqa: E402
from pcam_core.evaluation import EvaluationOptions, evaluate_slides  # noqa: E402
from pcam_core.scoring_options import ScoringOptions  # noqa: E402
from pcam_core.slides.batch import analyse  # noqa: E402
from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide  # noqa: E402

SLIDES = [("tumour_a", 0, None), ("tumour_b", 1, None), ("normal_a", 2, []), ("normal_b", 3, [])]


def ellipse_feature(region: dict, mpp: float, n: int = 128) -> dict:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    a, b, angle = region["semi_major_um"] / mpp, region["semi_minor_um"] / mpp, math.radians(region["angle_deg"])
    u, v = a * np.cos(t), b * np.sin(t)
    ring = np.stack([region["cx"] + u * math.cos(angle) - v * math.sin(angle),
                     region["cy"] + u * math.sin(angle) + v * math.cos(angle)], 1).tolist()
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]},
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stride", type=int, choices=(32, 96), default=96)
    parser.add_argument("--floor", type=float, default=EvaluationOptions().floor)
    args = parser.parse_args()
    truth = args.out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    reference = []
    for name, seed, regions in SLIDES:
        folder = args.out / "slides" / name
        report = (json.loads((folder / "truth.json").read_text()) if (folder / "truth.json").exists()
                  else make_demo_slide(folder, DemoSlideSpec(seed=seed), regions))
        if not (args.out / "analyses" / name / "summary.json").exists():
            start = time.perf_counter()
            analyse(BUNDLED, folder / "slide.tif", args.out / "analyses" / name,
                    ScoringOptions(device="cpu", workers=0, tta=False), stride=args.stride)
            print(f"{name}: analysed in {time.perf_counter() - start:.0f} s", flush=True)
        features = [ellipse_feature(r, report["mpp"]) for r in report["regions"]]
        (truth / f"{name}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        reference.append(f"{name},{'Tumor' if report['regions'] else 'Normal'}")
    (truth / "reference.csv").write_text("\n".join(reference) + "\n")
    (args.out / "cases.csv").write_text("patient,slide\np1,tumour_a\np1,normal_a\np2,tumour_b\np2,normal_b\n")
    (args.out / "stages.csv").write_text("patient,stage\np1.zip,pN1\ntumour_a.tif,macro\nnormal_a.tif,negative\n"
                                         "p2.zip,pN1\ntumour_b.tif,macro\nnormal_b.tif,negative\n")
    result = evaluate_slides(args.out / "analyses", args.out / "evaluation", truth=truth, cases=args.out / "cases.csv",
                             stages=args.out / "stages.csv", options=EvaluationOptions(floor=args.floor))
    print(json.dumps({key: result[key] for key in ("froc", "sensitivity_at_fp", "slide_auc", "lesion_sensitivity",
                                                    "lesions_counted", "not_assessed")}, indent=1, default=str))
    for slide in result["slides"]:
        print(slide["slide"], slide["label"], f"score {slide['slide_score']:.3f}", f"detections {slide['detections']}",
              f"false positives {slide.get('false_positives')}")
    for patient in result["cases"]["patients"]:
        print(patient["patient"], patient["stage"], "provisional" if patient["provisional"] else "")
    print("kappa", result["cases"]["agreement"]["kappa"])


if __name__ == "__main__":
    main()
