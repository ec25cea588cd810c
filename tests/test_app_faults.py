"""Faults a training run meets, as the dashboard shows them: a NaN loss, a killed process."""

from __future__ import annotations

import os
import signal

import pytest

from streamlit.testing.v1 import AppTest

from helpers import REPO, wait_for
from pcam_core.config import ExperimentConfig
from pcam_core.workspace import ENV_VAR, Workspace

pytestmark = pytest.mark.slow  # every test here trains or kills a training process

APP = str(REPO / "streamlit_app.py")


def _train_page(root, monkeypatch, run_id: str) -> AppTest:
    monkeypatch.setenv(ENV_VAR, str(root))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.sidebar.selectbox(key="run").set_value(run_id).run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_non_finite_loss_is_shown_with_its_reason(demo_root, tmp_path, monkeypatch):
    workspace = Workspace(tmp_path)
    workspace.add_source(demo_root, "demo")
    config = ExperimentConfig().replace(data={"path": str(demo_root), "num_workers": 0},
                                        train={"epochs": 1, "batch_size": 32, "pos_weight": 1e38})
    run = workspace.start_run(config)  # a real run whose loss overflows to infinity at once
    assert wait_for(lambda: run.status()["state"] == "failed", timeout=180)
    at = _train_page(tmp_path, monkeypatch, run.run_id)
    (error,) = [e.value for e in at.error if "failed" in e.value]
    assert "loss became inf" in error and "NonFiniteLoss" in error


def test_a_killed_run_shows_as_interrupted_with_resume(small_demo, tmp_path, monkeypatch):
    workspace = Workspace(tmp_path)
    workspace.add_source(small_demo, "demo")
    config = ExperimentConfig().replace(data={"path": str(small_demo), "num_workers": 0}, train={"epochs": 20, "batch_size": 32})
    run = workspace.start_run(config)
    assert wait_for(lambda: len(run.epochs()) >= 1, timeout=180)
    os.kill(run.status()["pid"], signal.SIGKILL)
    assert wait_for(lambda: run.status()["state"] == "interrupted", timeout=15)
    at = _train_page(tmp_path, monkeypatch, run.run_id)
    assert any("resume" in w.value.lower() for w in at.warning)
    assert at.button(key="resume") and not at.button(key="resume").disabled
