"""pcam_core.workspace (sources): the workspace folder, the data source registry, first start, the download job."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from helpers import random_patches, wait_for, write_official_h5
from pcam_core.config import ExperimentConfig
from pcam_core.data import DataError
from pcam_core.data.demo import is_demo_dataset
from pcam_core.workspace import DEMO_ENV_VAR, ENV_VAR, Workspace, check_source_name, demo_spec, workspace_root


def test_root_comes_from_the_argument_then_the_environment_then_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert workspace_root() == tmp_path / "workspace"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert workspace_root() == tmp_path / "env"
    assert workspace_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv(ENV_VAR, "relative/ws")
    assert workspace_root() == tmp_path / "relative" / "ws"  # made absolute: training processes may run elsewhere


def test_demo_spec_size_from_the_environment(monkeypatch):
    monkeypatch.delenv(DEMO_ENV_VAR, raising=False)
    assert dict(demo_spec().sizes) == {"train": 2048, "valid": 512, "test": 512}
    monkeypatch.setenv(DEMO_ENV_VAR, "256")
    assert dict(demo_spec().sizes) == {"train": 256, "valid": 64, "test": 64}
    monkeypatch.setenv(DEMO_ENV_VAR, "lots")
    with pytest.raises(ValueError, match="whole number"):
        demo_spec()
    with pytest.raises(ValueError, match="between 64"):
        demo_spec(10)


def test_first_start_generates_and_registers_the_demo_once(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert not ws.initialised() and ws.sources() == []
    seen = []
    source = ws.bootstrap(progress=lambda f, msg: seen.append(f), spec=demo_spec(64))
    assert source is not None and source.synthetic and source.name == "demo" and source.format == "h5"
    assert seen and seen[-1] == 1.0
    assert is_demo_dataset(source.path) and source.splits() == ["train", "valid", "test"]
    assert [p.name for p in (tmp_path / "ws" / "data").iterdir()] == ["demo"]  # no temporary folder left behind
    assert ws.bootstrap() is None  # set up already: nothing happens
    ws.remove_source("demo")
    assert ws.bootstrap() is None and ws.sources() == []  # a removed demo stays removed
    assert (tmp_path / "ws" / "data" / "demo").is_dir()  # and its files were not deleted


def test_concurrent_first_starts_generate_once(tmp_path):
    ws_a, ws_b = Workspace(tmp_path), Workspace(tmp_path)
    results = []
    threads = [threading.Thread(target=lambda w=w: results.append(w.bootstrap(spec=demo_spec(64)))) for w in (ws_a, ws_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    assert [s.name for s in ws_a.sources()] == ["demo"]


def test_add_sources_of_both_layouts(tmp_path, demo_root, real_kaggle):
    ws = Workspace(tmp_path / "ws")
    demo = ws.add_source(demo_root)
    assert demo.synthetic and demo.format == "h5" and demo.name == demo_root.name
    kaggle = ws.add_source(f"  {real_kaggle}  ", name="real")  # surrounding blanks of a pasted path are ignored
    assert (kaggle.name, kaggle.format, kaggle.synthetic) == ("real", "kaggle", False)
    assert kaggle.splits() == ["train"] and len(kaggle.open("train")) == 160
    assert [s.name for s in Workspace(tmp_path / "ws").sources()] == [demo.name, "real"]  # persisted
    raw = json.loads(ws.sources_path.read_text())
    assert raw["version"] == 1 and raw["sources"][1]["path"] == str(real_kaggle)
    with pytest.raises(ValueError, match="already registered as 'real'"):
        ws.add_source(real_kaggle, name="again")
    other = tmp_path / "other"
    write_official_h5(other, "train", random_patches(4), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="already exists"):
        ws.add_source(other, name="real")
    with pytest.raises(ValueError, match="no split 'test'"):
        kaggle.open("test")


def test_add_source_refuses_what_it_cannot_use(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(FileNotFoundError, match="not found"):
        ws.add_source(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="give the path"):
        ws.add_source("   ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither PCam HDF5"):
        ws.add_source(tmp_path / "empty")
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="loose images"):
        ws.add_source(loose)
    bad = tmp_path / "bad_h5"
    write_official_h5(bad, "train", random_patches(4), np.array([0, 1, 0]))  # one label short
    with pytest.raises(DataError):
        ws.add_source(bad)
    with pytest.raises(ValueError, match="invalid data source name"):
        ws.add_source(tmp_path / "empty", name="../x")  # checked before the folder is
    assert ws.sources() == []


def test_source_names_are_plain_labels():
    assert check_source_name("pcam-2019_v1.0") == "pcam-2019_v1.0"
    for bad in ("", "../up", "a/b", ".hidden", "x" * 65, "a b"):
        with pytest.raises(ValueError):
            check_source_name(bad)


def test_a_damaged_registry_is_reported_not_overwritten(tmp_path):
    ws = Workspace(tmp_path)
    ws.sources_path.write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        ws.sources()
    assert ws.sources_path.read_text() == "{not json"


def test_a_moved_source_is_reported(tmp_path, demo_root):
    copy = tmp_path / "copy"
    shutil.copytree(demo_root, copy)
    ws = Workspace(tmp_path / "ws")
    source = ws.add_source(copy)
    shutil.rmtree(copy)
    assert not source.exists() and source.splits() == []
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        source.open("train")


@pytest.mark.slow
def test_runs_are_started_and_looked_up_by_checked_id(tmp_path, demo_root):
    ws = Workspace(tmp_path)
    config = ExperimentConfig().replace(data={"path": str(demo_root), "num_workers": 0}, train={"epochs": 1, "max_steps": 2, "batch_size": 32},
                                        name="quick")
    run = ws.start_run(config)
    assert run.path.parent == ws.runs_root and "quick" in run.run_id
    assert [r.run_id for r in ws.runs()] == [run.run_id]
    assert ws.run(run.run_id).config() == config
    wait_for(lambda: run.status()["state"] not in ("queued", "running"), timeout=180, every=0.5)
    assert run.status()["state"] == "finished", run.log_tail(console=True)
    with pytest.raises(ValueError, match="invalid run id"):
        ws.run("../" + run.run_id)
    with pytest.raises(FileNotFoundError, match="no run 'r2'"):
        ws.run("r2")
    with pytest.raises(ValueError, match="nproc=0"):
        ws.start_run(config, nproc=0)
    assert len(ws.runs()) == 1  # refused before a run folder was made


@pytest.mark.slow  # a Python process of its own (`pcam download`)
def test_a_failed_download_is_reported_and_not_registered(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.download_status() is None and ws.download_progress() == 0.0
    status = ws.start_download(base_url="http://127.0.0.1:9")  # nothing listens on the discard port
    assert status.state == "running"
    _wait(ws)
    status = ws.download_status()
    assert status.state == "failed" and status.returncode == 2
    assert "cannot reach" in status.log_tail
    assert ws.register_download() is None and ws.sources() == []


@pytest.mark.slow  # a Python process of its own (`pcam download`)
def test_a_finished_download_is_registered_once(tmp_path, demo_root):
    ws = Workspace(tmp_path)
    shutil.copytree(demo_root, ws.download_dest)
    ws.start_download(base_url="http://127.0.0.1:9")
    _wait(ws)
    # The files are in place (copied above); record the exit code a successful download leaves, since
    # the real files cannot be fetched here.
    record = ws.jobs_root / "download-pcam.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "returncode": 0}))
    added = ws.register_download()
    assert added is not None and added.name == "pcam" and added.path == str(ws.download_dest)
    ws.remove_source("pcam")
    assert ws.register_download() is None and ws.sources() == []  # removed by the user: stays removed


def _wait(ws: Workspace, timeout: float = 60.0) -> None:
    wait_for(lambda: not ws.download_status().active, timeout=timeout)
