"""Experiment tracking (pcam_core/tracking.py): `pcam train --mlflow URI` mirrors a run into a local MLflow
store, read back with MLflow's own client; without a URI nothing is tracked and MLflow is never imported."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, cli_here
from pcam_core.config import ExperimentConfig, TrackingConfig
from pcam_core.runs import RunDir
from pcam_core.runs import create_run
from pcam_core.tracking import INSTALL_HINT, NullTracker, TrackingUnavailable, create_tracker, metric_name, resolve_uri


def test_without_a_uri_nothing_is_tracked(tmp_path):
    tracker = create_tracker(TrackingConfig())
    assert isinstance(tracker, NullTracker)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / "config.json").write_text("{}")
    tracker.start(run, synthetic=True)
    tracker.log_params(ExperimentConfig())
    tracker.log_epoch(1, {"epoch": 1, "roc_auc": 0.9})
    tracker.log_artifacts([run.path / "config.json"], folder="x")
    tracker.end()
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json"]  # no tracking.json, nothing else


def test_a_missing_tracking_package_is_a_clear_error():
    uri = "sqlite:////tmp/never-created.db"
    with pytest.raises(TrackingUnavailable) as err:
        create_tracker(TrackingConfig(mlflow_uri=uri), module="pcam_test_no_such_tracking_package")
    message = str(err.value)
    assert uri in message and INSTALL_HINT in message and "pcam_test_no_such_tracking_package" in message
    assert not Path("/tmp/never-created.db").exists()


def test_the_tracking_config_is_checked_and_travels_with_the_experiment(tmp_path):
    for bad in ("", " sqlite:///x.db"):
        with pytest.raises(ValueError, match="tracking.mlflow_uri"):
            TrackingConfig(mlflow_uri=bad)
    with pytest.raises(ValueError, match="mlflow_experiment"):
        TrackingConfig(mlflow_uri="sqlite:///x.db", mlflow_experiment=" ")
    config = ExperimentConfig(tracking=TrackingConfig(mlflow_uri="http://127.0.0.1:5000", mlflow_experiment="pcam-a"))
    assert ExperimentConfig.from_dict(json.loads(config.to_json())) == config
    old = ExperimentConfig().to_dict()
    del old["tracking"]  # a config.json written before tracking existed
    assert ExperimentConfig.from_dict(old).tracking == TrackingConfig()


def test_relative_store_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"  # four slashes: absolute
    assert resolve_uri("file:mlruns") == f"file:{tmp_path / 'mlruns'}"
    for unchanged in ("sqlite:////data/mlflow.db", "http://127.0.0.1:5000", "databricks", "sqlite:///:memory:"):
        assert resolve_uri(unchanged) == unchanged


@pytest.mark.slow  # a Python process of its own
def test_mlflow_is_imported_only_when_asked():
    code = ("import sys, pcam_core.tracking, pcam_core.cli; "
            "assert 'mlflow' not in sys.modules, 'mlflow was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# -- against a real local store (MLflow's default backend: a SQLite file) ------------------------------------

def _flat(obj: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in obj.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _train(capsys, *args: str) -> None:
    result = cli_here(capsys, "train", "--workers", "0", *args)
    assert result.returncode == 0, result.stderr


def _mlflow_run(run_dir: Path):
    from mlflow.tracking import MlflowClient

    saved = json.loads((run_dir / "tracking.json").read_text())
    client = MlflowClient(tracking_uri=saved["mlflow_uri"])
    return client, client.get_run(saved["mlflow_run_id"])


def _assert_metrics_equal_epochs(client, run_id: str, run_dir: Path) -> None:
    epochs = RunDir(run_dir).epochs()
    keys = {k for e in epochs for k, v in _flat(e).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "time")}
    assert {"train_loss", "loss", "roc_auc", "accuracy", "lr", "confusion.tp"} <= keys
    for key in keys:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric_name(key)))
        assert [step for step, _ in history] == [e["epoch"] for e in epochs], key
        assert [value for _, value in history] == pytest.approx([_flat(e)[key] for e in epochs]), key


@pytest.mark.slow
def test_train_logs_the_run_to_mlflow(small_demo, tmp_path, capsys):
    pytest.importorskip("mlflow")
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    _train(capsys, "--data", str(small_demo), "--out", str(out), "--epochs", "2", "--mlflow", uri, "--name", "two epochs")
    client, tracked = _mlflow_run(out)
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "two epochs"
    assert tracked.data.tags["pcam.run_id"] == out.name and tracked.data.tags["pcam.synthetic_data"] == "true"
    config = json.loads((out / "config.json").read_text())
    assert config["tracking"]["mlflow_uri"] == uri
    del config["tracking"]  # where the run is logged, not what it is
    assert tracked.data.params == {k: str(v) for k, v in _flat(config).items()}
    _assert_metrics_equal_epochs(client, tracked.info.run_id, out)
    assert {a.path for a in client.list_artifacts(tracked.info.run_id)} == {"config.json", "summary.json", "checkpoints"}
    assert [a.path for a in client.list_artifacts(tracked.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    got = Path(client.download_artifacts(tracked.info.run_id, "checkpoints/best.pt", str(tmp_path)))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(got) == digest(out / "checkpoints" / "best.pt")
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not in the trainer's working folder


@pytest.mark.slow
def test_a_resumed_run_logs_to_the_same_mlflow_run(small_demo, tmp_path, capsys):
    pytest.importorskip("mlflow")
    out = tmp_path / "run"
    _train(capsys, "--data", str(small_demo), "--out", str(out), "--epochs", "1", "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = json.loads((out / "tracking.json").read_text())["mlflow_run_id"]
    _train(capsys, "--out", str(out), "--resume", "--epochs", "2")
    client, tracked = _mlflow_run(out)
    assert tracked.info.run_id == first and tracked.info.status == "FINISHED"
    assert len(client.search_runs([tracked.info.experiment_id])) == 1
    _assert_metrics_equal_epochs(client, first, out)
    assert [m.step for m in client.get_metric_history(first, "valid_roc_auc")] == [1, 2]
    # MLflow parameters cannot change: the first value stays, the resumed run's is a tag
    assert tracked.data.params["train.epochs"] == "1" and tracked.data.tags["pcam.resume.train.epochs"] == "2"


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_the_train_page_refuses_an_unusable_store_before_starting_anything(tmp_path, monkeypatch, demo_root):
    """The Train page's "MLflow tracking URI" is checked on submit: the engine's message, and no run. (MLflow 3
    refuses its old folder store unless MLFLOW_ALLOW_FILE_STORE is set.)"""
    pytest.importorskip("mlflow")
    from streamlit.testing.v1 import AppTest

    from pcam_core.workspace import ENV_VAR, Workspace

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    workspace = Workspace(tmp_path / "ws")
    workspace.add_source(demo_root, "demo")
    monkeypatch.setenv(ENV_VAR, str(workspace.root))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/train.py").run()
    at.text_input(key="mlflow_uri").set_value(f"file:{tmp_path / 'mlruns'}")
    at.button[0].click().run()  # the form's submit button
    assert not at.exception
    assert any("Not started: cannot use the MLflow tracking store" in e.value for e in at.error), [e.value for e in at.error]
    assert not workspace.runs_root.exists() or not any(workspace.runs_root.iterdir())


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_validation_metrics_read_apart_from_training_ones_and_the_run_is_named_by_its_label(tmp_path):
    """Against a real local store, without training: the names MLflow shows, and the run name."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = create_run(tmp_path / "runs", ExperimentConfig().replace(data={"path": str(tmp_path)}), run_id="r1")
    tracker = create_tracker(TrackingConfig(mlflow_uri=uri))
    tracker.start(run, synthetic=False, name="my label")
    tracker.log_epoch(1, {"epoch": 1, "step": 10, "train_loss": 0.5, "lr": 0.001, "epoch_seconds": 3.0, "time": 1.0,
                          "train_images_per_s": 120.0, "is_best": True, "loss": 0.4, "roc_auc": 0.9, "confusion": {"tp": 3}})
    tracker.end()
    client = MlflowClient(tracking_uri=uri)
    tracked = client.get_run(json.loads(run.tracking_path.read_text())["mlflow_run_id"])
    assert tracked.info.run_name == "my label" and tracked.data.tags["pcam.run_id"] == "r1"
    assert set(tracked.data.metrics) == {"step", "train_loss", "lr", "epoch_seconds", "train_images_per_s", "valid_loss",
                                         "valid_roc_auc", "valid_confusion.tp"}  # the training pace is not validation's
