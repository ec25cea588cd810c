"""One rule, one home: the same patches, run and options get the same call through every face. A run whose own
threshold is not 0.5 (the bundled weights, recording a threshold chosen so that one more patch is called tumour than
at 0.5) and whose out-of-scope guard is the bundled model's scores real lymph-node patches and a window of a real
skin scan: `pcam predict --results` (the CLI, in this process), `POST /v1/predict` on a live `pcam serve` (the API,
over HTTP) and the Predict page (the dashboard, Streamlit's AppTest) give each patch the same call, at the run's own
threshold, and call the skin window "refer"."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import REPO
from pcam_core.bundled import BUNDLED_DIR
from pcam_core.cli import main as pcam
from pcam_core.decision import calls
from test_app_models import empty_workspace, finished_run, open_page, start
from test_scope import skin_windows
from test_serve import TOKEN, ApiServer

pytestmark = pytest.mark.slow


def test_the_cli_the_api_and_the_dashboard_give_the_same_call(tmp_path, monkeypatch, real_kaggle):
    folder = tmp_path / "patches"
    folder.mkdir()
    for patch in pd.read_csv(real_kaggle / "train_labels.csv", dtype={"id": str})["id"].head(12):
        shutil.copy(real_kaggle / "train" / f"{patch}.tif", folder / f"{patch}.tif")
    Image.fromarray(skin_windows()[0]).save(folder / "skin-window.tif")
    assert pcam(["predict", "--run", "bundled", "--input", str(folder), "--out", str(tmp_path / "s0.csv"),
                 "--results", str(tmp_path / "r0.csv")]) == 0  # TTA: every face's default but the API's
    probs = pd.read_csv(tmp_path / "r0.csv")["probability"].to_numpy()
    own = round(float(probs[probs < 0.5].max()) - 1e-3, 6)  # one more patch is tumour at the run's own threshold
    assert (calls(probs, own) != calls(probs, 0.5)).any()

    workspace = empty_workspace(tmp_path / "ws")
    run = finished_run(workspace.runs_root, "own-threshold", threshold=own)
    shutil.copy(BUNDLED_DIR / "scope.npz", run / "scope.npz")  # the guard of these weights

    # the CLI
    assert pcam(["predict", "--run", str(run), "--input", str(folder), "--out", str(tmp_path / "s1.csv"),
                 "--results", str(tmp_path / "r1.csv")]) == 0
    cli = pd.read_csv(tmp_path / "r1.csv").set_index("id")["call"]

    # the API, live
    files = sorted(folder.glob("*.tif"))
    api = ApiServer("--run", str(run), "--work-dir", str(tmp_path / "serve"), "--device", "cpu", log=tmp_path / "serve.log",
                    env={"PCAM_API_TOKEN": TOKEN}).start()
    try:
        answer = httpx.post(f"{api.url}/v1/predict", params={"tta": "true"}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120,
                            files=[("files", (f.name, f.read_bytes(), "image/tiff")) for f in files])
    finally:
        api.stop()
    assert answer.status_code == 200, answer.text
    assert answer.json()["threshold"] == pytest.approx(own)
    served = pd.Series({p["id"]: p["call"] for p in answer.json()["predictions"]})

    # the dashboard
    at = open_page(start(workspace.root, monkeypatch), "pages/predict.py")
    assert at.sidebar.selectbox(key="run").value == "own-threshold"
    assert at.toggle(key="predict_tta").value  # TTA on, as the CLI's default and the API's request above
    at.file_uploader(key="uploads").set_value([(f.name, f.read_bytes(), "image/tiff") for f in files]).run()
    assert not at.exception, [e.value for e in at.exception]
    page = at.dataframe[0].value.set_index("id")["call"]

    ids = sorted(cli.index.astype(str))
    assert len(ids) == 13 and sorted(served.index) == ids and sorted(page.index.astype(str)) == ids
    cli.index, page.index = cli.index.astype(str), page.index.astype(str)
    assert (cli[ids].to_numpy() == served[ids].to_numpy()).all(), pd.DataFrame({"cli": cli, "api": served})
    assert (cli[ids].to_numpy() == page[ids].to_numpy()).all(), pd.DataFrame({"cli": cli, "page": page})
    assert cli["skin-window"] == "refer"
    assert set(cli.drop("skin-window")) <= {"tumour", "normal", "refer"} and np.isin(["tumour", "normal"], cli.to_numpy()).all()
