"""Reviewing on the dashboard, with Streamlit's AppTest on a real workspace and run: the Review page walks
the queue (least sure first) and saves each verdict at once in the workspace's database, Explain and the
Runs page's error galleries review the patch they show, and the Train page offers the reviewed labels."""

from __future__ import annotations

import pandas as pd
import pytest

from pcam_core.runs import RunDir
from pcam_core.workspace import Workspace
from pcam_core.workspace.gallery import confident_errors
from pcam_core.workspace.reviews import review_queue
from test_app import RUN_ID, finished_workspace, open_page, start, texts  # noqa: F401  (a fixture, imported to be used)


def fresh_reviews(root) -> Workspace:
    workspace = Workspace(root)
    workspace.reviews().path.unlink(missing_ok=True)
    return workspace


def as_reviewer(at, name: str = "Dr A"):
    at.sidebar.text_input(key="reviewer").input(name).run()
    assert not at.exception
    return at


def save(at, key: str, verdict: str, note: str = "") -> None:
    at.button_group(key=f"verdict_{key}").set_value(verdict)
    if note:
        at.text_input(key=f"note_{key}").input(note)
    [b for b in at.button if b.label == "Save review" and b.proto.form_id == f"review_{key}"][0].click().run()
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.slow
def test_the_review_page_walks_the_queue_least_sure_first_and_saves_at_once(finished_workspace, monkeypatch):
    workspace = fresh_reviews(finished_workspace)
    at = open_page(start(finished_workspace, monkeypatch), "pages/review.py")
    assert "Type your name under **Reviewer**" in texts(at)
    as_reviewer(at)
    valid = pd.read_csv(RunDir(workspace.runs_root / RUN_ID).valid_predictions_path, dtype={"id": str})
    queue = review_queue(valid, 0.5)
    assert f"Id `{queue['id'].iloc[0]}`" in texts(at) and f"Patch #{queue['index'].iloc[0]} of valid" in at.image[0].captions[0]
    assert {m.label: m.value for m in at.metric}["Tumour probability"] == f"{queue['probability'].iloc[0]:.3f}"

    save(at, "queue", "disagree_label_wrong", "tumour at the edge of the box")
    saved = workspace.reviews().reviews()  # in the database at once
    assert saved[["reviewer", "source", "split", "patch_id", "verdict", "note", "run_id"]].iloc[0].tolist() == \
        ["Dr A", "demo", "valid", queue["id"].iloc[0], "disagree_label_wrong", "tumour at the edge of the box", RUN_ID]
    assert saved["probability"].iloc[0] == queue["probability"].iloc[0]
    assert f"Id `{queue['id'].iloc[1]}`" in texts(at)  # the next one
    assert {m.label: m.value for m in at.metric}["Label wrong"] == "1"

    [b for b in at.button if b.label == "Skip to the next"][0].click().run()
    assert f"Id `{queue['id'].iloc[2]}`" in texts(at)
    save(at, "queue", "artefact")
    assert workspace.reviews().counts(reviewer="Dr A") | {} == {**dict.fromkeys(
        ["agree", "disagree_model_wrong", "unsure"], 0), "disagree_label_wrong": 1, "artefact": 1, "total": 2}
    assert "2 current reviews of demo" in texts(at)
    export = at.get("download_button")[0]
    assert not export.proto.disabled

    # another reviewer's queue starts from the top again: queues are per reviewer
    other = as_reviewer(open_page(start(finished_workspace, monkeypatch), "pages/review.py"), "Dr B")
    assert f"Id `{queue['id'].iloc[0]}`" in texts(other)


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_explain_and_the_error_gallery_review_the_patch_they_show(finished_workspace, monkeypatch):
    workspace = fresh_reviews(finished_workspace)
    at = as_reviewer(open_page(start(finished_workspace, monkeypatch), "pages/explain.py"))
    at.button_group(key="pick").set_value("number").run()
    at.text_input(key="patch").set_value("17").run()
    save(at, "explain", "agree")
    row = workspace.reviews().current_reviews().iloc[-1]
    assert (row["patch_index"], row["split"], row["verdict"]) == (17, "valid", "agree")
    assert "Review saved: Both right." in texts(at)
    at.run()
    assert "Your current review: **Both right**" in texts(at)

    at = as_reviewer(open_page(start(finished_workspace, monkeypatch), "pages/runs.py"))
    at.slider(key="threshold").set_value(0.2).run()  # some false positives to show
    save(at, "errors_False positives", "disagree_model_wrong")
    row = workspace.reviews().current_reviews().iloc[-1]
    assert row["verdict"] == "disagree_model_wrong" and row["threshold"] == 0.2 and row["call"] == "tumour"
    valid = pd.read_csv(RunDir(workspace.runs_root / RUN_ID).valid_predictions_path, dtype={"id": str})
    assert row["patch_index"] == confident_errors(valid, 0.2)[0]["index"].iloc[0]  # the first of the gallery, as picked


def test_the_train_page_offers_the_reviewed_labels_with_their_count(finished_workspace, monkeypatch):
    workspace = fresh_reviews(finished_workspace)
    at = open_page(start(finished_workspace, monkeypatch), "pages/train.py")
    assert at.checkbox(key="use_reviews").label == "Use reviewed labels (0 overrides)" and at.checkbox(key="use_reviews").disabled
    at = as_reviewer(open_page(at, "pages/review.py"))
    save(at, "queue", "artefact")
    save(at, "queue", "agree")
    at = open_page(at, "pages/train.py")
    assert at.checkbox(key="use_reviews").label == "Use reviewed labels (1 overrides)"
    assert workspace.reviews().counts()["total"] == 2


@pytest.mark.slow
def test_predict_reviews_an_uploaded_patch_by_the_hash_of_its_pixels(finished_workspace, monkeypatch, real_kaggle):
    workspace = fresh_reviews(finished_workspace)
    at = as_reviewer(open_page(start(finished_workspace, monkeypatch), "pages/predict.py"))
    paths = sorted((real_kaggle / "train").glob("*.tif"))[:2]
    at.file_uploader(key="uploads").set_value([(p.name, p.read_bytes(), "image/tiff") for p in paths]).run()
    at.selectbox(key="review_upload").set_value(paths[1].name).run()
    save(at, "predict", "unsure", "out of focus?")
    row = workspace.reviews().current_reviews().iloc[-1]
    assert (row["source"], row["patch_id"], row["verdict"], row["note"], row["run_id"]) == \
        ("uploads", paths[1].stem, "unsure", "out of focus?", RUN_ID)  # Kaggle names a patch by the SHA-1 of its pixels
    assert row["call"] in ("tumour", "normal") and 0 <= row["probability"] <= 1
