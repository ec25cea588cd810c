"""Shared fixtures: data the tests write themselves, the real patches committed under tests/data/, a trained run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Before anything imports torch: OpenMP threads wait passively, as in the dashboard and the training processes it
# launches (pcam_core.runs.launch). The tests share the cores with the servers, dashboards and trainings they start
# (and CI machines with other jobs); spinning threads make every small torch call several times slower then.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Two pytest-xdist workers on two cores: one OpenMP thread each (and in the processes they start), so that their torch
# calls do not fight over the cores (the same files took an eighth less CPU time, a sixth less of it in the kernel).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= min(2, os.cpu_count() or 1) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import gc  # noqa: E402

import pytest  # noqa: E402

# No cyclic garbage collection while the test modules are imported and their asserts rewritten: with torch, streamlit
# and the rest loaded, each full collection walks millions of objects, and rewriting makes enough of them to start
# dozens (collection took 18.8 s a process, 10.2 s without them). At its end (`pytest_collection_finish`) what is still
# alive is frozen out of later collections: the modules stay loaded for the whole session.
gc.disable()

from helpers import CV_ARGS, REAL_H5, REAL_KAGGLE  # noqa: E402
from session_data import demo_data, demo_run, small_demo_data  # noqa: E402

os.environ.setdefault("PCAM_TEST", "1")
# A first start makes no demo slide (and starts no analysis process) unless a test asks for one.
os.environ.setdefault("PCAM_DEMO_SLIDE", "off")


@pytest.fixture(scope="session")
def real_kaggle() -> Path:
    """160 real PCam patches in the Kaggle layout (96 normal, 64 tumour), committed under tests/data/."""
    assert (REAL_KAGGLE / "train_labels.csv").exists(), f"real test patches expected at {REAL_KAGGLE}"
    return REAL_KAGGLE


@pytest.fixture(scope="session")
def real_h5() -> Path:
    """The same 160 real patches in the official HDF5 layout: train 96, valid 32, test 32."""
    assert (REAL_H5 / "camelyonpatch_level_2_split_train_x.h5").exists(), f"real test patches expected at {REAL_H5}"
    return REAL_H5


@pytest.fixture(scope="module")
def small_kaggle(real_kaggle, tmp_path_factory) -> Path:
    """64 of the real fixture patches (40 normal, 24 tumour) in the Kaggle layout: 2 folds of 32, one step an epoch."""
    import pandas as pd

    table = pd.read_csv(real_kaggle / "train_labels.csv", dtype={"id": str})
    table = pd.concat([table[table["label"] == 0].head(40), table[table["label"] == 1].head(24)])
    root = tmp_path_factory.mktemp("small-kaggle")
    (root / "train").mkdir()
    for pid in table["id"]:
        (root / "train" / f"{pid}.tif").write_bytes((real_kaggle / "train" / f"{pid}.tif").read_bytes())
    table.to_csv(root / "train_labels.csv", index=False)
    return root


@pytest.fixture(scope="module")
def cv_run(small_kaggle, tmp_path_factory) -> Path:
    """A 2-fold cross-validation on 64 real patches, one epoch per fold (in this process)."""
    from pcam_core.cli import main

    out = tmp_path_factory.mktemp("cv") / "cv"
    assert main(["train", "--data", str(small_kaggle), "--out", str(out), *CV_ARGS]) == 0
    return out


def pytest_xdist_auto_num_workers(config) -> int:
    """How many pytest-xdist workers `-n auto` (pyproject's addopts) starts: one per core, at most two (the suite's
    servers, browsers and trainings start processes of their own); none on one core. Files are given out whole
    (`--dist loadfile`), so a module's fixtures are made once."""
    workers = min(2, os.cpu_count() or 1)
    return workers if workers > 1 else 0


def _session_base(tmp_path_factory) -> Path:
    """The session's temporary folder, shared by the pytest-xdist workers (each has its own folder below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def pytest_sessionstart(session) -> None:
    """On several workers, the controlling process starts the shared data and training (tests/session_data.py) in a
    process of its own at once, unless the run names files of its own (then perhaps no test needs them)."""
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", 0):
        return
    if any(Path(arg.split("::")[0]).exists() for arg in config.invocation_params.args if not arg.startswith("-")):
        return
    base = config._tmp_path_factory.getbasetemp()
    with open(base / "session_data.log", "wb") as log:  # the process keeps its own copy of the file
        config._session_data = subprocess.Popen([sys.executable, str(Path(__file__).parent / "session_data.py"), str(base)],
                                                stdout=log, stderr=subprocess.STDOUT)


def pytest_sessionfinish(session) -> None:
    proc = getattr(session.config, "_session_data", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small synthetic demo dataset (HDF5 layout) generated by the project itself."""
    return demo_data(_session_base(tmp_path_factory))


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """Half the demo dataset (384 training patches, 128 validation, 128 test; 12 steps an epoch at batch 32): for the
    tests of a training process's contract, whose trained model is not under test."""
    return small_demo_data(_session_base(tmp_path_factory))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A short finished training run on the demo data (`TRAINED_EPOCHS` epochs of the compact model), shared by
    every test that needs a trained model. `pcam train` runs in this process (or the session's data process): no
    process boundary is under test here (tests/test_train.py and tests/test_reliability.py train in processes of
    their own)."""
    return demo_run(_session_base(tmp_path_factory))


@pytest.fixture(autouse=True)
def _main_module_kept():
    """Streamlit's AppTest runs a page as `__main__` and leaves it in sys.modules; a process started with "spawn"
    afterwards would run that page's file again (and fail). Each test starts and ends with the real one."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


E2E = Path(__file__).parent / "e2e"  # every test under it is `slow` (pytest_collection_modifyitems)
SLOW_MODULE = re.compile(r"^pytestmark = pytest\.mark\.slow\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """The fast lane (`-m "not slow"`, exactly) does not import the files whose every test is `slow` (tests/e2e/, and
    modules marked slow as a whole): each pytest-xdist worker would import them (and what they import) only to
    deselect all of their tests."""
    if (config.getoption("markexpr", "") or "").strip() != "not slow":
        return None
    if collection_path.is_relative_to(E2E):
        return True
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return True if SLOW_MODULE.search(collection_path.read_text(encoding="utf-8")) else None
    return None


def pytest_collection_finish(session) -> None:
    gc.collect()
    gc.freeze()
    gc.enable()


def pytest_collection_modifyitems(config, items) -> None:
    """Everything under tests/e2e/ starts servers, processes or a browser: it is `slow`, outside the fast lane
    (`./test.sh -m "not slow"`). Tests elsewhere that train or launch processes carry the mark themselves."""
    for item in items:
        if Path(item.fspath).is_relative_to(E2E):
            item.add_marker(pytest.mark.slow)
    needs_run = {item.fspath for item in items if "trained_run" in getattr(item, "fixturenames", ())}
    if "not slow" in (config.getoption("markexpr", "") or ""):
        # the fast lane: the files that need the shared training last (a worker that took one first waited 9 s for it
        # while the background process trained), then those with the most tests first
        count = Counter(item.fspath for item in items if not item.get_closest_marker("slow"))
        items.sort(key=lambda item: (item.fspath in needs_run, -count[item.fspath]))
        return
    # The whole suite: the files that take minutes first, longest first (the training is done long before they reach
    # it), so that no worker is left alone with one of them at the end. Then the other files, those with a test that
    # needs the shared training after the rest (their order kept), so that the workers (which take whole files) have
    # the others to do while that training is under way.

    def cost(item) -> float:
        return HEAVY_FILES.get(Path(item.fspath).relative_to(Path(__file__).parent).as_posix(), 0.0)

    items.sort(key=lambda item: (not cost(item) and item.fspath in needs_run, -cost(item)))


# Seconds each of the longest test files takes on the 2-core CI machine (`--junitxml`, summed by file, 2026-12-08, less what
# moving their CLI calls into the worker saved): only their order matters, to give them out longest first (pyproject's
# `--no-loadscope-reorder` keeps pytest-xdist from reordering the files by their number of tests). A file missing here
# runs after them, in collection order.
HEAVY_FILES = {
    "test_crossval.py": 195, "e2e/test_browser.py": 190, "test_app.py": 163, "test_distributed.py": 155, "test_train.py": 87,
    "e2e/test_slides_viewer.py": 83, "test_slide_decision.py": 80, "test_slides.py": 75, "test_cli.py": 71,
    "test_predict.py": 60, "test_slide_modes.py": 54, "test_bundled.py": 51, "test_app_slides.py": 49,
    "test_reliability.py": 48, "e2e/test_serve.py": 39, "test_tracking.py": 36, "test_slide_library.py": 31,
}
