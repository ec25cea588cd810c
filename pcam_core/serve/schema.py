"""What `pcam serve` takes and answers, as pydantic models. FastAPI checks requests against them and writes
the OpenAPI schema from them, so the schema states every field, constraint and status the server keeps to
(tests/e2e/test_serve.py runs schemathesis against it). Requests refuse fields they do not know.

Two rules keep their own homes and the schema only repeats their words: a threshold's range is
`decision.check_threshold` (called by the validators here), and which slide paths exist is
`app.resolve_slide` (the `path` pattern below describes what it accepts).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from ..decision import CALLS, REFER, check_threshold
from ..scoring_options import DEFAULT_SLIDE_MODE, DEFAULT_SLIDE_TTA, SLIDE_MODES
from ..slides.reader import MPP_RANGE, SLIDE_SUFFIXES
from ..slides.scope_map import NOT_ASSESSED
from ..staging import SIZE_CLASSES

# decision.check_threshold's range, in the schema's words (tests/test_serve_units.py checks they agree)
THRESHOLD_RANGE = {"minimum": 0.0, "maximum": 1.0}
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
STRIDES = (32, 96)


def _slide_path_pattern() -> str:
    """A relative path of '/'-separated names, none of them '..' and none holding NUL: a slide file (its suffix is
    checked by the server, which answers 400 naming the valid ones) or a folder holding one DICOM series."""
    segment = r"(?:[^/\x00.][^/\x00]*|\.[^/\x00.][^/\x00]*|\.\.[^/\x00]+|\.)"
    return rf"^(?:{segment}/)*{segment}/?$"


SLIDE_PATH_PATTERN = _slide_path_pattern()


def _threshold(value: float | None) -> float | None:
    return None if value is None else check_threshold(value)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictQuery(_Request):
    """The query of `POST /v1/predict`."""

    # a query cannot say null: the schema offers a number, and leaving it out means the run's own
    threshold: Annotated[float | None, WithJsonSchema({"type": "number", **THRESHOLD_RANGE})] = Field(None, description=(
        "probability at which a patch is called tumour (sets the calls only); default: the run's own threshold"))
    tta: bool = Field(False, description="average the 8 symmetries of the square (8 forward passes a patch)")

    _check_threshold = field_validator("threshold")(_threshold)


class SlideRequest(_Request):
    """A whole-slide analysis of a slide file in the server's slides folder (`POST /v1/slides`)."""

    path: str = Field(min_length=1, max_length=1024, examples=["case1/slide.svs"], json_schema_extra={"pattern": SLIDE_PATH_PATTERN},
                      description=f"the slide, relative to the server's --slides-dir: a file ending in one of "
                                  f"{', '.join(SLIDE_SUFFIXES)}, or a folder holding one scan's DICOM series")
    stride: Literal[STRIDES] = Field(32, description="cell size in PCam-scale pixels: 32, or 96 (9x cheaper)")  # type: ignore[valid-type]
    tta: bool = Field(DEFAULT_SLIDE_TTA, description="average the 8 symmetries of the square (8x slower)")
    mode: Literal[SLIDE_MODES] | None = Field(None, description=(  # type: ignore[valid-type]
        f"how the windows are scored; default: the fastest exact one at stride 32 (dense for a model that scans exactly, "
        f"pcamscan; else {DEFAULT_SLIDE_MODE}), window at stride 96. cascade: a dense pass, then each window near a cell "
        "that could be tumour scored alone; dense: one pass over each region (exact for pcamscan, approximate at window "
        "borders for pcamnet); window: each window alone (the reference). A model that cannot scan is "
        "scored window by window (the summary's `mode` says which)"))
    threshold: float | None = Field(None, json_schema_extra=THRESHOLD_RANGE, description=(
        "probability at which a cell counts as tumour; default: the run's own threshold"))
    mpp: float | None = Field(None, ge=MPP_RANGE[0], le=MPP_RANGE[1], description=(
        "microns per level-0 pixel, for a slide whose metadata lacks it (0.25 for a 40x scan, 0.5 for 20x); "
        "default: the slide's own"))

    _check_threshold = field_validator("threshold")(_threshold)


# -- answers -------------------------------------------------------------------------------------------

class ErrorAnswer(BaseModel):
    """Every error: what went wrong and, where the client can, what to send instead."""

    error: str


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    version: str


class ModelInfo(BaseModel):
    model: str = Field(description="the architecture (of each member, for an ensemble)")
    members: int = Field(ge=1, description="how many networks score each patch: 1, or an ensemble's members (the bundled "
                                           "model's 5), each a forward pass")
    run: str = Field(description="the --run the server was started with")
    checkpoint_epoch: int | None = Field(description="completed training epochs of the checkpoint")
    threshold: float = Field(description="the run's own threshold: the default of every call")
    temperature: float | None = Field(description="the run's fitted temperature T (calibration), or null")
    bias: float | None = Field(description="the run's fitted calibration bias b (calibrated = sigmoid(logit(p) / T + b)), or null")
    calibration_warning: str | None = Field(description="why the calibration is not to be trusted (T or b at the edge of "
                                                        "its fit, docs/trust.md), or null")
    device: str
    slides: bool = Field(description="whether POST /v1/slides is on (the server has a --slides-dir)")
    limits: dict[str, int | float]
    batching: dict[str, dict[str, int]] = Field(description="forward passes run and patches scored, without and with TTA")
    openmp_wait_policy: str | None = Field(description="OMP_WAIT_POLICY when the model was loaded (PASSIVE unless set otherwise)")


class Prediction(BaseModel):
    name: str = Field(description="the file's name as uploaded")
    id: str = Field(description="the file name without its extension, as Kaggle names patches")
    probability: float = Field(ge=0, le=1)
    probability_calibrated: float | None = Field(ge=0, le=1, description="after the run's calibration (temperature and "
                                                 "bias of the scoring mode); null without one")
    call: Literal[(*CALLS, REFER)] = Field(  # type: ignore[valid-type]
        description="tumour when probability >= threshold, else normal; refer when the patch is out of the model's scope")
    notes: list[str] = Field(description="conversions made (grayscale, RGBA, 16-bit to 8-bit RGB)")
    ood_score: float | None = Field(description="the out-of-scope guard's distance (docs/scope.md); null when the run has no guard")
    in_scope: bool | None = Field(description="false when the patch is unlike the tissue the model was trained on (its call is "
                                              "refer); null when the run has no guard")


class Refused(BaseModel):
    name: str
    reason: str


class Predictions(BaseModel):
    model: str
    run: str
    threshold: float = Field(description="the threshold of the calls: the request's, else the run's own")
    tta: bool
    temperature: float | None
    bias: float | None
    calibration_warning: str | None = Field(description="why the calibration of the scoring mode is not to be trusted "
                                                        "(T or b at the edge of its fit, docs/trust.md), or null")
    predictions: list[Prediction]
    refused: list[Refused] = Field(description="files that could not be scored, each with the reason")


class SlideStarted(BaseModel):
    id: str = Field(pattern=JOB_ID_PATTERN)
    state: Literal["running", "finished", "failed"]
    slide: str
    url: str


class Region(BaseModel):
    """A tumour region, named and numbered as in the GeoJSON and the report."""

    name: str
    cells: int
    area_mm2: float
    longest_diameter_mm: float
    max_probability: float
    mean_probability: float | None = Field(None, description="null for an analysis made before the slide decision")
    agreement: float | None = Field(None, description="the mean share of its cells' 8 neighbours inside it")
    reported: bool | None = Field(None, description="whether it passes the reporting rule (pcam_core.slides.decision); "
                                  "null for an analysis made before the slide decision")
    reporting: Literal["reported", "below the reporting threshold"] | None = None
    size_class: Literal[SIZE_CLASSES[1:]] | None = Field(  # type: ignore[valid-type]
        None, description="of its longest diameter; null when below the reporting threshold")
    centroid_x: float = Field(description="level-0 pixels")
    centroid_y: float = Field(description="level-0 pixels")


class SkippedRegion(BaseModel):
    """A part of the slide whose pixels could not be read (level-0 pixels)."""

    x: int
    y: int
    width: int
    height: int
    unreadable_cells: int


class SlideScope(BaseModel):
    """Whether the model was made for this slide (`pcam_core.scope`): when not, it has no size class."""

    in_scope: bool
    reason: str = Field(description="in words, for a reader")
    checked: bool = Field(description="whether the model has an out-of-scope guard that checked the tissue")
    out_of_scope_fraction: float = Field(ge=0, le=1, description="of the scored tissue, left out of the regions")
    cells_out_of_scope: int


class SlideSummary(BaseModel):
    """A finished analysis's results (the outputs hold the rest: GeoJSON, report, heat map)."""

    slide: str = Field(description="the path the analysis was asked for, relative to the slides folder")
    model: str
    checkpoint_epoch: int | None = None
    threshold: float
    stride: int
    tta: bool
    mode: Literal[SLIDE_MODES] = Field("window", description="how the windows were scored (`window` for an analysis "  # type: ignore[valid-type]
                                       "made before the modes)")
    cascade: dict[str, Any] | None = Field(None, description="mode cascade: the bar, the rule and the share of cells scored "
                                           "window by window")
    mpp: float = Field(description="microns per level-0 pixel the analysis used")
    width: int = Field(description="level-0 pixels")
    height: int = Field(description="level-0 pixels")
    windows_scored: int
    cells_scored: int
    cells_at_threshold: int
    cells_unreadable: int
    slide_score: float | None = Field(description="the slide's tumour score (pcam_core.slides.decision; before it, the "
                                      "highest cell probability)")
    slide_threshold: float | None = Field(None, description="the slide is called tumour when slide_score reaches it")
    call: Literal["tumour", "normal", NOT_ASSESSED] | None = None  # type: ignore[valid-type]
    slide_max_cell: float | None = Field(None, description="the highest cell probability")
    slide_topk_mean: float | None
    top_k: int
    regions: int = Field(description="every region listed (reported and below the reporting threshold)")
    regions_reported: int | None = Field(None, description="the regions that pass the reporting rule")
    regions_below_threshold: int | None = None
    tumour_area_mm2: float = Field(description="of the reported regions")
    largest_diameter_mm: float | None = Field(description="the largest reported region's")
    size_class: Literal[(*SIZE_CLASSES, NOT_ASSESSED)]  # type: ignore[valid-type]
    scope: SlideScope | None = Field(None, description="null for an analysis made before the scope guard")
    region_list: list[Region]
    skipped_regions: list[SkippedRegion]
    seconds: float

    @classmethod
    def from_record(cls, record: dict[str, Any], slide: str) -> SlideSummary:
        """The client's part of an analysis's summary.json (no server paths, no internal parameters)."""
        info = record.get("slide_info") or {}
        return cls.model_validate({**record, "slide": slide, "width": info.get("width"), "height": info.get("height")})


class SlideFiles(BaseModel):
    geojson: str = Field(description="the tumour regions as GeoJSON (QuPath reads it)")
    report: str = Field(description="the printable HTML report")
    heatmap: str = Field(description="the heat map as a PNG image")


class SlideAnalysis(BaseModel):
    """A slide analysis as a client follows it: its state, how far it is, and its results when finished."""

    id: str = Field(pattern=JOB_ID_PATTERN)
    slide: str = Field(description="relative to the slides folder")
    state: Literal["running", "finished", "failed"]
    started_at: datetime
    finished_at: datetime | None
    fraction: float = Field(ge=0, le=1, description="of the tissue's windows scored")
    windows_done: int
    windows_total: int | None = Field(description="null until the tissue is found")
    seconds_left: float | None = Field(description="an estimate while running; null before the first windows or when not running")
    summary: SlideSummary | None = Field(description="when finished")
    files: SlideFiles | None = Field(description="the URLs of the outputs, when finished")
    error: str | None = Field(description="why, when failed")


__all__ = ["ErrorAnswer", "Health", "MPP_RANGE", "ModelInfo", "PredictQuery", "Predictions", "SLIDE_PATH_PATTERN",
           "SlideAnalysis", "SlideRequest", "SlideStarted", "SlideSummary", "THRESHOLD_RANGE"]
