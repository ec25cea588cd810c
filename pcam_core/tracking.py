"""Experiment tracking: a training run mirrored into an MLflow tracking store, when asked.

The run folder stays the record that the dashboard and the CLI read; a `Tracker` copies what the
trainer writes there into MLflow as it goes: the config as parameters (flattened, `train.lr`), every
epoch's metrics (step = epoch; the names of epochs.jsonl, the validation metrics prefixed `valid_`
beside `train_loss`: `valid_loss`, `valid_roc_auc`, `valid_confusion.tp`, ...), `config.json`,
`summary.json` and the best checkpoint as artifacts at the end or on a stop, and the run folder's id as
the tag `pcam.run_id` (with `pcam.synthetic_data`). The MLflow run is named by the run's `--name`,
else by the run folder's name. The MLflow run's id is kept in the run folder (`RunDir.tracking_path`),
so a resumed run logs to the same MLflow run.

MLflow is optional (`pip install 'pcam-core[mlflow]'`) and imported only when a URI is given: the
trainer holds a `NullTracker` otherwise, and on every rank but 0.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from .config import ExperimentConfig, TrackingConfig
from .fileio import atomic_write_json, read_json
from .runs import RunDir

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'pcam-core[mlflow]'"
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"  # MLflow's end states; a stopped run is KILLED
_NOT_METRICS = ("epoch", "time")  # the step itself, and a wall-clock stamp (it becomes the metric's timestamp)
_TRAINING = ("train_loss", "lr", "epoch_seconds", "train_images_per_s", "step")  # an epoch record's own figures; the rest are validation's
_BATCH = 100  # MLflow takes at most 100 parameters (1000 metrics) per log_batch call


class TrackingUnavailable(RuntimeError):
    """A tracking URI was given but its package is not installed."""


class Tracker(Protocol):
    """What the trainer tells a tracking store, on rank 0 only."""

    def start(self, run: RunDir, *, synthetic: bool, name: str | None = None) -> None:
        """Open (or, when the run folder names one, reopen) the tracked run for `run`, named `name` (else
        the run folder's name)."""

    def log_params(self, config: ExperimentConfig) -> None: ...

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        """An epochs.jsonl record: its numbers become metrics at step `epoch`."""

    def log_artifacts(self, files: Iterable[Path], folder: str | None = None) -> None:
        """Copy the files that exist into the tracked run (under `folder`)."""

    def end(self, status: str = FINISHED) -> None: ...


class NullTracker:
    """Tracks nothing: the run folder alone records the run."""

    def start(self, run: RunDir, *, synthetic: bool, name: str | None = None) -> None:
        pass

    def log_params(self, config: ExperimentConfig) -> None:
        pass

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        pass

    def log_artifacts(self, files: Iterable[Path], folder: str | None = None) -> None:
        pass

    def end(self, status: str = FINISHED) -> None:
        pass


def create_tracker(tracking: TrackingConfig, *, module: str = "mlflow") -> Tracker:
    """The tracker `tracking` asks for: a `NullTracker` without a URI, else an `MlflowTracker` connected to
    the store (so that a missing package or a bad URI fails here, before anything is trained). `module` is
    the package to import, MLflow's own unless a test says otherwise."""
    if tracking.mlflow_uri is None:
        return NullTracker()
    try:
        mlflow = importlib.import_module(module)
        entities = importlib.import_module(f"{module}.entities")
    except ImportError as err:
        raise TrackingUnavailable(
            f"logging to the MLflow tracking URI {tracking.mlflow_uri!r} needs the {module!r} package, which could not "
            f"be imported ({err}); install it with: {INSTALL_HINT}"
        ) from err
    return MlflowTracker(mlflow, entities, tracking)


def prepare_store(tracking: TrackingConfig) -> None:
    """Make `tracking`'s store and experiment ready before several processes log to it at once (the folds of a
    cross-validation trained side by side): each would otherwise create a new SQLite store's tables, and all but one
    fail ("table experiments already exists"). Nothing to do without a URI."""
    tracker = create_tracker(tracking)
    if isinstance(tracker, MlflowTracker):
        tracker.experiment_id()


def resolve_uri(uri: str) -> str:
    """`uri` with a relative SQLite or file-store path made absolute, so that the trainer (started from another
    folder, or resumed later) finds the same store. Other URIs (servers, absolute paths) come back unchanged."""
    for scheme in ("sqlite:///", "file:"):
        path = uri[len(scheme):] if uri.startswith(scheme) else ""
        if path and path != ":memory:" and not path.startswith("/"):
            return scheme + str(Path(path).resolve())  # sqlite:////abs/path: four slashes for an absolute path
    return uri


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: {"train": {"lr": 0.002}} -> {"train.lr": 0.002}."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def metric_name(key: str) -> str:
    """The MLflow name of an epochs.jsonl key: the validation metrics get a `valid_` prefix (`loss` ->
    `valid_loss`, `confusion.tp` -> `valid_confusion.tp`) so that they read apart from `train_loss`."""
    return key if key in _TRAINING else f"valid_{key}"


def _artifact_location(uri: str) -> str | None:
    """For a local SQLite store, the artifacts of a new experiment go into `mlartifacts/` beside the database
    file (MLflow's own default is `./mlruns` under whatever folder the trainer runs in)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:":
            return (Path(path).resolve().parent / "mlartifacts").as_uri()
    return None


class MlflowTracker:
    """Logs to one MLflow run through `MlflowClient` (no global active run)."""

    def __init__(self, mlflow: Any, entities: Any, tracking: TrackingConfig) -> None:
        assert tracking.mlflow_uri is not None
        self._entities = entities
        self._errors = mlflow.exceptions.MlflowException
        self.uri, self.experiment = tracking.mlflow_uri, tracking.mlflow_experiment
        try:  # reach the store now: a bad URI fails before anything is trained
            self.client = mlflow.MlflowClient(tracking_uri=self.uri)
            self.client.search_experiments(max_results=1)
        except self._errors as err:
            raise ValueError(f"cannot use the MLflow tracking store {self.uri!r}: {err}") from err
        self.run_id: str | None = None

    def start(self, run: RunDir, *, synthetic: bool, name: str | None = None) -> None:
        saved = read_json(run.tracking_path, default={}) or {}
        previous = saved.get("mlflow_run_id") if saved.get("mlflow_uri") == self.uri else None
        if previous:
            try:
                self.client.update_run(previous, status="RUNNING")
                self.run_id = previous
                log.info("MLflow: resuming run %s in %s", previous, self.uri)
            except self._errors as err:
                log.warning("MLflow run %s of %s cannot be reopened (%s); logging to a new run", previous, run.path, err)
        if self.run_id is None:
            tags = {"pcam.run_id": run.run_id, "pcam.run_path": str(run.path.resolve()),
                    "pcam.synthetic_data": str(bool(synthetic)).lower()}
            self.run_id = self.client.create_run(self.experiment_id(), run_name=name or run.run_id, tags=tags).info.run_id
            atomic_write_json(run.tracking_path, {"mlflow_uri": self.uri, "mlflow_experiment": self.experiment,
                                                  "mlflow_run_id": self.run_id})
            log.info("MLflow: logging to run %s of experiment %r in %s", self.run_id, self.experiment, self.uri)

    def experiment_id(self) -> str:
        """The experiment's id, the experiment created where the store has none of that name."""
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return self.client.create_experiment(self.experiment, artifact_location=_artifact_location(self.uri))
        if experiment.lifecycle_stage != "active":
            raise ValueError(f"MLflow experiment {self.experiment!r} in {self.uri} is deleted; restore it "
                             "(mlflow experiments restore) or name another one")
        return experiment.experiment_id

    def log_params(self, config: ExperimentConfig) -> None:
        """The config as parameters, but for where it is tracked. MLflow parameters cannot change: on a resume
        whose config differs (only `--epochs` can), the new values are tagged `pcam.resume.<name>` instead."""
        params = {k: str(v) for k, v in flatten(config.to_dict()).items() if not k.startswith("tracking.")}
        logged = self.client.get_run(self.run_id).data.params
        new = [self._entities.Param(k, v) for k, v in params.items() if k not in logged]
        changed = [self._entities.RunTag(f"pcam.resume.{k}", v) for k, v in params.items() if k in logged and logged[k] != v]
        for i in range(0, max(len(new), len(changed)), _BATCH):
            self.client.log_batch(self.run_id, params=new[i:i + _BATCH], tags=changed[i:i + _BATCH])

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        stamp = int(float(record.get("time") or time.time()) * 1000)
        metrics = [self._entities.Metric(metric_name(k), float(v), stamp, epoch) for k, v in flatten(record).items()
                   if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        self._quietly(f"metrics of epoch {epoch}", lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def log_artifacts(self, files: Iterable[Path], folder: str | None = None) -> None:
        for path in files:
            if Path(path).is_file():
                self._quietly(f"artifact {path}", lambda p=path: self.client.log_artifact(self.run_id, str(p), folder))

    def end(self, status: str = FINISHED) -> None:
        if self.run_id is not None:
            self._quietly(f"end ({status})", lambda: self.client.set_terminated(self.run_id, status))

    def _quietly(self, what: str, call: Any) -> None:
        """A tracking store that fails mid-run (a server gone) costs the log a warning, never the training:
        the run folder has everything."""
        try:
            call()
        except Exception as err:  # noqa: BLE001 - any failure of the store's client
            log.warning("MLflow: could not log %s to run %s in %s: %s", what, self.run_id, self.uri, err)
