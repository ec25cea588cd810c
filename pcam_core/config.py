"""Experiment configuration: one frozen dataclass per concern, composed into `ExperimentConfig`.

The same object travels from the CLI or the dashboard to the trainer unchanged, is saved as
`config.json` in every run folder and inside every checkpoint, and is validated on construction.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DATA_FORMATS = ("auto", "h5", "kaggle")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
MONITORS = ("roc_auc", "pr_auc", "loss", "accuracy", "f1")
# Which epoch a run keeps as its model (`checkpoints/best.pt`): "best" by `monitor` on the validation split, "last"
# (the validation split only watched), or "auto": the last for a fold of a cross-validation, whose validation split
# is the fold its figures are reported on, the best otherwise.
KEEPS = ("auto", "best", "last")


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(valid)}")


def _check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> None:
    if not (lo < value <= hi if lo_open else lo <= value <= hi):
        bracket = "(" if lo_open else "["
        raise ValueError(f"{name}={value!r} is out of range; expected a value in {bracket}{lo}, {hi}]")

COMBINES = ("prob", "logit")  # how an ensemble joins its members (`models.EnsembleModel`): mean probability or mean logit
DEFAULT_COMBINE = "prob"  # measured on real patches: docs/training.md, "Ensembles"


@dataclass(frozen=True)
class DataConfig:
    """Where the patches come from and how they are read."""

    path: str = ""
    format: str = "auto"
    valid_frac: float = 0.1  # used only when the data has no validation split of its own
    split_seed: int = 0
    num_workers: int = -1  # -1: chosen from the machine (0 when the split is cached in memory)
    cache: str = "auto"  # "auto" caches splits under `cache_max_gb` in RAM; "yes"/"no" force it
    cache_max_gb: float = 2.0
    label_overrides: str | None = None  # a review export (`pcam_core.data.overrides`): flips and drops training labels
    folds: int = 0  # cross-validation: K >= 2 splits the training pool into K folds (`data.loader.fold_split`); 0: off
    fold: int = 0  # with `folds`, the fold this run validates on (and does not train on)

    def __post_init__(self) -> None:
        _check_choice("data.format", self.format, DATA_FORMATS)
        if self.folds != 0 and not 2 <= self.folds <= 20:
            raise ValueError(f"data.folds={self.folds} must be 0 (no cross-validation) or between 2 and 20")
        if not 0 <= self.fold < max(self.folds, 1):
            raise ValueError(f"data.fold={self.fold} must lie within 0..{max(self.folds, 1) - 1} (data.folds={self.folds})")
        _check_choice("data.cache", self.cache, ("auto", "yes", "no"))
        _check_range("data.valid_frac", self.valid_frac, 0.0, 0.5, lo_open=True)
        if self.num_workers < -1:
            raise ValueError(f"data.num_workers={self.num_workers} must be -1 (auto) or >= 0")
        if self.label_overrides is not None and not self.label_overrides.strip():
            raise ValueError("data.label_overrides must be the path of a review export (CSV), or None")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, applied to whole batches on the training device.

    The label is defined on the central 32x32 region, so every transform here keeps that region
    in the centre: the 8 symmetries of the square, small shifts, and colour/stain changes.
    """

    symmetries: bool = True  # random flips and 90-degree rotations (the dihedral group D4)
    stain: float = 0.02  # HED stain jitter strength (0 disables)
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    shift: int = 0  # random translation of up to this many pixels, reflect-padded
    mixup: float = 0.0  # mixup (Zhang et al. 2018): pairs of patches and their labels blended, weight ~ Beta(a, a); 0 off

    def __post_init__(self) -> None:
        for name in ("stain", "brightness", "contrast", "saturation"):
            _check_range(f"augment.{name}", getattr(self, name), 0.0, 1.0)
        _check_range("augment.hue", self.hue, 0.0, 0.5)
        _check_range("augment.mixup", self.mixup, 0.0, 4.0)
        if not 0 <= self.shift <= 16:
            raise ValueError(f"augment.shift={self.shift} must be between 0 and 16 pixels")


@dataclass(frozen=True)
class ModelConfig:
    """Which architecture, and optional local weights (never downloaded)."""

    name: str = "auto"  # "auto": the compact model on CPU, resnet18 on CUDA
    weights: str | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_range("model.dropout", self.dropout, 0.0, 0.9)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe."""

    epochs: int = 36
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    warmup_frac: float = 0.15
    pos_weight: float | None = None  # None: n_negative / n_positive of the training split
    label_smoothing: float = 0.0
    ema_decay: float = 0.99  # exponential moving average of the weights; 0 disables
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA (bf16 when supported), off on the CPU
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    max_steps: int | None = None
    early_stopping: int = 0  # epochs without improvement of `monitor` before stopping; 0 disables
    monitor: str = "roc_auc"
    keep: str = "auto"  # which epoch becomes the run's model: see KEEPS
    log_every: int = 10  # steps between lines of steps.jsonl
    checkpoint_minutes: float = 10.0  # also checkpoint mid-epoch this often (a killed run loses less)
    teacher: str | None = None  # a run (folder or "bundled") whose probabilities the targets lean towards: `pcam_core.distil`
    distil: float = 0.5  # with a teacher: target = (1 - distil) * label + distil * the teacher's probability

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs={self.epochs} must be at least 1")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size={self.batch_size} must be at least 1")
        _check_range("train.lr", self.lr, 0.0, 1.0, lo_open=True)
        _check_range("train.weight_decay", self.weight_decay, 0.0, 1.0)
        _check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("train.schedule", self.schedule, SCHEDULES)
        _check_choice("train.device", self.device, DEVICES)
        _check_choice("train.monitor", self.monitor, MONITORS)
        _check_choice("train.keep", self.keep, KEEPS)
        _check_range("train.warmup_frac", self.warmup_frac, 0.0, 0.5)
        _check_range("train.label_smoothing", self.label_smoothing, 0.0, 0.4)
        _check_range("train.ema_decay", self.ema_decay, 0.0, 0.99999)
        _check_range("train.distil", self.distil, 0.0, 1.0, lo_open=True)
        if self.teacher is not None and not str(self.teacher).strip():
            raise ValueError("train.teacher is empty: give a run folder or 'bundled', or leave it out (null)")
        if self.pos_weight is not None and self.pos_weight <= 0:
            raise ValueError(f"train.pos_weight={self.pos_weight} must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps={self.max_steps} must be at least 1")
        if self.early_stopping < 0:
            raise ValueError(f"train.early_stopping={self.early_stopping} must be >= 0")
        if self.log_every < 1:
            raise ValueError(f"train.log_every={self.log_every} must be at least 1")


@dataclass(frozen=True)
class TrackingConfig:
    """Where the run is also logged besides its folder (see `pcam_core.tracking`); the folder stays the record.

    Kept in the config so that a resumed run logs to the same MLflow run."""

    mlflow_uri: str | None = None  # an MLflow tracking URI (sqlite:///mlflow.db, http://host:5000); None: off
    mlflow_experiment: str = "pcam"

    def __post_init__(self) -> None:
        if self.mlflow_uri is not None and (not self.mlflow_uri.strip() or self.mlflow_uri != self.mlflow_uri.strip()):
            raise ValueError(f"tracking.mlflow_uri={self.mlflow_uri!r} must be a URI without surrounding spaces "
                             "(e.g. sqlite:///mlflow.db), or None to log nowhere but the run folder")
        if not self.mlflow_experiment.strip():
            raise ValueError("tracking.mlflow_experiment must not be empty")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a training run."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    world_size: int = 1  # processes (GPUs) the run was launched with; the global batch is batch_size * world_size
    name: str = ""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size={self.world_size} must be at least 1")
        if self.keeps_last_epoch and self.train.early_stopping:
            why = ("a fold of a cross-validation keeps its last epoch (train.keep='auto'): its validation split is the fold "
                   "its figures are reported on, so picking the epoch there would flatter them"
                   if self.train.keep == "auto" else "train.keep='last' keeps the last epoch")
            raise ValueError(f"train.early_stopping={self.train.early_stopping} cannot be used here: {why}. Turn early "
                             "stopping off (0), or set train.keep='best' to stop and keep by the validation split anyway")

    @property
    def keeps_last_epoch(self) -> bool:
        """Whether the run's model is its last epoch rather than its best by `train.monitor` (see KEEPS)."""
        return self.train.keep == "last" or (self.train.keep == "auto" and self.data.folds > 0)

    @property
    def global_batch_size(self) -> int:
        return self.train.batch_size * self.world_size

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["global_batch_size"] = self.global_batch_size
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a dict such as `to_dict()` gives; unknown keys are an error, missing ones take defaults,
        but for one: a config that `to_dict()` wrote (it carries the derived `global_batch_size`) without
        `train.keep` was written before that field existed, when every run kept its best epoch, so it reads
        as `keep='best'` (a resumed old cross-validation then keeps its remaining folds the way it kept the
        first ones)."""
        sections = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig, "train": TrainConfig,
                    "tracking": TrackingConfig}
        raw = dict(raw)
        train = raw.get("train")
        if raw.pop("global_batch_size", None) is not None and isinstance(train, Mapping) and "keep" not in train:
            raw["train"] = {**train, "keep": "best"}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in sections:
                kwargs[key] = _build(sections[key], value, key)
            elif key in ("world_size", "name"):
                kwargs[key] = value
            else:
                raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join([*sections, 'world_size', 'name'])}")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> ExperimentConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON: {err}") from err
        return cls.from_dict(raw)

    def replace(self, **sections: Any) -> ExperimentConfig:
        """A copy with some fields changed: `cfg.replace(train={"epochs": 2}, world_size=2)`."""
        kwargs: dict[str, Any] = {}
        for key, value in sections.items():
            current = getattr(self, key)
            kwargs[key] = dataclasses.replace(current, **value) if dataclasses.is_dataclass(current) else value
        return dataclasses.replace(self, **kwargs)


def _build(cls: type, value: Any, section: str) -> Any:
    if not isinstance(value, Mapping):
        raise ValueError(f"config section {section!r} must be an object, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in config section {section!r}: {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return cls(**value)
