"""The slide decision: which tumour regions are reported, the slide's tumour score and its call. One home for
the rule, its parameters and their defaults.

A map of thousands of cells always holds some hot cells: at a patch false-positive rate of a few percent, every
normal slide would get dozens of "tumour regions" and a slide score (its highest cell) near 1. So, as the best
CAMELYON16 entries did, regions and slides are decided on features of the map, with an operating point chosen on
slides with truth:

- **Regions** (`RegionRule`): a region (4-connected cells at or above the cell threshold) is *reported* when its
  area, its highest probability, its mean probability and the agreement of its cells' neighbours (the mean share
  of a cell's 8 neighbours that belong to the region too) all reach the rule's minimums. The others are still
  listed, marked "below the reporting threshold", and get no size class; the slide's size class comes from the
  reported regions only (`pcam_core.staging`).
- **The slide score** (`SlideClassifier`): a logistic regression on `slide_features` of the map, the slide's
  tumour score in [0, 1]; the slide is called tumour when it reaches the classifier's threshold and at least one
  region is reported. A score at the threshold with no region to show is called "refer" (`REFER_REASON`): the tool
  sends the slide to a pathologist rather than claim tumour it cannot point at (on 8 normal held-out mosaics the
  ensemble's classifier scored 3 over its threshold with no region reported: docs/slides.md). Without a fitted
  classifier the score is the highest probability of a reported region (0 when none is), and the call is tumour
  exactly when a region is reported.

The parameters of a run live in its folder's `slide_decision.json` (the bundled model's is shipped beside it,
fitted by `scripts/fit_slide_decision.py` on mosaics of its held-out patches: docs/slides.md); a run without
one uses `DEFAULT_RULE` and no classifier. The map's TTA views are not kept (only their mean), so the rule
cannot ask the views to agree. Imports nothing of ours but the ground rules (decision, staging).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..decision import NORMAL, REFER, TUMOUR, call, is_tumour
from ..staging import size_class

CELL_MM2_32 = (32 * 0.972e-3) ** 2  # the area of a stride-32 cell at PCam scale (0.000967 mm²)
REPORTED = "reported"
BELOW = "below the reporting threshold"
# how the slide's call reads wherever it is shown (the Slides page, the slide report, the case report)
SLIDE_CALL_WORDS = {TUMOUR: "tumour", NORMAL: "no tumour", REFER: "refer"}
REFER_REASON = ("the slide score reaches its threshold but no region is large and sure enough to report: a pathologist "
                "reviews the map; the tool does not call tumour that it cannot point at")
TOP_K = 10  # slide_topk_mean and the top-k feature: the mean of the k highest cell probabilities


@dataclass(frozen=True)
class RegionRule:
    """The minimums a region must reach to be reported. `min_area_mm2`: area (a stride-32 cell is 0.000967 mm²,
    so 0.0087 mm² is 9 cells: one PCam patch's 93 µm square); `min_max_probability`, `min_mean_probability`: of
    its cells; `min_agreement`: the mean share of its cells' 8 neighbours inside the region (a lone cell 0, a 3 x 3
    block 0.56, a large block near 1)."""

    min_area_mm2: float = 0.0087
    min_max_probability: float = 0.9
    min_mean_probability: float = 0.0
    min_agreement: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value >= 0 and (name == "min_area_mm2" or value <= 1)):
                raise ValueError(f"{name}={value!r}: give a number >= 0" + ("" if name == "min_area_mm2" else " and <= 1"))

    def failures(self, props: Mapping[str, Any]) -> list[str]:
        """What a region (its GeoJSON properties) falls short of; empty when it is reported."""
        checks = [("area", "area_mm2", self.min_area_mm2, "{:.4f} mm²"),
                  ("highest probability", "max_probability", self.min_max_probability, "{:.3f}"),
                  ("mean probability", "mean_probability", self.min_mean_probability, "{:.3f}"),
                  ("neighbour agreement", "agreement", self.min_agreement, "{:.2f}")]
        return [f"{words} {fmt.format(props[key])} < {fmt.format(minimum)}" for words, key, minimum, fmt in checks
                if props[key] < minimum]


DEFAULT_RULE = RegionRule()


@dataclass(frozen=True)
class SlideClassifier:
    """A logistic regression on standardised `slide_features`: score = sigmoid(coef . (x - mean) / scale + intercept)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float = 0.5  # the call: tumour when the score reaches it

    def __post_init__(self) -> None:
        unknown = set(self.features) - set(FEATURES)
        if unknown or not len(self.features) == len(self.mean) == len(self.scale) == len(self.coef):
            raise ValueError(f"a slide classifier needs one mean, scale and coefficient per feature, features among "
                             f"{', '.join(FEATURES)}; got {self.features} (unknown: {sorted(unknown)})")

    def score(self, features: Mapping[str, float]) -> float:
        x = np.array([features[name] for name in self.features], dtype=np.float64)
        z = float(np.dot(self.coef, (x - np.array(self.mean)) / np.array(self.scale)) + self.intercept)
        return float(1.0 / (1.0 + math.exp(-z))) if z > -700 else 0.0


@dataclass(frozen=True)
class SlideDecision:
    """A run's slide decision: its region rule, its slide classifier (None: the score is the highest reported
    region's probability), and where they came from (`source`, and the figures of their fit)."""

    rule: RegionRule = DEFAULT_RULE
    classifier: SlideClassifier | None = None
    source: str = "default (no slide_decision.json for this run)"
    fitted: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The decision as JSON (what summary.json and slide_decision.json hold)."""
        return {"rule": asdict(self.rule), "classifier": None if self.classifier is None else asdict(self.classifier),
                "source": self.source, "fitted": self.fitted}

    @classmethod
    def from_record(cls, data: Mapping[str, Any], source: str | None = None) -> "SlideDecision":
        try:
            classifier = data.get("classifier")
            return cls(RegionRule(**data.get("rule", {})),
                       None if classifier is None else SlideClassifier(**{k: tuple(v) if isinstance(v, list) else v
                                                                          for k, v in classifier.items()}),
                       source or data.get("source", "slide_decision.json"), dict(data.get("fitted", {})))
        except TypeError as err:
            raise ValueError(f"not a slide decision record: {err}") from err


def load_slide_decision(path: str | Path) -> SlideDecision:
    """The slide decision a run's slide_decision.json holds (`runs.folder.RunDir.slide_decision_path`), else the
    stated default when there is none."""
    import json

    path = Path(path)
    if not path.exists():
        return SlideDecision()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read as a slide decision: {err}") from err
    try:
        return SlideDecision.from_record(data, source=f"fitted: {data.get('source', path.name)}")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def rule_words(rule: Mapping[str, Any] | RegionRule | None) -> str:
    """The reporting rule in words (a record's `rule` or a `RegionRule`), for the report and the page."""
    if rule is None:
        return "every region at the cell threshold is reported (an analysis made before the slide decision)"
    r = rule if isinstance(rule, RegionRule) else RegionRule(**rule)
    return (f"a region is reported when its area is at least {r.min_area_mm2:.4f} mm² (about {r.min_area_mm2 / CELL_MM2_32:.0f} "
            f"cells at stride 32), its highest probability at least {r.min_max_probability:g}, its mean probability at least "
            f"{r.min_mean_probability:g} and its neighbour agreement at least {r.min_agreement:g}")


def reporting_words(props: Mapping[str, Any]) -> str:
    """A region's standing in words: "reported", or "below the reporting threshold (what it fell short of)"; a region
    of an analysis made before the slide decision was reported."""
    if props.get("reported", True):
        return REPORTED
    return f"{BELOW} ({'; '.join(props.get('below') or [])})" if props.get("below") else BELOW


def is_reported(props: Mapping[str, Any]) -> bool:
    """Whether a region (its properties) is reported; every region of an analysis made before the slide decision was."""
    return bool(props.get("reported", True))


def region_agreement(region: np.ndarray) -> float:
    """The mean share of a region's cells' 8 neighbours that belong to the region too (`region`: a boolean mask)."""
    neighbours = ndimage.convolve(region.astype(np.int32), np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]]), mode="constant")
    return float(neighbours[region].mean() / 8) if region.any() else 0.0


def decide_regions(features: list[dict[str, Any]], rule: RegionRule) -> list[dict[str, Any]]:
    """Mark each region feature (`outputs.tumour_regions`'s) reported or below the reporting threshold, in place:
    properties `reported`, `reporting` (its words), `below` (what it fell short of) and `size_class` (None when
    not reported); a region below the threshold gets QuPath's class "Tumor (below reporting threshold)", grey.
    Returns the features."""
    for feature in features:
        props = feature["properties"]
        short = rule.failures(props)
        props.update(reported=not short, reporting=BELOW if short else REPORTED, below=short,
                     size_class=None if short else size_class(props["longest_diameter_mm"]))
        if short and "classification" in props:  # QuPath colours (and hides) annotations by class
            props["classification"] = {"name": "Tumor (below reporting threshold)", "color": [150, 150, 150]}
    return features


FEATURES = ("max_cell", "topk_mean", "largest_region_mm2", "regions_reported", "positive_fraction", "mass_mm2",
            "largest_region_mean")


def slide_features(heat: np.ndarray, regions: Sequence[Mapping[str, Any]], threshold: float, cell_mm2: float) -> dict[str, float]:
    """Features of a map and its (decided) regions for the slide classifier: the highest cell, the mean of the top
    k cells, log1p of the largest region's area in units of 0.001 mm², the number of reported regions, the share of
    scored cells at the threshold, log1p of the probability mass (sum of the probability of the cells at the
    threshold, in 0.001 mm²) and the mean probability of the largest region. `heat`: valid cells only
    (a 1-d array of the probabilities)."""
    values = np.sort(np.asarray(heat, dtype=np.float64))[::-1]
    hot = values[is_tumour(values, threshold)]
    props = [r.get("properties", r) for r in regions]
    largest = max(props, key=lambda p: p["area_mm2"], default=None)
    return {
        "max_cell": float(values[0]) if len(values) else 0.0,
        "topk_mean": float(values[:TOP_K].mean()) if len(values) else 0.0,
        "largest_region_mm2": float(np.log1p(largest["area_mm2"] / 1e-3)) if largest else 0.0,
        "regions_reported": float(sum(bool(p.get("reported")) for p in props)),
        "positive_fraction": float(len(hot) / len(values)) if len(values) else 0.0,
        "mass_mm2": float(np.log1p(hot.sum() * cell_mm2 / 1e-3)),
        "largest_region_mean": float(largest["mean_probability"]) if largest else 0.0,
    }


def slide_call(score: float, threshold: float, reported: bool) -> str:
    """The slide's call: tumour when `score` reaches `threshold` and a region is `reported`, refer when it reaches it
    with none to show (`REFER_REASON`), normal otherwise."""
    verdict = call(score, threshold)
    return REFER if verdict == TUMOUR and not reported else verdict


def slide_decision(heat_values: np.ndarray, regions: list[dict[str, Any]], threshold: float, cell_mm2: float,
                   decision: SlideDecision) -> dict[str, Any]:
    """Decide the regions (in place) and the slide: summary.json's decision keys. `slide_score` is the slide's
    tumour score, `call` tumour, normal or refer (a tumour score with no region reported, `call_reason` says so),
    `size_class` that of the largest reported region."""
    decide_regions(regions, decision.rule)
    reported = [f["properties"] for f in regions if f["properties"]["reported"]]
    features = slide_features(heat_values, regions, threshold, cell_mm2)
    if decision.classifier is not None:
        score, slide_threshold = decision.classifier.score(features), decision.classifier.threshold
        method = "logistic regression on features of the map (slide_features)"
    else:
        score, slide_threshold = max((p["max_probability"] for p in reported), default=0.0), threshold
        method = "the highest probability of a reported region (no fitted slide classifier)"
    largest = max((p["longest_diameter_mm"] for p in reported), default=0.0)
    verdict = slide_call(score, slide_threshold, bool(reported))
    return {
        "slide_score": float(score), "slide_threshold": float(slide_threshold), "slide_score_method": method,
        "call": verdict, "call_reason": REFER_REASON if verdict == REFER else None,
        "slide_features": features,
        "regions_reported": len(reported), "regions_below_threshold": len(regions) - len(reported),
        "tumour_area_mm2": float(sum(p["area_mm2"] for p in reported)),
        "largest_diameter_mm": float(largest), "size_class": size_class(largest),
        "decision": decision.record(),
    }


__all__ = ["BELOW", "CELL_MM2_32", "DEFAULT_RULE", "is_reported", "reporting_words", "rule_words", "FEATURES", "REPORTED", "RegionRule", "SlideClassifier", "SlideDecision", "TOP_K",
           "REFER_REASON", "SLIDE_CALL_WORDS", "decide_regions", "load_slide_decision", "region_agreement", "slide_call", "slide_decision",
           "slide_features"]
