"""The dashboard page by page with Streamlit's AppTest: every page renders on an empty workspace and on
one with a finished run, and the key interactions work (filters, threshold, form with processes, upload
with heat maps, Explain's settings and gallery, links from errors to Explain, stop/resume). AppTest
starts every run the way Streamlit serves a server's first request (`pages/` mode), so each test also
exercises the pages' guard that runs the app shell in their place. The app runs for real on real files
in a temporary workspace; nothing of ours is mocked."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from helpers import REPO, make_bad_images, running_run, tif_bytes, wait_for
from pcam_app.figures import TRACE_TYPES
from pcam_app.sidebar import BUNDLED_CHOICE
from pcam_app.patches import probability_text
from pcam_core.bundled import LABEL, held_out_words, is_ensemble
from pcam_core.workspace import scoring
from pcam_core.config import ExperimentConfig
from pcam_core.data import PCamH5, patch_id
from pcam_core.explain import METHODS, layer_choices
from pcam_core.workspace.gallery import OUTCOMES, outcome_counts, outcome_examples, outline_centre
from pcam_core.fileio import atomic_write_json
from pcam_core.runs import RunDir, max_processes, process_count, stop
from pcam_core.workspace import DEMO_ENV_VAR, ENV_VAR, Workspace

APP = str(REPO / "streamlit_app.py")
PAGES = ["pages/overview.py", "pages/dataset.py", "pages/train.py", "pages/runs.py", "pages/explain.py", "pages/predict.py",
         "pages/review.py"]
RUN_ID = "demo-run"


def start(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(ENV_VAR, str(workspace))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    """The plotly figures the page draws (pcam_app.components.chart), as plotly's JSON."""
    return [json.loads(json.loads(element.proto.json)["figure"]) for element in at.get("bidi_component")
            if element.proto.component_name == "pcam_chart"]


def tables(at: AppTest) -> dict[str, pd.DataFrame]:
    """The tables the page draws (pcam_app.components.table) by caption, as the text of their cells."""
    out = {}
    for element in at.get("bidi_component"):
        if element.proto.component_name == "pcam_table":
            data = json.loads(element.proto.json)
            out[data["caption"]] = pd.DataFrame(data["rows"], columns=data["columns"])
    return out


def _plotly_array(value) -> np.ndarray:
    """An array of plotly's JSON: a list, or numpy's bytes in base64 ({"dtype", "bdata"})."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    return np.asarray(value)


def texts(at: AppTest) -> str:
    """Everything a user reads on the page, as one string."""
    parts = [e.value for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


@pytest.fixture(scope="module")
def finished_workspace(demo_root, trained_run, tmp_path_factory) -> Path:
    """The demo data registered and the finished 3-epoch run copied in as runs/demo-run."""
    root = tmp_path_factory.mktemp("ws-finished")
    workspace = Workspace(root)
    workspace.add_source(demo_root, "demo")
    shutil.copytree(trained_run, workspace.runs_root / RUN_ID)
    return root


# -- empty workspaces ------------------------------------------------------------------------------

@pytest.mark.slow
def test_first_start_generates_synthetic_demo_data_then_every_page_renders(tmp_path, monkeypatch):
    monkeypatch.setenv(DEMO_ENV_VAR, "64")
    at = start(tmp_path / "ws", monkeypatch)
    workspace = Workspace(tmp_path / "ws")
    assert [s.name for s in workspace.sources()] == ["demo"] and workspace.sources()[0].synthetic
    assert at.sidebar.selectbox(key="dataset").value == "demo"
    for page in PAGES:
        open_page(at, page)
        shown = texts(at)
        if page.endswith(("overview.py", "dataset.py")):
            assert "SYNTHETIC" in shown, page  # the demo data is labelled wherever it is shown
        if page.endswith("runs.py"):  # no run of one's own: the bundled model is judged on its held-out patches
            assert "No training run of yours yet" in shown and "Judging the bundled model (real tissue)" in shown, page
        if page.endswith("review.py"):  # its held-out patches' pixels are not in the synthetic demo data
            assert f"None of the bundled model's {held_out_words()} patches is in the active dataset" in shown, page
        if page.endswith(("explain.py", "predict.py")):  # the bundled model, selected while there are no runs
            assert "bundled model (real tissue)" in shown and "trained on SYNTHETIC" not in shown, page


def test_a_page_url_requested_first_runs_inside_the_app_shell(finished_workspace, monkeypatch):
    """The first request of a new server process for a page's URL (a reload of /train after a restart):
    Streamlit runs that page's file alone, in its old `pages/` mode. The page runs the shell in its place,
    so the whole app is there: sidebar, workspace, navigation, and the page that was asked for."""
    monkeypatch.setenv(ENV_VAR, str(finished_workspace))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/train.py").run()  # before any run: the page named by the URL, in `pages/` mode
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [t.value for t in at.title] == ["Train"]
    assert at.sidebar.selectbox(key="run").value == RUN_ID and at.sidebar.selectbox(key="dataset").value == "demo"
    assert any(str(finished_workspace) in m.value for m in at.sidebar.markdown)  # the workspace
    assert "New run" in texts(at) and "finished" in texts(at)


def test_a_workspace_without_any_source_explains_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "sources.json").write_text(json.dumps({"version": 1, "sources": []}))
    at = start(tmp_path, monkeypatch)
    assert at.sidebar.selectbox(key="dataset").value is None
    open_page(at, "pages/dataset.py")
    assert "No data source yet" in texts(at)
    open_page(at, "pages/train.py")
    assert "No data source with a training split" in texts(at)
    open_page(at, "pages/overview.py")
    assert "No data source is registered" in texts(at)


def test_adding_a_source_by_path_on_the_overview(tmp_path, monkeypatch, demo_root):
    (tmp_path / "sources.json").write_text(json.dumps({"version": 1, "sources": []}))
    at = start(tmp_path, monkeypatch)
    open_page(at, "pages/overview.py")
    at.text_input[0].set_value(str(tmp_path / "no-such-folder"))
    at.button[0].click().run()
    assert any("Not added" in e.value and "not found" in e.value for e in at.error)
    at.text_input[0].set_value(str(demo_root))
    at.text_input[1].set_value("mydemo")
    at.button[0].click().run()
    assert not at.exception
    assert [s.name for s in Workspace(tmp_path).sources()] == ["mydemo"]
    assert at.sidebar.selectbox(key="dataset").value == "mydemo"  # the new source became the active one
    splits = tables(at)["Splits of mydemo"]  # what the source holds, split by split, as its labels count it
    labels = PCamH5(demo_root, "train").labels
    train = splits[splits["split"] == "train"].iloc[0]
    assert list(splits["split"]) == ["train", "valid", "test"] and train["patches"] == f"{len(labels):,}"
    assert train["tumour"] == f"{(labels == 1).sum():,}" and train["tumour share"] == f"{100 * labels.mean():.1f} %"


def test_a_damaged_registry_is_an_error_not_a_crash(tmp_path, monkeypatch):
    (tmp_path / "sources.json").write_text("{oops")
    at = start(tmp_path, monkeypatch)
    assert any("damaged" in e.value for e in at.error)


# -- a workspace with a finished run -----------------------------------------------------------------

@pytest.mark.slow
def test_every_page_renders_with_a_finished_run(finished_workspace, monkeypatch):
    at = start(finished_workspace, monkeypatch)
    assert at.sidebar.selectbox(key="run").value == RUN_ID
    expected = {
        "pages/overview.py": ["Data sources", "Runs"],
        "pages/dataset.py": ["The train split in numbers"],
        "pages/train.py": ["New run", "All runs", "finished"],
        "pages/runs.py": ["Learning curves", f"Judging run `{RUN_ID}`", "Most confident errors"],
        "pages/explain.py": ["call at 0.500", "Centre focus", "central 32×32"],
        "pages/predict.py": ["Model of run", "probability"],
        "pages/review.py": ["least sure", "Type your name under **Reviewer**"],
    }
    drawn = []
    for page, words in expected.items():
        open_page(at, page)
        shown = texts(at)
        for word in words:
            assert word in shown, (page, word)
        assert "SYNTHETIC" in shown, page  # demo data, or a model trained on it
        drawn += charts(at)
        if page in ("pages/runs.py", "pages/train.py"):  # every run, with its best figures
            runs = tables(at)["All runs"]
            best = RunDir(finished_workspace / "runs" / RUN_ID).raw_status()["best"]["value"]
            assert runs[runs["run"] == RUN_ID]["ROC-AUC"].tolist() == [f"{best:.3f}"], page
    # every chart: trace types the app's plotly.js bundle draws, in the house look (plotly_white, 2-D parts only)
    assert len(drawn) >= 8
    for figure in drawn:
        assert {trace.get("type", "scatter") for trace in figure["data"]} <= set(TRACE_TYPES)
        template = figure["layout"]["template"]
        assert template["layout"]["plot_bgcolor"] == "white" and not {"scene", "polar", "geo"} & set(template["layout"])
        assert set(template["data"]) == set(TRACE_TYPES)


@pytest.mark.slow
def test_dataset_filters_and_paging(finished_workspace, monkeypatch):
    at = open_page(start(finished_workspace, monkeypatch), "pages/dataset.py")
    grid = at.image[0]
    assert len(grid.captions) == 48 and grid.captions[0].startswith("#0 · ")
    at.button_group(key="ds_label").set_value("tumour").run()
    labels = PCamH5(Path(Workspace(finished_workspace).source("demo").path), "train").labels
    tumour = np.flatnonzero(labels == 1)
    captions = at.image[0].captions
    assert all(c.endswith("tumour") for c in captions)
    assert [int(c.split(" ")[0][1:]) for c in captions] == tumour[:48].tolist()
    at.pagination[0].set_value(2).run()
    assert [int(c.split(" ")[0][1:]) for c in at.image[0].captions] == tumour[48:96].tolist()
    slide = at.selectbox(key="ds_slide").options[1]
    at.selectbox(key="ds_slide").set_value(slide).run()
    assert at.pagination[0].value == 1  # a new filter starts at the first page
    meta = PCamH5(Path(Workspace(finished_workspace).source("demo").path), "train").metadata
    on_slide = np.flatnonzero((labels == 1) & (meta["wsi"].to_numpy() == slide))
    assert [int(c.split(" ")[0][1:]) for c in at.image[0].captions] == on_slide[:48].tolist()
    at.selectbox(key="ds_zoom").set_value(int(on_slide[1])).run()
    assert any(f"**wsi:** {slide}" in m.value for m in at.markdown)
    at.toggle(key="ds_box").set_value(False).run()
    at.button_group(key="ds_split").set_value("test").run()
    assert not at.exception and "The test split in numbers" in texts(at)


@pytest.mark.slow
def test_threshold_slider_moves_every_figure(finished_workspace, monkeypatch):
    at = open_page(start(finished_workspace, monkeypatch), "pages/runs.py")

    def figures() -> dict[str, str]:
        return {m.label: m.value for m in at.metric}

    at_half = figures()
    assert float(at_half["ROC-AUC"]) > 0.8
    at.slider(key="threshold").set_value(0.98).run()
    strict = figures()
    assert float(strict["Sensitivity"]) < float(at_half["Sensitivity"])
    assert float(strict["Specificity"]) >= float(at_half["Specificity"])
    assert strict["ROC-AUC"] == at_half["ROC-AUC"]  # threshold-free
    drawn = {figure["layout"]["title"]["text"]: figure for figure in charts(at)}
    assert "Confusion matrix at threshold 0.980" in drawn
    # the histogram's bars count every validation prediction of each class
    valid = pd.read_csv(RunDir(finished_workspace / "runs" / RUN_ID).valid_predictions_path)
    bars = {trace["name"]: trace for trace in drawn["Probabilities by true class"]["data"]}
    for value, name in ((0, "normal"), (1, "tumour")):
        counts = _plotly_array(bars[f"truly {name}"]["y"])
        assert counts.sum() == (valid["label"] == value).sum() and len(counts) == 40
    assert [shape["x0"] for shape in drawn["Probabilities by true class"]["layout"]["shapes"]] == [0.98]
    at.selectbox(key="threshold_preset").set_value("Youden (validation)").run()
    assert at.slider(key="threshold").value != 0.98
    assert not at.exception


def test_an_interval_of_no_width_is_said_not_to_be_certainty(finished_workspace, monkeypatch, tmp_path):
    """A split the run separates perfectly, every patch 0.1 from its label: no resample changes the Brier score, so its
    interval has no width; the page says that is not certainty, and what a sample this size can leave unseen (the rule
    of three, 3/n)."""
    workspace = tmp_path / "ws"
    shutil.copytree(finished_workspace, workspace)
    path = RunDir(workspace / "runs" / RUN_ID).valid_predictions_path
    frame = pd.read_csv(path, dtype={"id": str})
    frame["probability"] = np.where(frame["label"] == 1, 0.9, 0.1)
    frame.to_csv(path, index=False)
    at = open_page(start(workspace, monkeypatch), "pages/runs.py")
    assert "Brier score 0.010 (0.010-0.010)" in texts(at)  # every patch 0.1 from its label: no resample differs
    assert (f"An interval of no width (Brier score) means every resample of these {len(frame):,} patches scored alike, not that the figure is certain: a failure "
            f"rarer than about 1 in {len(frame) / 3:,.0f} can go unseen") in texts(at)


@pytest.mark.slow
def test_a_threshold_suggested_for_95_percent_sensitivity_gives_it(finished_workspace, monkeypatch, tmp_path):
    """Set from "95% sensitivity (validation)" on the validation split shows a sensitivity of at least 0.95
    there: the engine's threshold is used as it is. Validation scores where rounding it to 0.001 would lose
    a tumour patch: the one that makes 95% lies at 0.14757, just below 0.148."""
    workspace = tmp_path / "ws"
    shutil.copytree(finished_workspace, workspace)
    path = RunDir(workspace / "runs" / RUN_ID).valid_predictions_path
    frame = pd.read_csv(path, dtype={"id": str})
    tumour = np.flatnonzero(frame["label"].to_numpy() == 1)
    needed = int(np.ceil(0.95 * len(tumour)))
    probability = np.full(len(frame), 0.05)
    probability[tumour[:needed - 1]] = 0.9
    probability[tumour[needed - 1]] = 0.14757
    probability[tumour[needed:]] = 0.01
    frame["probability"] = probability
    frame.to_csv(path, index=False)

    at = open_page(start(workspace, monkeypatch), "pages/runs.py")
    at.selectbox(key="threshold_preset").set_value("95% sensitivity (validation)").run()
    assert not at.exception
    assert at.slider(key="threshold").value == pytest.approx(0.14757, abs=1e-12)
    shown = {m.label: m.value for m in at.metric}
    assert float(shown["Sensitivity"]) >= 0.95, shown


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_set_from_says_custom_and_explain_starts_from_the_threshold_chosen(finished_workspace, monkeypatch):
    at = open_page(start(finished_workspace, monkeypatch), "pages/runs.py")
    assert at.selectbox(key="threshold_preset").value == scoring.OWN_THRESHOLD
    at.slider(key="threshold").set_value(0.7).run()
    assert at.selectbox(key="threshold_preset").value == "custom"  # no longer the default's 0.5
    open_page(at, "pages/explain.py")
    assert at.slider(key="explain_threshold").value == 0.7
    assert "call at 0.700" in texts(at)
    open_page(at, "pages/predict.py")
    assert at.slider(key="predict_threshold").value == 0.7
    open_page(at, "pages/runs.py")  # back on Runs: the threshold chosen, and a suggestion names itself again
    assert at.slider(key="threshold").value == 0.7 and at.selectbox(key="threshold_preset").value == "custom"
    at.selectbox(key="threshold_preset").set_value("Youden (validation)").run()
    youden = scoring.suggested_thresholds(RunDir(finished_workspace / "runs" / RUN_ID))["Youden (validation)"]
    assert at.slider(key="threshold").value == youden
    open_page(at, "pages/explain.py")
    assert at.slider(key="explain_threshold").value == youden


def test_a_run_shows_its_data_by_the_name_of_the_source_at_that_folder(finished_workspace, monkeypatch, tmp_path):
    """A run whose config spells its data folder another way (through a link) shows the registered name,
    as the runs trained from the dashboard do: one dataset, one name."""
    workspace = tmp_path / "ws"
    shutil.copytree(finished_workspace, workspace)
    shutil.copytree(workspace / "runs" / RUN_ID, workspace / "runs" / "linked-run")
    (tmp_path / "link").symlink_to(Workspace(workspace).source("demo").path, target_is_directory=True)
    config_path = workspace / "runs" / "linked-run" / "config.json"
    config = json.loads(config_path.read_text())
    config["data"]["path"] = str(tmp_path / "link")
    config_path.write_text(json.dumps(config))
    at = open_page(start(workspace, monkeypatch), "pages/runs.py")
    runs = tables(at)["All runs"]
    assert sorted(runs["run"]) == ["demo-run", "linked-run"]
    assert runs["data"].tolist() == ["demo", "demo"]


def test_links_name_the_dataset_and_the_run_by_value_and_the_address_follows_the_choice(finished_workspace, monkeypatch,
                                                                                         tmp_path, demo_root):
    """`?dataset=<source name>&run=<run id or @bundled>` opens those, a synthetic source and the bundled model
    included (whose labels differ from their names); links made by earlier versions, which held the labels,
    still open; the address follows every choice."""
    workspace = tmp_path / "ws"
    shutil.copytree(finished_workspace, workspace)
    shutil.copytree(demo_root, tmp_path / "second")
    Workspace(workspace).add_source(tmp_path / "second", "second")  # the newest source: the one a bare address opens
    demo = Workspace(workspace).source("demo")
    assert demo.synthetic and demo.label != demo.name
    monkeypatch.setenv(ENV_VAR, str(workspace))

    def opened(query: dict[str, str]) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120)
        for key, value in query.items():
            at.query_params[key] = value
        at.run()
        assert not at.exception, at.exception
        return at

    def shown(at: AppTest) -> tuple[str, str]:
        return at.sidebar.selectbox(key="dataset").value, at.sidebar.selectbox(key="run").value

    at = opened({})
    assert shown(at) == ("second", RUN_ID) and (at.query_params["dataset"], at.query_params["run"]) == ("second", RUN_ID)
    at = opened({"dataset": "demo", "run": BUNDLED_CHOICE})
    assert shown(at) == ("demo", BUNDLED_CHOICE) and (at.query_params["dataset"], at.query_params["run"]) == ("demo", BUNDLED_CHOICE)
    at.sidebar.selectbox(key="run").set_value(RUN_ID).run()
    at.sidebar.selectbox(key="dataset").set_value("second").run()
    assert shown(at) == ("second", RUN_ID) and (at.query_params["dataset"], at.query_params["run"]) == ("second", RUN_ID)
    open_page(at, "pages/runs.py")  # another page keeps both, in its address too
    assert shown(at) == ("second", RUN_ID) and (at.query_params["dataset"], at.query_params["run"]) == ("second", RUN_ID)
    assert shown(opened({"dataset": demo.label, "run": LABEL})) == ("demo", BUNDLED_CHOICE)  # a link holding the labels
    stray = opened({"dataset": "nothing", "run": "no-such-run"})
    assert shown(stray) == ("second", RUN_ID)  # a stray link: the defaults, and words that say so, until the user chooses
    said = [w.value for w in stray.sidebar.warning]
    assert f"The link named the run `no-such-run`, which this workspace does not hold; shown instead: {RUN_ID}." in said
    assert any(w.startswith("The link named the data source `nothing`") for w in said)
    stray.run()
    assert len(stray.sidebar.warning) == 2
    stray.sidebar.selectbox(key="run").set_value(BUNDLED_CHOICE).run()
    left = [w.value for w in stray.sidebar.warning]  # the run chosen: its warning gone, the data source's kept
    assert len(left) == 1 and left[0].startswith("The link named the data source `nothing`")


def test_a_bounded_epoch_chart_before_the_first_epoch_spans_0_to_1():
    """A run's ROC-AUC chart before its first epoch: the axis of the metric's range (plotly's own for no
    data is -1 to 4), and words saying why it is empty."""
    from pcam_app.figures import curves_figure
    from pcam_core.workspace.monitor import epoch_frame

    empty = curves_figure(epoch_frame({"new-run": []}), "roc_auc").to_plotly_json()["layout"]
    assert tuple(empty["yaxis"]["range"]) == (0.0, 1.002) and tuple(empty["xaxis"]["range"]) == (1, 2)  # no epoch -1
    assert [a["text"] for a in empty["annotations"]] == ["no epochs yet"]
    from pcam_app.figures import loss_figure

    nothing = pd.DataFrame({"epoch": [], "loss": []})
    loss = loss_figure(nothing, nothing).to_plotly_json()["layout"]  # a queued run: plotly's own axes ran from -1
    assert tuple(loss["xaxis"]["range"]) == (1, 2) and tuple(loss["yaxis"]["range"]) == (0, 1)
    assert [a["text"] for a in loss["annotations"]] == ["no steps yet"]
    # a run too short to log a step line: each epoch's mean training loss beside the validation loss, in a legend
    short = loss_figure(pd.DataFrame({"epoch": [], "loss": []}),
                        epoch_frame({"": [{"epoch": e, "loss": 0.6, "train_loss": 0.5} for e in (1, 2, 3)]})).to_plotly_json()
    assert [t["name"] for t in short["data"]] == ["training loss (epoch mean)", "validation loss"] and short["layout"]["showlegend"]
    one = curves_figure(epoch_frame({"r": [{"epoch": 1, "roc_auc": 0.9}]}), "roc_auc").to_plotly_json()["layout"]
    assert tuple(one["yaxis"]["range"]) == pytest.approx((0.88, 1.002)) and not one.get("annotations")


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_new_predictions_replace_the_ones_read_before(finished_workspace, monkeypatch, tmp_path):
    """The pages read a split's predictions once per version of the file: predictions written again
    (an epoch of a resumed run, a split scored again) are what the next rerun shows."""
    workspace = tmp_path / "ws"
    shutil.copytree(finished_workspace, workspace)
    at = open_page(start(workspace, monkeypatch), "pages/runs.py")
    auc = float(next(m.value for m in at.metric if m.label == "ROC-AUC"))
    path = RunDir(workspace / "runs" / RUN_ID).valid_predictions_path
    frame = pd.read_csv(path, dtype={"id": str})
    frame["probability"] = 1 - frame["probability"]
    frame.to_csv(path, index=False)
    at.run()
    assert not at.exception
    assert float(next(m.value for m in at.metric if m.label == "ROC-AUC")) == pytest.approx(1 - auc, abs=2e-3)


@pytest.mark.slow
def test_scoring_another_split_from_the_runs_page(finished_workspace, monkeypatch):
    at = open_page(start(finished_workspace, monkeypatch), "pages/runs.py")
    at.button_group(key="judge_split").set_value("test").run()
    assert "has not been scored" in texts(at)
    at.button[0].click().run()
    run = RunDir(Path(finished_workspace) / "runs" / RUN_ID)
    assert wait_for(lambda: (status := scoring.scoring_status(run, "test")) is not None and not status.active, timeout=180)
    at.run()
    assert not at.exception and "256 patches of the test split" in texts(at)


@pytest.mark.slow
def test_predict_page_warns_when_the_model_checks_no_patch_for_scope(finished_workspace, monkeypatch, demo_root, tmp_path):
    """A run without an out-of-scope guard (too few validation patches to fit one) calls every patch: the page warns,
    in the words `pcam predict --results` uses (QA: it was a caption under the uploads)."""
    from pcam_core.scope import no_guard_warning

    workspace = tmp_path / "ws"
    shutil.copytree(finished_workspace, workspace)
    RunDir(workspace / "runs" / RUN_ID).scope_path.unlink()
    at = open_page(start(workspace, monkeypatch), "pages/predict.py")
    pixels = PCamH5(demo_root, "test").read_pixels(np.arange(2))
    at.file_uploader(key="uploads").set_value([(f"{patch_id(p)}.tif", tif_bytes(p), "image/tiff") for p in pixels]).run()
    assert not at.exception
    assert f"Run {no_guard_warning(RUN_ID)}." in [w.value for w in at.warning]
    assert "in_scope" not in at.dataframe[0].value.columns  # nothing to say of any patch


def test_predict_uploads_refuses_and_converts_visibly(finished_workspace, monkeypatch, demo_root, tmp_path):
    at = open_page(start(finished_workspace, monkeypatch), "pages/predict.py")
    pixels = PCamH5(demo_root, "test").read_pixels(np.arange(3))
    files = [(f"{patch_id(p)}.tif", tif_bytes(p), "image/tiff") for p in pixels]
    bad = make_bad_images(tmp_path / "bad")
    files += [(name, (tmp_path / "bad" / name).read_bytes(), "image/png") for name in ("small64.tif", "gray.tif")]
    at.file_uploader(key="uploads").set_value(files).run()  # its speed: benchmarks/bench_uploads.py
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "small64.tif" in errors and bad["small64.tif"] in errors
    assert any("gray.tif" in w.value and "grayscale" in w.value for w in at.warning)
    table = at.dataframe[0].value  # every file: the refused one with its reason, as in the results file
    scored = table[table["call"] != "refused"]
    assert len(scored) == 4 and scored["probability"].between(0, 1).all() and set(scored["call"]) <= {"tumour", "normal", "refer"}
    # the run's out-of-scope guard (fitted when it finished) checks each patch: a patch out of scope is referred
    assert scored["in_scope"].notna().all() and ((scored["call"] == "refer") == ~scored["in_scope"].astype(bool)).all()
    [refused] = table[table["call"] == "refused"].to_dict("records")
    assert refused["file"] == "small64.tif" and bad["small64.tif"] in refused["notes"]
    counts = {call: int((scored["call"] == call).sum()) for call in ("tumour", "normal", "refer")}
    heading = (f"4 patches scored: {counts['tumour']} called tumour at 0.500, {counts['normal']} normal"
               + (f", {counts['refer']} referred (out of scope)" if counts["refer"] else "") + ", 1 refused")
    assert heading in [h.value for h in at.subheader]  # every call counted, the referred ones too
    # the call in sight at any width: first after the file, the long id last
    assert list(at.dataframe[0].proto.column_order)[:2] == ["file", "call"] and at.dataframe[0].proto.column_order[-1] == "id"
    # two downloads: the results file (every scored file, its call and how it was made) and Kaggle's submission
    assert [b.proto.label for b in at.get("download_button")] == ["Download results (CSV)", "Download Kaggle submission (CSV)"]
    at.slider(key="predict_threshold").set_value(0.0).run()
    assert (at.dataframe[0].value["call"] != "normal").all()
    # heat maps are on by default: each patch beside its overlay, with its centre focus
    pairs = [image.captions[0] for image in at.image if "centre focus" in image.captions[0]]
    assert len(pairs) == 4 and all(re.search(r"centre focus (\d\.\d\d|none)", c) for c in pairs)
    assert "Centre focus" in texts(at)
    at.toggle(key="predict_heatmaps").set_value(False).run()
    assert not at.exception and not any("centre focus" in c for image in at.image for c in image.captions)
    assert len(at.image[0].captions) == 4


# -- Explain ------------------------------------------------------------------------------------------

def _focus(caption: str) -> float:
    value = re.search(r"focus (none|\d\.\d\d)", caption).group(1)
    return float("nan") if value == "none" else float(value)


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_explain_one_patch_with_every_setting(finished_workspace, monkeypatch):
    at = open_page(start(finished_workspace, monkeypatch), "pages/explain.py")

    def figures() -> dict[str, str]:
        return {m.label: m.value for m in at.metric}

    first = figures()
    assert 0.0 <= float(first["Tumour probability"]) <= 1.0 and 0.0 <= float(first["Centre focus"]) <= 1.0
    valid = pd.read_csv(RunDir(Path(finished_workspace) / "runs" / RUN_ID).valid_predictions_path, dtype={"id": str})
    counts = outcome_counts(valid, 0.5)
    assert at.selectbox(key="outcome").value == next(o for o in OUTCOMES if counts[o])  # errors first, if any
    assert at.selectbox(key="outcome_patch").value == outcome_examples(valid, 0.5, at.selectbox(key="outcome").value)["index"].iloc[0]
    assert len(at.image) == 2 and at.get("download_button")  # the patch, its overlay, and the overlay's download
    assert "It does **not** say whether the call is right" in texts(at)
    for method in [m for m in METHODS if m != "scorecam"]:
        at.selectbox(key="method").set_value(method).run()
        assert not at.exception and "Centre focus" in figures(), method
    at.selectbox(key="method").set_value("gradcam").run()
    for layer, label in layer_choices("pcamnet").items():
        at.selectbox(key="layer").set_value(layer).run()
        size = int(label.rsplit("x", 1)[1])
        assert f"Each cell of this {size}×{size} map covers {96 // size}×{96 // size} pixels" in texts(at)
        assert f"gradcam at {label}, evidence for tumour" in at.image[1].captions[0]
    at.button_group(key="target").set_value("normal").run()
    assert "evidence for normal" in at.image[1].captions[0]
    assert figures()["Tumour probability"] == first["Tumour probability"]  # the same patch and model
    at.slider(key="opacity").set_value(0.9).run()
    assert not at.exception
    # by number, by id, with a clear error for a patch that is not there
    at.button_group(key="pick").set_value("number").run()
    at.text_input(key="patch").set_value("17").run()
    assert "Patch #17 of valid" in at.image[0].captions[0]
    at.text_input(key="patch").set_value(valid["id"][5][:10]).run()
    assert f"Patch #{valid['index'][5]} of valid" in at.image[0].captions[0]
    at.text_input(key="patch").set_value("99999").run()
    assert any("no patch number 99999" in e.value for e in at.error)
    at.button_group(key="pick").set_value("random").run()
    assert not at.exception and len(at.image) == 2


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_explain_gallery_sorted_by_centre_focus(finished_workspace, monkeypatch):
    at = open_page(start(finished_workspace, monkeypatch), "pages/explain.py")
    at.button_group(key="view").set_value("gallery").run()
    assert not at.exception
    captions = [image.captions[0] for image in at.image]  # one card per patch
    assert len(captions) == 24
    focus = [_focus(c) for c in captions]
    known = [f for f in focus if f == f]
    assert known == sorted(known) and focus[: len(known)] == known  # lowest first, empty maps last
    # each card's probability is the score that made it an outcome (the run's validation predictions)
    scores = pd.read_csv(RunDir(Path(finished_workspace) / "runs" / RUN_ID).valid_predictions_path).set_index("index")["probability"]
    for caption in captions:
        number, probability = re.match(r"#(\d+) · \w+ · (p[=<>]\d\.\d{3}) · ", caption).groups()
        assert probability == probability_text(scores[int(number)]), caption
    at.selectbox(key="gallery_source").set_value("true_positive").run()
    assert all(" · tumour · " in image.captions[0] for image in at.image)
    at.selectbox(key="gallery_count").set_value(12).run()
    assert len(at.image) == 12
    chosen = at.selectbox(key="gallery_pick").value
    [b for b in at.button if b.label == "Open it"][0].click().run()
    assert at.button_group(key="view").value == "patch" and f"Patch #{chosen} of valid" in at.image[0].captions[0]


@pytest.mark.slow
def test_the_error_gallery_links_to_explain_with_the_patch(finished_workspace, monkeypatch):
    at = open_page(start(finished_workspace, monkeypatch), "pages/runs.py")
    at.slider(key="threshold").set_value(0.2).run()  # some false positives to show
    galleries = [json.loads(e.proto.json) for e in at.get("bidi_component") if e.proto.component_name == "pcam_patch_links"]
    cards = [card for gallery in galleries for card in gallery["cards"]]
    assert cards and all(gallery["label"] == "Explain" for gallery in galleries)
    assert all(card["src"].startswith("data:image/png;base64,") and card["caption"].startswith("#") for card in cards)
    path, _, query = cards[0]["href"].partition("?")
    assert path == "explain"
    params = dict(parse_qsl(query))
    assert params["run"] == RUN_ID and params["split"] == "valid" and cards[0]["caption"].startswith(f"#{params['patch']} ")
    # the patch shown is the patch itself, central region outlined (lossless)
    tile = np.asarray(Image.open(io.BytesIO(base64.b64decode(cards[0]["src"].split(",", 1)[1]))))
    source = Workspace(finished_workspace).sources()[0]
    patch = PCamH5(source.path, "valid").read_pixels([int(params["patch"])])
    assert np.array_equal(tile, outline_centre(patch)[0])
    # following the link: a session that opens Explain with these query parameters shows that patch
    fresh = AppTest.from_file(APP, default_timeout=120)
    for key, value in params.items():
        fresh.query_params[key] = value
    fresh.switch_page("pages/explain.py").run()
    assert not fresh.exception and fresh.button_group(key="pick").value == "number"
    assert f"Patch #{params['patch']} of valid" in fresh.image[0].captions[0]


@pytest.mark.slow
def test_train_form_launches_a_background_run(finished_workspace, monkeypatch):
    at = open_page(start(finished_workspace, monkeypatch), "pages/train.py")
    at.number_input[0].set_value(1)  # epochs
    advanced = {n.label: n for n in at.number_input}
    advanced["Stop after steps (0: no limit)"].set_value(3)
    at.text_input[0].set_value("from-form")
    processes = advanced["Processes"]
    assert processes.value == 1 and processes.max == max_processes()  # CPU cores here, GPUs where there are some
    at.button[0].click().run()  # the form's submit button
    assert not at.exception
    new = at.sidebar.selectbox(key="run").value
    assert new != RUN_ID and "from-form" in new
    run = RunDir(Path(finished_workspace) / "runs" / new)
    config = run.config()
    assert config.train.epochs == 1 and config.train.max_steps == 3 and config.data.path == Workspace(finished_workspace).source("demo").path
    wait_for(lambda: run.status()["state"] not in ("queued", "running"), timeout=240)
    assert run.status()["state"] == "finished", run.log_tail(console=True)
    at.run()
    assert "finished" in texts(at)


def _submit_train_form(at: AppTest, **inputs) -> AppTest:
    """Fill the Train page's form (number inputs by label, the teacher by key) for a 1-epoch, 2-step run of batches of
    16 and submit it."""
    fields = {n.label: n for n in at.number_input}
    fields["Epochs"].set_value(1)
    fields["Stop after steps (0: no limit)"].set_value(2)
    at.select_slider[0].set_value(16)  # the batch size: a fold of 32 patches is two batches
    for label, value in inputs.items():
        if label == "teacher":
            at.selectbox(key="teacher").set_value(value)
        else:
            fields[label].set_value(value)
    at.button[0].click().run()  # the form's submit button
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.slow
def test_train_form_cross_validates_and_distils_from_a_cross_validation(trained_run, small_kaggle, tmp_path, monkeypatch):
    """Folds on the form start `pcam train --folds K`, with two processes its folds side by side (`--parallel-folds 2`);
    its live view draws the fold under way and every fold's curve, then the cross-validated figures. A finished
    cross-validation then teaches a new one, while a teacher that is not a cross-validation is refused before any folder
    is made. On 64 real patches (2 folds of 32), beside a finished run of the demo data."""
    workspace = Workspace(tmp_path)
    workspace.add_source(small_kaggle, "real")
    shutil.copytree(trained_run, workspace.runs_root / RUN_ID)
    at = open_page(start(tmp_path, monkeypatch), "pages/train.py")
    before = {r.run_id for r in workspace.runs()}
    _submit_train_form(at, **{"Cross-validation folds (0: off)": 2, "teacher": str(workspace.run(RUN_ID).path)})
    assert f"Not started: teacher {workspace.run(RUN_ID).path} is not a finished cross-validation" in texts(at)
    assert {r.run_id for r in workspace.runs()} == before  # nothing made for a refused form

    _submit_train_form(at, **{"Cross-validation folds (0: off)": 2, "Processes": 2, "teacher": ""})
    cv = workspace.run(at.sidebar.selectbox(key="run").value)
    assert cv.run_id not in before and cv.config().data.folds == 2
    launcher = Path(f"/proc/{cv.raw_status()['launcher_pid']}/cmdline").read_bytes().split(b"\0")
    assert b"--folds" in launcher and launcher[launcher.index(b"--folds") + 1] == b"2"
    assert launcher[launcher.index(b"--parallel-folds") + 1] == b"2" and b"torch.distributed.run" not in launcher
    wait_for(lambda: cv.status()["state"] not in ("queued", "running"), timeout=300)
    assert cv.status()["state"] == "finished", cv.log_tail(console=True)
    at.run()
    [progress] = at.get("progress")
    assert progress.proto.text.startswith("2 folds finished after")
    shown = {m.label: m.value for m in at.metric}
    pooled = json.loads(cv.cv_path.read_text())["one_pass"]["pooled"]["roc_auc"]["value"]
    assert shown["Cross-validated ROC-AUC"] == f"{pooled:.3f}" and shown["Fold 2 ROC-AUC"] != "-"
    assert shown["Training loss"] != "-" and shown["Patches/s"] != "-"  # 2 steps a fold: no step line, the epoch's figures
    assert "one pass: out-of-fold ROC-AUC" in texts(at) and "TTA: out-of-fold ROC-AUC" in texts(at)
    auc = next(c for c in charts(at) if "of every fold" in c["layout"]["title"]["text"])
    assert sorted(trace["name"] for trace in auc["data"]) == ["fold 1", "fold 2"]
    assert any(c["layout"]["title"]["text"] == "Loss of fold 2" for c in charts(at))
    # judged and explained on its out-of-fold patches: every patch of the pool (the pages once read fold 1's alone)
    pool = len(pd.read_csv(cv.oof_predictions_path))
    open_page(at, "pages/runs.py")
    assert f"{pool:,} patches of the valid split" in texts(at) and "A cross-validation's out-of-fold patches" in texts(at)
    assert "A cross-validation's row holds its out-of-fold figures" in texts(at)  # why it has no best epoch
    assert scoring.scorable_splits(cv) == ["valid"]  # not "train": the pool, which the ensemble trained on
    at.multiselect(key="curve_runs").set_value([cv.run_id]).run()  # its learning curves: one per fold
    curves = next(c for c in charts(at) if c["layout"]["title"]["text"] == "validation ROC-AUC")
    assert sorted(t["name"] for t in curves["data"]) == [f"{cv.run_id} · fold 1", f"{cv.run_id} · fold 2"]
    assert any(box.key.startswith("review_pick_") and box.options for box in at.selectbox)  # the most confident errors, drawn
    open_page(at, "pages/explain.py")
    assert "Out-of-fold: the probability is that of the one fold run that did not train on this patch" in texts(at)
    at.button_group(key="view").set_value("gallery").run()  # and its gallery, whose cards show those probabilities
    assert "Out-of-fold: each probability is that of the one fold run that did not train on the patch" in texts(at)
    at.button_group(key="view").set_value("patch").run()
    open_page(at, "pages/train.py")

    assert "training 2 folds side by side" in cv.log_tail(400)
    _submit_train_form(at, **{"Cross-validation folds (0: off)": 2, "Processes": 1, "teacher": str(cv.path)})
    taught = workspace.run(at.sidebar.selectbox(key="run").value)
    assert taught.run_id != cv.run_id and taught.config().train.teacher == str(cv.path)
    # its first fold matched with the teacher's member that held it out (tests/test_crossval.py follows every fold)
    assert wait_for(lambda: "which held out the same patches (fold 1 of 2)" in taught.fold(0).log_tail(200), timeout=300)
    stop(taught, timeout=60)
    # a single run taught by it: nothing shows the teacher never saw its validation patches, and the live view says so
    _submit_train_form(at, **{"Cross-validation folds (0: off)": 0, "teacher": str(cv.path)})
    single = workspace.run(at.sidebar.selectbox(key="run").value)
    wait_for(lambda: single.status()["state"] not in ("queued", "running"), timeout=300)
    assert single.status()["state"] == "finished", single.log_tail(console=True)
    at.run()
    unchecked = (f"taught by {cv.path}: the validation figures are honest only if it never trained on this run's "
                 "validation patches; train with --folds K and a cross-validated teacher to have that checked")
    assert [w.value for w in at.warning if "SYNTHETIC" not in w.value] == [unchecked]
    open_page(at, "pages/runs.py")  # and above the figures it is judged by
    assert unchecked in [w.value for w in at.warning]


@pytest.mark.slow
def test_stop_and_resume_buttons(finished_workspace, monkeypatch):
    workspace = Workspace(finished_workspace)
    config = ExperimentConfig().replace(data={"path": workspace.source("demo").path, "num_workers": 0},
                                        train={"epochs": 50, "batch_size": 16, "log_every": 1}, name="long")
    run = workspace.start_run(config, nproc=2)  # two processes through torchrun; resuming keeps two
    try:
        assert wait_for(run.steps, timeout=120, every=0.3)
        at = start(finished_workspace, monkeypatch)
        # a run training while the sidebar shows another: named, one click to watch it; with the bundled model, watched
        assert at.sidebar.selectbox(key="run").value != run.run_id  # the newest finished run, by default
        open_page(at, "pages/train.py")
        assert f"Training now: `{run.run_id}`; below, the run selected in the sidebar." in texts(at)
        at.sidebar.selectbox(key="run").set_value(BUNDLED_CHOICE).run()
        assert f"Watching `{run.run_id}`, training now; the sidebar's selected model is the bundled model." in texts(at)
        assert at.get("progress") and at.button(key="stop")  # its live view, and its buttons
        at.button(key="select_training").click().run()
        assert at.sidebar.selectbox(key="run").value == run.run_id
        at.button(key="stop").click().run()
        wait_for(lambda: run.status()["state"] != "running", timeout=120, every=0.3)
        assert run.status()["state"] == "stopped" and run.last_checkpoint.exists()
        at.sidebar.selectbox(key="run").set_value(BUNDLED_CHOICE).run()  # as a new tab may open: it names the stopped run
        assert f"The newest run, `{run.run_id}`, is stopped: it can be resumed from its view." in texts(at)
        at.button(key="select_resumable").click().run()
        assert at.sidebar.selectbox(key="run").value == run.run_id
        at.button(key="resume").click().run()
        wait_for(lambda: run.status()["state"] == "running", timeout=120, every=0.3)
        assert run.status()["state"] == "running" and process_count(run) == 2
        launcher = Path(f"/proc/{run.raw_status()['launcher_pid']}/cmdline").read_bytes().split(b"\0")
        assert b"torch.distributed.run" in launcher and b"--nproc_per_node=2" in launcher
    finally:
        stop(run, timeout=60)


def test_dataset_page_on_real_kaggle_patches(tmp_path, monkeypatch, real_kaggle):
    """The Kaggle layout (no slide metadata, tif files) on 160 real patches: not labelled synthetic."""
    Workspace(tmp_path).add_source(real_kaggle, "real")
    at = open_page(start(tmp_path, monkeypatch), "pages/dataset.py")
    shown = texts(at)
    assert "SYNTHETIC" not in shown and "The train split in numbers" in shown
    assert at.selectbox(key="ds_slide_none").disabled
    assert len(at.image[0].captions) == 48
    at.button_group(key="ds_label").set_value("normal").run()
    assert all(c.endswith("normal") for c in at.image[0].captions)
    assert any(m.label == "Patches" and m.value == "160" for m in at.metric)


def test_train_page_says_what_a_running_run_is_at_everywhere(tmp_path, monkeypatch):
    """A run in its second epoch: the sidebar, the runs table and the live view all say "epoch 2 of 3"
    and the best ROC-AUC so far (the sidebar and the table once read "0/3 epochs" and "–" beside it)."""
    (tmp_path / "sources.json").write_text(json.dumps({"version": 1, "sources": []}))
    running_run(Workspace(tmp_path).runs_root, "live", epochs=3, best={"roc_auc": 0.7})
    at = start(tmp_path, monkeypatch)
    assert at.sidebar.selectbox(key="run").value == "@bundled"  # a run still training is never the default
    at.sidebar.selectbox(key="run").set_value("live").run()
    open_page(at, "pages/train.py")
    assert at.sidebar.selectbox(key="run").value == "live"
    assert any("running · pcamnet · epoch 2 of 3 · best ROC-AUC 0.700" in c.value for c in at.sidebar.caption)
    row = tables(at)["All runs"].iloc[0]
    assert row["epochs"] == "epoch 2 of 3" and row["ROC-AUC"] == "0.700"
    [progress] = at.get("progress")
    assert progress.proto.text.startswith("epoch 2 of 3 · step 30 of 60")
    assert any(m.label == "Best ROC-AUC" and m.value == "0.700" for m in at.metric)


def test_folds_side_by_side_each_show_their_roc_auc_in_the_live_view(tmp_path, monkeypatch):
    """Two folds of a cross-validation training side by side: the live view names both, with each fold's ROC-AUC
    (it once showed the first fold's alone)."""
    (tmp_path / "sources.json").write_text(json.dumps({"version": 1, "sources": []}))
    cv = RunDir(running_run(Workspace(tmp_path).runs_root, "cv", epochs=3))
    atomic_write_json(cv.config_path, cv.config().replace(data={"folds": 2}).to_dict())
    for k, auc in enumerate((0.71, 0.82)):
        running_run(cv.folds_dir, f"fold-{k}", epochs=3, best={"roc_auc": auc})
    status = cv.raw_status()
    status.update(fold=1, folds_running=[1, 2], parallel_folds=2)
    atomic_write_json(cv.status_path, status)
    at = start(tmp_path, monkeypatch)
    at.sidebar.selectbox(key="run").set_value("cv").run()
    open_page(at, "pages/train.py")
    shown = {m.label: m.value for m in at.metric}
    assert (shown["Fold 1 ROC-AUC"], shown["Fold 2 ROC-AUC"]) == ("0.710", "0.820")
    [progress] = at.get("progress")
    assert progress.proto.text.startswith("folds 1 and 2 of 2 side by side · fold 1 at epoch 2 of 3, fold 2 at epoch 2 of 3")


def test_a_run_watched_while_it_trained_stays_in_view_when_it_ends(tmp_path, monkeypatch):
    """With the bundled model selected, the Train page watches the run training; when that run ends, the tab keeps
    showing it and its end (it once said "No run selected"), until the run is selected or the tab closed."""
    (tmp_path / "sources.json").write_text(json.dumps({"version": 1, "sources": []}))
    run = RunDir(running_run(Workspace(tmp_path).runs_root, "live", epochs=3))
    at = open_page(start(tmp_path, monkeypatch), "pages/train.py")
    assert "Watching `live`, training now; the sidebar's selected model is the bundled model." in texts(at)
    status = run.raw_status()
    status.update(state="failed", error="out of memory", finished_at=time.time())
    atomic_write_json(run.status_path, status)
    at.run()
    shown = texts(at)
    assert "`live`, watched here while it trained, is failed; the sidebar's selected model is the bundled model." in shown
    assert "No run selected" not in shown and "The run failed: out of memory" in [e.value for e in at.error]
    assert at.button(key="resume")  # its end, where it can be resumed
    at.button(key="select_watched").click().run()
    assert at.sidebar.selectbox(key="run").value == "live"


@pytest.mark.slow
def test_explain_captions_come_from_the_model_and_the_scale_can_be_fixed(finished_workspace, monkeypatch):
    at = open_page(start(finished_workspace, monkeypatch), "pages/explain.py")
    at.sidebar.selectbox(key="run").set_value(RUN_ID).run()  # the finished run (another test adds newer ones)
    shown = texts(at)
    assert "ResNet" not in shown and "pcamnet's stage4" in shown  # the run's model is pcamnet
    assert "scaled to its own strongest point" in shown and "full red" in shown  # said next to the map
    at.selectbox(key="method").set_value("eigencam").run()
    assert "class-agnostic" in at.image[1].captions[0] and "evidence for tumour" not in at.image[1].captions[0]
    assert at.button_group(key="target").disabled
    at.selectbox(key="method").set_value("gradcam").run()
    per_patch = at.image[1].value
    at.button_group(key="map_scale").set_value("fixed").run()
    assert not at.exception and "scale fixed 0..max across patches" in at.image[1].captions[0]
    assert "patches of the valid split drawn at random" in texts(at)
    at.button_group(key="view").set_value("gallery").run()
    assert not at.exception and len(at.image) == 24 and "One scale for all the patches shown" in texts(at)
    assert per_patch is not None


def test_explain_names_an_empty_map_in_full(finished_workspace, monkeypatch, tmp_path):
    """A model whose head ignores its features gives every patch an empty Grad-CAM map: the centre focus
    reads "none" (once cut to "none (e…" in its column) with the reason in a caption beside it."""
    import torch

    workspace = tmp_path / "ws"
    shutil.copytree(finished_workspace, workspace, ignore=shutil.ignore_patterns("*from-form*"))
    run = RunDir(workspace / "runs" / RUN_ID)
    for path in run.checkpoints.glob("*.pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        for weights in (state["model"], state.get("ema") or {}):
            for name in [n for n in weights if n.startswith("fc.")]:
                weights[name] = torch.zeros_like(weights[name])
        torch.save(state, path)
    at = open_page(start(workspace, monkeypatch), "pages/explain.py")
    at.sidebar.selectbox(key="run").set_value(RUN_ID).run()
    assert {m.label: m.value for m in at.metric}["Centre focus"] == "none"
    assert "Centre focus none: the heat map is empty (no evidence for tumour at this layer)." in texts(at)


# -- the bundled model ----------------------------------------------------------------------------------

@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_a_fresh_workspace_predicts_and_explains_real_patches_with_the_bundled_model(tmp_path, monkeypatch, real_kaggle):
    """The first start selects the bundled model (trained on real tissue) on Predict and Explain, marked as
    such and never as synthetic, with its model card; uploads are scored and explained. (The fixture patches
    overlap its training data: tests/test_bundled.py.)"""
    monkeypatch.setenv(DEMO_ENV_VAR, "64")
    at = start(tmp_path / "ws", monkeypatch)
    labels = pd.read_csv(real_kaggle / "train_labels.csv").head(6)
    files = [(f"{i}.tif", (real_kaggle / "train" / f"{i}.tif").read_bytes(), "image/tiff") for i in labels["id"]]
    for page in ("pages/predict.py", "pages/explain.py"):
        open_page(at, page)
        assert at.sidebar.selectbox(key="run").value == "@bundled"
        shown = texts(at)
        assert "bundled model (real tissue)" in shown and "SYNTHETIC" not in " ".join(w.value for w in at.warning), page
        assert any(e.label.startswith("Model card") for e in at.expander), page
        assert ("Cross-validated figures" if is_ensemble() else "Held-out figures") in shown  # the card, in its expander
    open_page(at, "pages/predict.py")
    at.file_uploader(key="uploads").set_value(files).run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert len(table) == 6 and table["probability"].between(0, 1).all()
    assert at.get("download_button")[0].proto.label == "Download results (CSV)"
    open_page(at, "pages/explain.py")
    at.file_uploader(key="explain_uploads").set_value(files).run()
    assert not at.exception and not at.error
    captions = [c for image in at.image for c in image.captions if "focus" in c]
    assert len(captions) == 6 and all(re.search(r"p[=<>]\d\.\d{3} · focus (\d\.\d\d|none)", c) for c in captions)
    for page in ("pages/runs.py", "pages/train.py", "pages/review.py"):
        open_page(at, page)
        assert not at.error, (page, [e.value for e in at.error])
