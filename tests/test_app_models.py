"""Which model the dashboard's pages use, with Streamlit's AppTest on real files: the sidebar keeps the
user's choice (never defaulting to a run still training), the bundled model works on every page (Runs and
Review judge its held-out patches), and Predict gives a patch the call `pcam predict --results` gives it with
the same run, at the run's own threshold. Nothing of ours is mocked; no model is trained here."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from helpers import REPO, bundled_single_state, running_run
from pcam_app.patches import probability_text
from pcam_core.bundled import BUNDLED_DIR
from pcam_core.cli import main as pcam
from pcam_core.config import ExperimentConfig
from pcam_core.decision import calls
from pcam_core.fileio import atomic_write_json
from pcam_core.loading import run_threshold
from pcam_core.metrics import binary_metrics
from pcam_core.runs import create_run
from pcam_core.workspace import ENV_VAR, Workspace

APP = str(REPO / "streamlit_app.py")
HELD_OUT = pd.read_csv(BUNDLED_DIR / "valid_predictions.csv", dtype={"id": str})


def start(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(ENV_VAR, str(workspace))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("title", "subheader", "markdown", "caption", "info", "warning", "error")
                     for e in getattr(at, kind))


def finished_run(root: Path, run_id: str, *, threshold: float | None = None) -> Path:
    """A finished run folder whose best checkpoint is the bundled model's weights (recording `threshold`
    as its own when given): a real model without training one."""
    state = bundled_single_state()
    state["threshold"] = threshold
    run = create_run(root, ExperimentConfig.from_dict(state["config"]), run_id=run_id)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, run.best_checkpoint)
    status = run.raw_status()
    status.update(state="finished", epoch=1, epochs=1)
    atomic_write_json(run.status_path, status)
    return run.path


def empty_workspace(root: Path) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sources.json").write_text('{"version": 1, "sources": []}')
    return Workspace(root)


# -- the sidebar's run ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_selected_run_is_kept_and_never_defaults_to_one_still_training(tmp_path, monkeypatch):
    workspace = empty_workspace(tmp_path / "ws")
    running_run(workspace.runs_root, "20990101-000000-training")  # the newest run, in its second epoch
    at = start(workspace.root, monkeypatch)
    assert at.sidebar.selectbox(key="run").value == "@bundled"  # not the run still training

    finished_run(workspace.runs_root, "00000000-000000-done")
    at.run()
    assert at.sidebar.selectbox(key="run").value == "@bundled"  # a run appearing does not take the choice
    fresh = start(workspace.root, monkeypatch)
    assert fresh.sidebar.selectbox(key="run").value == "00000000-000000-done"  # a new session: the newest finished run

    fresh.sidebar.selectbox(key="run").set_value("@bundled").run()
    running_run(workspace.runs_root, "20990102-000000-another")
    for page in ("pages/predict.py", "pages/explain.py", "pages/runs.py", "pages/train.py", "pages/overview.py"):
        open_page(fresh, page)
        assert fresh.sidebar.selectbox(key="run").value == "@bundled", page
    shown = texts(open_page(fresh, "pages/predict.py"))
    assert "bundled model (real tissue)" in shown
    # the calibration is said to come from where it was fitted: the ensemble's 4,000 out-of-fold TTA predictions
    assert re.search(r"sigmoid\(logit\(p\) / T \+ b\), with temperature \d\.\d{3}, bias [+-]\d\.\d{3} fitted on the run's "
                     r"4,000 out-of-fold predictions \(TTA\)", shown), shown
    fresh.sidebar.selectbox(key="run").set_value("20990101-000000-training").run()  # chosen: shown as chosen
    open_page(fresh, "pages/train.py")
    assert fresh.sidebar.selectbox(key="run").value == "20990101-000000-training"


# -- the bundled model on Runs and Review ---------------------------------------------------------------------

def test_runs_and_review_judge_the_bundled_models_held_out_patches(tmp_path, monkeypatch, real_kaggle):
    """The bundled model's held-out predictions are its "valid" split: Runs shows their figures, and with a
    Kaggle folder holding some of those patches active, draws its errors there and Review queues them."""
    workspace = empty_workspace(tmp_path / "ws")
    workspace.add_source(real_kaggle, "real")
    at = open_page(start(workspace.root, monkeypatch), "pages/runs.py")
    assert at.sidebar.selectbox(key="run").value == "@bundled"
    shown = texts(at)
    assert "No training run yet" not in shown and "Judging the bundled model (real tissue)" in shown
    figures = {m.label: m.value for m in at.metric}
    expected = binary_metrics(HELD_OUT["label"].to_numpy(), HELD_OUT["probability"].to_numpy(), 0.5)
    assert figures["ROC-AUC"] == f"{expected['roc_auc']:.3f}" and figures["Sensitivity"] == f"{expected['recall']:.3f}"
    assert f"{len(HELD_OUT):,} patches of the valid split" in shown
    # its calibration (one pass, as this split is scored) said to be fitted on every patch's out-of-fold prediction
    assert re.search(r"Calibration: temperature \d\.\d{3}, bias [+-]\d\.\d{3}, fitted on 4,000 out-of-fold predictions", shown), shown
    ids = set(pd.read_csv(real_kaggle / "train_labels.csv", dtype={"id": str})["id"])
    held_here = int(HELD_OUT["id"].isin(ids).sum())
    assert held_here > 0 and f"the active dataset holds {held_here:,} of them" in shown

    at.sidebar.text_input(key="reviewer").set_value("Dr Test").run()
    open_page(at, "pages/review.py")
    assert not at.error, [e.value for e in at.error]
    assert f"0 of {held_here:,} patches of valid reviewed by Dr Test" in " ".join(p.proto.text for p in at.get("progress"))
    [patch] = [i for i in at.image if i.captions and i.captions[0].startswith("Patch #")]
    index = int(patch.captions[0].split("#")[1].split()[0])
    assert workspace.source("real").open("train").ids[index] in set(HELD_OUT["id"])  # a held-out patch, from the active folder


# -- Predict: the same call as `pcam predict --results` ----------------------------------------------------------

@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_predict_calls_a_patch_as_pcam_predict_does_at_the_runs_own_threshold(tmp_path, monkeypatch, real_kaggle):
    """A run recording a threshold of its own (not 0.5) scores the same patches on the Predict page and with
    `pcam predict --results` (in this process): the same calls, at that threshold, and the page's results file
    lists a refused file with its reason."""
    folder = tmp_path / "patches"
    folder.mkdir()
    labels = pd.read_csv(real_kaggle / "train_labels.csv", dtype={"id": str}).head(8)
    for patch in labels["id"]:
        shutil.copy(real_kaggle / "train" / f"{patch}.tif", folder / f"{patch}.tif")
    assert pcam(["predict", "--run", "bundled", "--input", str(folder), "--out", str(tmp_path / "s0.csv"),
                 "--results", str(tmp_path / "r0.csv")]) == 0
    probs = pd.read_csv(tmp_path / "r0.csv")["probability"].to_numpy()
    own = round(float(probs[probs < 0.5].max()) - 1e-3, 6)  # calls one more patch tumour than 0.5 does
    assert (calls(probs, own) != calls(probs, 0.5)).any()

    workspace = empty_workspace(tmp_path / "ws")
    run = finished_run(workspace.runs_root, "own-threshold", threshold=own)
    assert run_threshold(run) == own
    assert pcam(["predict", "--run", str(run), "--input", str(folder), "--out", str(tmp_path / "s1.csv"),
                 "--results", str(tmp_path / "r1.csv")]) == 0
    cli = pd.read_csv(tmp_path / "r1.csv", dtype={"id": str}).set_index("id")

    at = open_page(start(workspace.root, monkeypatch), "pages/predict.py")
    assert at.sidebar.selectbox(key="run").value == "own-threshold"
    assert at.slider(key="predict_threshold").value == pytest.approx(own)  # the run's own, not 0.5
    files = [(p.name, p.read_bytes(), "image/tiff") for p in sorted(folder.glob("*.tif"))]
    files.append(("broken.tif", b"not an image", "image/tiff"))
    at.file_uploader(key="uploads").set_value(files).run()
    assert not at.exception
    page = at.dataframe[0].value
    scored = page[page["call"] != "refused"].set_index("id")
    assert len(scored) == len(cli) and scored.loc[cli.index, "call"].tolist() == cli["call"].tolist()
    assert np.allclose(scored.loc[cli.index, "probability"], cli["probability"], atol=1e-5)
    [refused] = page[page["call"] == "refused"].to_dict("records")
    assert refused["file"] == "broken.tif" and refused["notes"]


# -- Explain: a window handed over by the Slides page -----------------------------------------------------------

@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_explain_names_a_slide_window_by_the_position_and_map_probability_the_slides_page_sent(tmp_path, monkeypatch):
    """The Slides page opens a window in Explain by its address (?window_slide=&window_x=&window_y=, its top-left;
    the run in the sidebar's `run`):
    Explain names it by that slide, those coordinates and the map's probability for the window's cell (not the
    probability of another pass), and says clearly when the address names nothing it can open."""
    from helpers import analysed_real_slide
    from pcam_core.slides.folder import AnalysisFolder
    from pcam_core.slides.viewer import lattice_of, load_heat, load_summary

    workspace = empty_workspace(tmp_path / "ws")
    _, analysis, slide = analysed_real_slide(workspace.root, stride=32, size=(672, 576))
    folder = AnalysisFolder(analysis)
    heat, lattice = load_heat(folder), lattice_of(load_summary(folder))
    row, col = np.unravel_index(np.nanargmax(np.where(heat >= 0, heat, np.nan)), heat.shape)
    x, y = (int(round(float(v))) for v in lattice.window_origin(row, col))  # the window's top-left, as every face names it

    monkeypatch.setenv(ENV_VAR, str(workspace.root))
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in {"run": "@bundled", "window_slide": slide, "window_x": str(x), "window_y": str(y)}.items():
        at.query_params[key] = value
    at.switch_page("pages/explain.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [caption] = [c for image in at.image for c in image.captions if " at (" in c]
    assert caption.startswith(f"slide at ({x:,}, {y:,}) · {probability_text(float(heat[row, col]))} · focus ")
    at.query_params["window_x"] = str(x + 5)  # a point that is no window's corner names nothing
    at.run()
    assert any("no window of this map starts at" in e.value for e in at.error)
    at.query_params["window_x"] = str(x)

    at.query_params["window_slide"] = "0123456789abcdef"
    at.run()
    assert any("Cannot open the slide window" in e.value and "0123456789abcdef" in e.value for e in at.error)


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_explain_says_when_an_uploaded_patch_is_out_of_the_models_scope(tmp_path, monkeypatch, real_kaggle):
    """The bundled model in a workspace of no data: uploads are explained; a window of a real skin scan is marked
    OUT OF SCOPE, a real lymph-node patch is not."""
    import io

    from PIL import Image

    from test_scope import skin_windows

    workspace = empty_workspace(tmp_path / "ws")
    lymph = sorted((real_kaggle / "train").glob("*.tif"))[0]
    skin = io.BytesIO()
    Image.fromarray(skin_windows()[0]).save(skin, format="TIFF")
    at = open_page(start(workspace.root, monkeypatch), "pages/explain.py")
    at.file_uploader(key="explain_uploads").set_value([("lymph.tif", lymph.read_bytes(), "image/tiff"),
                                                       ("skin.tif", skin.getvalue(), "image/tiff")]).run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [c for image in at.image for c in image.captions]
    assert any(c.startswith("skin.tif · OUT OF SCOPE · p") for c in captions), captions
    assert any(c.startswith("lymph.tif · p") for c in captions), captions
    assert any("OUT OF SCOPE: unlike the lymph-node H&E" in c.value for c in at.caption)
