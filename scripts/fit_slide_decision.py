"""Fit a model's slide decision (region reporting rule and slide classifier) on slides with truth, and print the
figures it reaches on slides it was not fitted on: the bundled model's by default, or (`--run CV --for RUN`) that of
RUN, a model of the recipe a cross-validation CV trained, fitted on CV's out-of-fold slide maps.

The slides are mosaics (`pcam_core.slides.mosaic`) of patches the model that scores them never trained on, read
from `--data` (the Kaggle layout, e.g. ../shared/data/pcam-real-dev):
- the single bundled model: its 600 HELD-OUT patches (`pcam_core/bundled/valid_predictions.csv`), each slide
  analysed with the bundled model;
- the cross-validated ensemble (`scripts/train_bundled.py --folds K`), which trained on every patch and so has no
  held-out patch of its own: each slide is built from ONE fold's held-out patches (the fold column of
  `pcam_core/bundled/oof_predictions.csv`) and analysed with THAT fold's member alone (an out-of-fold slide map;
  the slides are dealt to the folds in turn). The rule is thus fitted on single members' out-of-fold maps and
  applied to the ensemble's (whose maps are, if anything, cleaner: a mean of members), at the ensemble's threshold;
  the members' maps have no out-of-scope guard (the ensemble's taps its first member only);
- a cross-validation of another recipe (`--run CV`, a folder of `pcam train --folds K`, finished or stopped after
  some folds: the folds that have scored their held-out patches are used), the same way with CV's members, fitted
  for `--for RUN` (default CV itself) at RUN's threshold and written to RUN's slide_decision.json: RUN is typically
  one of CV's members or a run of the same recipe, such as candidates/pcamscan (docs/slides.md).
The ids are split in two halves (stratified by label, and by fold for the ensemble; seeded): the FIT slides are
built from one half's patches only, the REPORT slides from the other half's only. Each half gets normal slides (no
tumour patch at all) and lesion slides (one block of tumour patches: ITC 1 x 1 patch, micro 3 x 3 and 6 x 6, macro
18 x 18), analysed by `pcam slide`'s engine (stride 32, one pass: no TTA, CPU). Then:

1. the reporting rule's operating point is chosen on the FIT slides (`slides.decision.choose_rule`): the rule
   that finds the most non-ITC lesions with at most `--false-regions` reported regions per normal slide;
2. the slide classifier (logistic regression on `slides.decision.slide_features`) is fitted on the FIT slides;
3. both are written to pcam_core/bundled/slide_decision.json (with `--write`), and the figures before (every
   region reported, slide score = the highest cell) and after are printed for the REPORT slides.

    python scripts/fit_slide_decision.py --data ../shared/data/pcam-real-dev --work /tmp/slide-decision --write
    python scripts/fit_slide_decision.py --data ../shared/data/pcam-real-dev --work /tmp/sd-scan --run /tmp/scan-cv \
        --for candidates/pcamscan --write

Analyses are kept in `--work` and not recomputed when run again (delete the folder to start over); a `--work` made
with other models is refused. `--per-kind N` caps the slides of each kind per half (a quick check).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (kind, slide rows x cols in patches, lesion block or None, slides per half)
CELLS = (1, 2, 3, 4, 6, 9, 12, 16, 20, 25, 30, 36, 42, 49, 56, 64, 72, 81, 100)  # minimum region sizes tried, stride-32 cells
LAYOUTS = [("normal", 14, None, 8), ("itc", 14, 1, 3), ("micro-small", 14, 3, 3), ("micro", 14, 6, 2), ("macro", 22, 18, 1)]


SINGLE = -1  # the fold of a patch held out by the single bundled model (scored by the bundled model itself)


def cv_folds(run: Path) -> dict[int, Path]:
    """fold -> the fold run of the cross-validation folder `run` that has scored its held-out patches."""
    folds = {int(p.parent.name.removeprefix("fold-")): p.parent for p in sorted((run / "folds").glob("fold-*/oof_predictions.csv"))}
    if not folds:
        raise SystemExit(f"{run}: no fold of a cross-validation has scored its held-out patches "
                         "(folds/fold-<k>/oof_predictions.csv); give a folder of `pcam train --folds K`")
    return folds


def held_out_patches(run: Path | None = None) -> pd.DataFrame:
    """id, label, fold of the patches the scoring model never trained on: the single model's held-out patches
    (fold SINGLE), or every patch of the ensemble with the fold whose member held it out; with `run` (a
    cross-validation folder), the held-out patches of its scored folds."""
    from pcam_core.bundled import BUNDLED_DIR, is_ensemble
    from pcam_core.runs.folder import RunDir

    if run is not None:
        return pd.concat([pd.read_csv(f / "oof_predictions.csv", dtype={"id": str})[["id", "label", "fold"]]
                          for f in cv_folds(run).values()], ignore_index=True)
    if is_ensemble():
        return pd.read_csv(RunDir(BUNDLED_DIR).oof_predictions_path, dtype={"id": str})[["id", "label", "fold"]]
    table = pd.read_csv(RunDir(BUNDLED_DIR).valid_predictions_path, dtype={"id": str})[["id", "label"]]
    return table.assign(fold=SINGLE)


def scoring_runs(run: Path | None = None) -> dict[int, str | Path]:
    """fold -> the run that scores that fold's slides: the bundled model (SINGLE), or each fold's member folder (of
    `run`, a cross-validation folder, where given)."""
    from pcam_core.bundled import BUNDLED, BUNDLED_DIR, is_ensemble
    from pcam_core.checkpoint import load_checkpoint
    from pcam_core.ensemble import member_runs
    from pcam_core.runs.folder import RunDir

    if run is not None:
        return dict(cv_folds(run))
    if not is_ensemble():
        return {SINGLE: BUNDLED}
    return {int(load_checkpoint(m.best_checkpoint)["config"]["data"]["fold"]): m.path for m in member_runs(RunDir(BUNDLED_DIR))}


def halves(seed: int, run: Path | None = None) -> dict[str, pd.DataFrame]:
    """The held-out patches (`held_out_patches`), split in two halves stratified by fold and label."""
    table = held_out_patches(run)
    rng = np.random.default_rng(seed)
    fit = []
    for _, group in table.groupby(["fold", "label"]):
        ids = group["id"].to_numpy()
        fit += list(rng.permutation(ids)[: len(ids) // 2])
    in_fit = table["id"].isin(fit)
    return {"fit": table[in_fit], "report": table[~in_fit]}


def check_work(work: Path, run: Path | None = None) -> None:
    """Refuse a `--work` whose analyses were made with other models (they are reused when run again)."""
    import hashlib

    from pcam_core.bundled import bundled_checkpoint
    from pcam_core.runs import RunDir

    if run is None:
        stamp = {"model": bundled_checkpoint().name, "sha1": hashlib.sha1(bundled_checkpoint().read_bytes()).hexdigest()}
    else:
        stamp = {str(f): hashlib.sha1(RunDir(folder).best_checkpoint.read_bytes()).hexdigest()
                 for f, folder in cv_folds(run).items()}
    path = work / "bundled.json"
    if path.exists() and json.loads(path.read_text()) != stamp:
        raise SystemExit(f"{work} holds slides analysed with other models ({path}); delete it or give another --work")
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamp))


def build_slides(data: Path, work: Path, seed: int, per_kind: int | None = None, run: Path | None = None) -> list[dict]:
    """Write the mosaic slides of both halves (once) and return their records: half, name, kind, fold, slide, truth.
    Each slide is made of one fold's patches; the folds take the slides of a half in turn."""
    from pcam_core.slides.mosaic import write_mosaic_slide

    records = []
    for h, (half, table) in enumerate(halves(seed, run).items()):
        folds = sorted(table["fold"].unique())
        pixels = {(f, label): [np.asarray(Image.open(data / "train" / f"{i}.tif").convert("RGB"))
                               for i in table["id"][(table["fold"] == f) & (table["label"] == label)]]
                  for f in folds for label in (0, 1)}
        rng = np.random.default_rng(seed + 100 * h)
        turn = 0
        for kind, side, lesion, count in LAYOUTS:
            for k in range(count if per_kind is None else min(count, per_kind)):
                fold = int(folds[turn % len(folds)])
                turn += 1
                name = f"{half}-{kind}-{k}" + ("" if fold == SINGLE else f"-fold{fold}")
                lesions = []
                if lesion:
                    r0, c0 = (int(v) for v in rng.integers(1, side - lesion, size=2)) if side - lesion > 1 else (0, 0)
                    lesions = [(r0, r0 + lesion, c0, c0 + lesion)]
                slide = work / "slides" / name / "slide.tif"
                truth_path = slide.with_name("truth.json")
                if not truth_path.exists():
                    truth = write_mosaic_slide(slide, pixels[fold, 0], pixels[fold, 1], rows=side, cols=side, lesions=lesions,
                                               seed=int(rng.integers(1 << 31)))
                    truth_path.write_text(json.dumps(truth))
                else:
                    rng.integers(1 << 31)  # the same draws as when it was written
                records.append({"half": half, "name": name, "kind": kind, "fold": fold, "slide": slide,
                                "truth": json.loads(truth_path.read_text()), "analysis": work / "analyses" / name})
    return records


def analyse_all(records: list[dict], stride: int, tta: bool, run: Path | None = None, target: str | Path = "bundled") -> None:
    """Analyse each slide with the run that never trained on its patches, at the threshold of `target` (the model
    the decision is for)."""
    from pcam_core.loading import run_threshold
    from pcam_core.scoring_options import ScoringOptions
    from pcam_core.slides.batch import analyse

    runs, threshold = scoring_runs(run), run_threshold(target)
    for k, record in enumerate(records, 1):
        if (record["analysis"] / "summary.json").exists():
            continue
        start = time.time()
        options = ScoringOptions(device="cpu", workers=0, tta=tta, threshold=threshold)
        analyse(runs[record["fold"]], record["slide"], record["analysis"], options, stride=stride)
        print(f"[{k}/{len(records)}] {record['name']} analysed in {time.time() - start:.0f} s", flush=True)


def region_table(records: list[dict]) -> pd.DataFrame:
    """Every region (cells at the cell threshold) of every analysed slide, with whether it hits its slide's lesion
    (its centroid within the lesion's box grown by one cell) and the region's properties."""
    from pcam_core.slides.folder import AnalysisFolder
    from pcam_core.slides.outputs import tumour_regions, valid_cells
    from pcam_core.slides.viewer import lattice_of, load_heat, load_summary

    properties = ("cells", "area_mm2", "max_probability", "mean_probability", "agreement", "longest_diameter_mm")
    rows = []
    for record in records:
        folder = AnalysisFolder(record["analysis"])
        summary = load_summary(folder)
        lattice, heat = lattice_of(summary), load_heat(folder)
        record.update(heat=heat[valid_cells(heat)], threshold=float(summary["threshold"]), cell_mm2=lattice.cell_mm**2,
                      regions=tumour_regions(heat, lattice, float(summary["threshold"])))
        boxes = [lesion["box"] for lesion in record["truth"]["lesions"]]
        grow = lattice.cell_px
        for feature in record["regions"]:
            p = feature["properties"]
            hit = next((k for k, (x, y, w, h) in enumerate(boxes)
                        if x - grow <= p["centroid_x"] <= x + w + grow and y - grow <= p["centroid_y"] <= y + h + grow), -1)
            rows.append({"slide": record["name"], "half": record["half"], "kind": record["kind"], "lesion": hit,
                         **{k: p[k] for k in properties}})
    return pd.DataFrame(rows, columns=["slide", "half", "kind", "lesion", *properties])  # the columns even with no region


def rule_figures(table: pd.DataFrame, records: list[dict], rule) -> dict:
    """What a rule reports on these slides: reported false regions per normal slide (and per lesion slide), the
    normal slides given a size class, the lesions found per size class."""
    from pcam_core.staging import size_class

    names = {r["name"] for r in records}
    part = table[table["slide"].isin(names)]
    reported = pd.Series([not rule.failures(row) for row in part.to_dict("records")], index=part.index, dtype=bool)
    normal = [r for r in records if r["kind"] == "normal"]
    lesion_slides = [r for r in records if r["kind"] != "normal"]
    false = part["lesion"] < 0
    found: dict[str, list[int]] = {}
    for r in lesion_slides:
        for k, lesion in enumerate(r["truth"]["lesions"]):
            hit = reported & (part["slide"] == r["name"]) & (part["lesion"] == k)
            found.setdefault(lesion["size_class"], []).append(int(hit.any()))
    largest = part[reported].groupby("slide")["longest_diameter_mm"].max()
    classes = {r["name"]: size_class(float(largest.get(r["name"], 0.0))) for r in records}
    return {
        "false_regions_per_normal_slide": float((reported & false & part["kind"].eq("normal")).sum() / max(len(normal), 1)),
        "false_regions_per_lesion_slide": float((reported & false & part["kind"].ne("normal")).sum() / max(len(lesion_slides), 1)),
        "normal_slides_with_a_size_class": int(sum(classes[r["name"]] != "none" for r in normal)),
        "normal_slides": len(normal),
        "lesions_found": {c: f"{sum(v)}/{len(v)}" for c, v in sorted(found.items())},
        "lesion_slides_size_class": {r["name"]: f"{classes[r['name']]} (truth {r['truth']['lesions'][0]['size_class']})"
                                     for r in lesion_slides},
        "non_itc_found": sum(sum(v) for c, v in found.items() if c != "itc"),
        "itc_found": sum(found.get("itc", [])),
    }


def middle_of(points: list[tuple], grid: tuple[tuple, ...]) -> int:
    """The index of the point of `points` (each a value of every axis of `grid`) nearest the median of them in every
    axis at once: the least summed distance, in steps of the grid, from each axis's median step; the first of equals."""
    steps = np.array([[axis.index(value) for axis, value in zip(grid, point)] for point in points])
    return int(np.argmin(np.abs(steps - np.median(steps, axis=0)).sum(axis=1)))


def choose_rule(table: pd.DataFrame, records: list[dict], target: float):
    """The operating point: of a grid of rules, those with at most `target` reported false regions per normal
    slide; of them those finding the most micro/macro lesions (ITCs are not counted, as CAMELYON16's FROC does not:
    one patch of tumour is the size of this model's false alarms), then with the fewest false regions on all the
    slides; of these (which do equally well on the fit slides) the one in the middle of their range in every parameter
    at once (the least summed distance, in steps of the grid, from the median step of each parameter among them), so
    that no side of the operating point sits on its edge. (Until 2026-12-07 the middle one in the order of minimum
    cells then the probability minimums: the middle in cells, but it could sit at the edge of the others, and did.)"""
    import itertools

    from pcam_core.slides.decision import RegionRule

    cell_mm2 = records[0]["cell_mm2"]
    scored = []
    grid = (CELLS, (0.5, 0.8, 0.9, 0.95, 0.98, 0.99), (0.0, 0.6, 0.7, 0.8, 0.9), (0.0, 0.3, 0.5, 0.6, 0.7))
    for cells, top, mean, agree in itertools.product(*grid):
        rule = RegionRule(min_area_mm2=round(cells * cell_mm2 * 0.999, 7), min_max_probability=top, min_mean_probability=mean,
                          min_agreement=agree)
        figures = rule_figures(table, records, rule)
        if figures["false_regions_per_normal_slide"] <= target:
            key = (figures["non_itc_found"], -figures["false_regions_per_lesion_slide"] - figures["false_regions_per_normal_slide"])
            scored.append((key, (cells, top, mean, agree), rule))
    if not scored:
        raise SystemExit(f"no rule of the grid reaches {target} false regions per normal slide")
    best = max(key for key, _, _ in scored)
    tied = sorted((params, rule) for key, params, rule in scored if key == best)
    params, rule = tied[middle_of([params for params, _ in tied], grid)]
    print(f"operating point: {len(scored)} rules of the grid keep to {target} false regions per normal slide; "
          f"{len(tied)} of them do best (lesions found, false regions); the middle one: min cells {params[0]}, "
          f"highest p {params[1]}, mean p {params[2]}, agreement {params[3]}", flush=True)
    return rule, params[0]


def features_and_labels(records: list[dict], rule) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from pcam_core.slides.decision import FEATURES, decide_regions, slide_features

    x, y = [], []
    for r in records:
        decided = decide_regions([{"properties": dict(f["properties"])} for f in r["regions"]], rule)
        features = slide_features(r["heat"], decided, r["threshold"], r["cell_mm2"])
        x.append([features[name] for name in FEATURES])
        y.append(int(r["kind"] != "normal"))
    return np.array(x), np.array(y), list(FEATURES)


def fit_and_report(records: list[dict], args: argparse.Namespace) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from pcam_core.fileio import atomic_write_json
    from pcam_core.runs import resolve_run
    from pcam_core.decision import REFER, TUMOUR
    from pcam_core.slides.decision import RegionRule, SlideClassifier, SlideDecision, slide_call, slide_features

    table = region_table(records)
    fit = [r for r in records if r["half"] == "fit"]
    report = [r for r in records if r["half"] == "report"]
    rule, cells = choose_rule(table, fit, args.false_regions)
    x, y, names = features_and_labels(fit, rule)
    mean, scale = x.mean(axis=0), np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    model = LogisticRegression(C=1.0).fit((x - mean) / scale, y)
    classifier = SlideClassifier(tuple(names), tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, model.coef_[0])),
                                 float(model.intercept_[0]))
    everything = RegionRule(min_area_mm2=0.0, min_max_probability=0.0)  # before: every region reported
    figures: dict[str, dict] = {}
    for half, slides in (("fit", fit), ("report", report)):
        xs, ys, _ = features_and_labels(slides, rule)
        x_before, _, _ = features_and_labels(slides, everything)
        scores = np.array([classifier.score(dict(zip(names, row))) for row in xs])
        reported = xs[:, names.index("regions_reported")] > 0
        slide_calls = [slide_call(s, classifier.threshold, r) for s, r in zip(scores, reported)]  # as the analysis calls it
        no_itc = np.array([r["kind"] != "itc" for r in slides])  # the slide AUC without the ITC slides as well
        figures[half] = {
            "slides": {"normal": int((ys == 0).sum()), "lesion": int((ys == 1).sum())},
            "before": {**rule_figures(table, slides, everything), "slide_auc_max_cell": float(roc_auc_score(ys, x_before[:, 0])),
                       "slide_auc_max_cell_without_itc_slides": float(roc_auc_score(ys[no_itc], x_before[no_itc, 0])),
                       "normal_slides_called_tumour": int(sum(row[0] >= 0.5 for row, t in zip(x_before, ys) if t == 0))},
            "after": {**rule_figures(table, slides, rule), "slide_auc": float(roc_auc_score(ys, scores)),
                      "slide_auc_without_itc_slides": float(roc_auc_score(ys[no_itc], scores[no_itc])),
                      "slide_scores": {r["name"]: round(float(v), 4) for r, v in zip(slides, scores)},
                      **{f"{kind}_slides_{verdict}": int(sum(c == word for c, t in zip(slide_calls, ys) if t == label))
                         for kind, label in (("normal", 0), ("lesion", 1))
                         for verdict, word in (("called_tumour", TUMOUR), ("referred", REFER))}},
        }
    ensemble = any(r["fold"] != SINGLE for r in records)
    target = "the ensemble's" if args.run is None else f"{args.target}, a model of its recipe"
    patches = (f"each fold's held-out patches{'' if args.run is None else f' of the cross-validation {args.run.name}'}, each "
               f"slide scored by that fold's member alone (out-of-fold slide maps; applied to {target})" if ensemble
               else "the bundled model's held-out patches")
    source = (f"scripts/fit_slide_decision.py: mosaics of one half of {patches} ({len(fit)} slides), stride {args.stride}, "
              f"{'TTA' if args.tta else 'one pass (no TTA)'}")
    decision = SlideDecision(rule, classifier, source, {
        "target_false_regions_per_normal_slide": args.false_regions, "min_cells_at_stride_32": cells, "seed": args.seed,
        "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": {"fit": figures["fit"], "report (the other half's patches, never fitted on)": figures["report"]}})
    print(json.dumps(decision.record(), indent=1))
    if args.write:
        path = resolve_run(args.target).folder.slide_decision_path
        atomic_write_json(path, decision.record())
        print(f"written: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="PCam patches in the Kaggle layout (train/<id>.tif)")
    parser.add_argument("--run", type=Path, default=None, help="a cross-validation folder (`pcam train --folds K`) whose "
                        "members map the slides of their own held-out patches (default: the bundled model)")
    parser.add_argument("--for", dest="target", default=None, help="the run the decision is for: its threshold, and its "
                        "slide_decision.json with --write (default: --run, else bundled)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slide-decision"), help="where the slides and analyses go")
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False, help="analyse with TTA (8x slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--false-regions", type=float, default=0.25, help="reported regions allowed per normal FIT slide")
    parser.add_argument("--analyse-only", action="store_true", help="build and analyse the slides, fit nothing")
    parser.add_argument("--write", action="store_true", help="write the slide_decision.json of --for (default: the bundled model's)")
    parser.add_argument("--per-kind", type=int, default=None, help="at most this many slides of each kind per half (a quick check)")
    args = parser.parse_args(argv)
    if not (args.data / "train_labels.csv").exists():
        raise SystemExit(f"{args.data} is not a Kaggle-layout PCam folder (no train_labels.csv)")
    args.target = args.target or (args.run if args.run is not None else "bundled")
    check_work(args.work, args.run)
    records = build_slides(args.data, args.work, args.seed, args.per_kind, args.run)
    analyse_all(records, args.stride, args.tta, args.run, args.target)
    if args.analyse_only:
        return
    fit_and_report(records, args)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
