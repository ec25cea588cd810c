"""`pcam serve --run bundled` on real slide files, live on 127.0.0.1: a DICOM series (a folder) is analysed as one
slide; the real TCGA file, which does not say its resolution, is refused until `mpp` is given, then analysed at it;
a real skin scan is out of the model's scope and the API says so (no size class)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from helpers import REPO, wait_for
from test_serve import TOKEN, ApiServer

SLIDES = REPO / "tests" / "data" / "slides"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-slides")
    shutil.copytree(SLIDES / "CMU-1-Small-Region-dicom", root / "cmu1-dicom")
    shutil.copyfile(SLIDES / "tcga-cr-7395-01a-01-ts1.svs", root / "tcga.svs")
    work = tmp_path_factory.mktemp("serve-real")
    api = ApiServer("--run", "bundled", "--slides-dir", str(root), "--work-dir", str(work / "work"), "--device", "cpu",
                    log=work / "serve.log", env={"PCAM_API_TOKEN": TOKEN}).start()
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c
    api.stop()


def _finish(client: httpx.Client, body: dict) -> dict:
    started = client.post("/v1/slides", json=body)
    assert started.status_code == 202, started.text
    url = started.json()["url"]
    assert wait_for(lambda: client.get(url).json()["state"] != "running", timeout=600, every=1.0)
    answer = client.get(url).json()
    assert answer["state"] == "finished", answer
    return answer["summary"]


def test_a_dicom_series_folder_is_one_slide_and_skin_is_not_assessed(client):
    summary = _finish(client, {"path": "cmu1-dicom", "stride": 96})
    assert summary["slide"] == "cmu1-dicom" and summary["mpp"] == pytest.approx(0.499)
    assert summary["scope"]["in_scope"] is False and "not made for this slide" in summary["scope"]["reason"]
    assert summary["size_class"] == "not assessed"


def test_a_slide_without_its_resolution_needs_mpp_then_is_analysed_at_it(client):
    refused = client.post("/v1/slides", json={"path": "tcga.svs", "stride": 96})
    assert refused.status_code == 400 and "resolution" in refused.json()["error"] and "tcga.svs" in refused.json()["error"]
    summary = _finish(client, {"path": "tcga.svs", "stride": 96, "mpp": 0.5})
    assert summary["mpp"] == 0.5 and summary["scope"]["in_scope"] is False and summary["size_class"] == "not assessed"
