"""Helpers the tests share: official-layout HDF5 files, bad images, running the CLI, and the dashboard
as a real server for a real browser (the browser tests and benchmarks/bench_dashboard*.py use it)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from session_data import TRAINED_EPOCHS  # noqa: F401 (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
# Real PCam patches (CC0) committed with the tests: the same 160 patches in both layouts (tests/data/README.md).
REAL_KAGGLE = REPO / "tests" / "data" / "pcam-real-kaggle"
REAL_H5 = REPO / "tests" / "data" / "pcam-real-h5"
CV_ARGS = ("--folds", "2", "--epochs", "1", "--batch-size", "32", "--workers", "0")  # `cv_run`: 2 folds of 32 patches, one step each
CHROMIUM = "/usr/bin/chromium"  # Debian's; playwright drives it
# Chromium 156 also starts a renderer for its address bar's pop-up (a chrome:// page) with every new tab, even
# headless: 1.5 s of CPU taken from the app's server and page on a 2-core machine; no user's tab pays it there.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run",
                 "--disable-features=WebUIOmniboxPopup,WebUIOmniboxFullPopup,WebUIOmniboxAimPopup"]
# A page is drawn completely when its script has finished (Streamlit's script state on the app's root), no
# spinner (st.spinner, a cache's "Loading..." message) is left, no skeleton stands in for an element whose
# code the browser is still loading, every chart (pcam_app/components/chart.js) has drawn its plotly SVG and every
# image has loaded. A chart that failed shows its reason and never counts as drawn.
PAGE_DRAWN = """() => {
    const app = document.querySelector('[data-testid=stApp]');
    if (!app || app.dataset.testScriptState !== 'notRunning' || document.querySelector('[data-testid=stSpinner]')) return false;
    if (document.querySelector('[data-testid=stMain] [data-testid=stSkeleton]')) return false;
    const mounts = [...document.querySelectorAll('[data-testid=stMain] [data-testid^=stBidiComponent]')];
    if (mounts.some(m => !m.querySelector('.pcam-chart, .pcam-patch-links, .pcam-table, .pcam-slide'))) return false;  // an element's code not run yet
    const charts = [...document.querySelectorAll('[data-testid=stMain] .pcam-chart')];
    const images = [...document.querySelectorAll('[data-testid=stMain] img')];
    return charts.every(c => c.dataset.state === 'drawn' && c.querySelector('.main-svg'))
        && images.every(i => i.complete && i.naturalWidth > 0);
}"""


def bundled_weight_files() -> list[Path]:
    """The bundled model's weight files, whichever form ships (`pcam_core.bundled.is_ensemble`): the one model file,
    or each member's best.pt in ensemble.json's order. The first is a real single model to build run folders with."""
    from pcam_core.bundled import BUNDLED_DIR, bundled_checkpoint, is_ensemble

    if not is_ensemble():
        return [bundled_checkpoint()]
    from pcam_core.ensemble import member_runs
    from pcam_core.runs import RunDir

    return [member.best_checkpoint for member in member_runs(RunDir(BUNDLED_DIR))]


def bundled_single_state() -> dict[str, Any]:
    """A real single model's checkpoint payload, to make run folders with without training: the bundled model's
    (its first member's, when it is the ensemble), as an ordinary run's best.pt holds it: without the bundled
    record and with a member's fold settings cleared, so the run validates on its data's own split."""
    import torch

    state = torch.load(bundled_weight_files()[0], map_location="cpu", weights_only=True)
    state.pop("bundled", None)
    data = {k: v for k, v in state["config"]["data"].items() if k not in ("folds", "fold")}
    state["config"] = {**state["config"], "data": data}
    return state


def wait_for(predicate, timeout: float = 120, every: float = 0.2) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; returns whether it held."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


def write_official_h5(root: Path, split: str, images: np.ndarray, labels: np.ndarray | None, *, chunks=None,
                      compression=None, meta: pd.DataFrame | None = None) -> None:
    """Write a split the way the official files are laid out, with h5py directly (not our writer)."""
    root.mkdir(parents=True, exist_ok=True)
    stem = f"camelyonpatch_level_2_split_{split}"
    with h5py.File(root / f"{stem}_x.h5", "w") as f:
        f.create_dataset("x", data=images, chunks=chunks, compression=compression)
    if labels is not None:
        with h5py.File(root / f"{stem}_y.h5", "w") as f:
            f.create_dataset("y", data=labels.astype(np.uint8).reshape(-1, 1, 1, 1))
    if meta is not None:
        meta.to_csv(root / f"{stem}_meta.csv")


def random_patches(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m pcam_core ARGS` as a user would; returns the completed process (never raises)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pcam_core", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd or REPO)


def cli_here(capsys: Any, *args: str) -> subprocess.CompletedProcess:
    """`pcam ARGS` through the command's own entry point (`pcam_core.cli.main`) in this process, its output read from
    `capsys`: what `run_cli` gives without a new interpreter's 7-10 s of imports. For what a process of its own is not
    the subject of: a signal, a kill, a limit on the process, the console script itself still take `run_cli`."""
    from pcam_core.cli import main

    capsys.readouterr()  # only this command's output
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code if isinstance(exit_.code, int) else 2
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(["pcam", *args], code, printed.out, printed.err)


def tif_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="TIFF")
    return buf.getvalue()


def make_bad_images(folder: Path) -> dict[str, str]:
    """Write one file per kind of bad input into `folder`; returns {file name: the problem to expect}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    full = tif_bytes(good)
    cases = {
        "truncated.tif": (full[: len(full) // 2], "truncated or corrupt"),
        "corrupt.tif": (full[:200] + bytes(rng.integers(0, 256, 2000, dtype=np.uint8)), "truncated or corrupt"),
        "headless.tif": (full[:100], "a damaged or truncated TIFF file"),  # cut inside its directory: its header says TIFF
        "text.tif": (b"this is not an image, just text\n" * 20, "not an image"),
        "empty.tif": (b"", "an empty file (0 bytes)"),
        "small64.tif": (tif_bytes(good[:64, :64]), "64x64"),
        "big512.tif": (tif_bytes(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)), "512x512"),
        "gray.tif": (tif_bytes(good[..., 0], "L"), "mode"),
        "rgba.png": (_png(np.dstack([good, np.full((96, 96), 255, np.uint8)]), "RGBA"), "mode"),
        "sixteen.png": (_png16(), "mode"),
        "bomb.png": (_bomb(), "refused"),
    }
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    return {name: problem for name, (_, problem) in cases.items()}


def _png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _png16() -> bytes:
    arr = (np.arange(96 * 96, dtype=np.uint16).reshape(96, 96) * 7).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A PNG whose header claims 40000x40000 pixels (1.6 gigapixels): a 1x1 PNG with its IHDR rewritten."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", 40000, 40000)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    """End a server started with `start_new_session=True` and everything it started: SIGTERM to its process
    group, SIGKILL after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Dashboard:
    """`streamlit run streamlit_app.py` as a user starts it, on the workspace `workspace` (its output
    appended to `log`). `start` waits until it answers; `stop` ends it and nothing else: training runs
    it launched are separate processes and keep going. Start and stop it again for an app restart
    (the same port, so that the browser's URLs stay valid). `app` serves another script, run from its
    own folder (with the `.streamlit/config.toml` there)."""

    def __init__(self, workspace: Path, log: Path, *, port: int | None = None, env: dict[str, str] | None = None,
                 app: Path = REPO / "streamlit_app.py") -> None:
        self.workspace, self.log_path, self.app = Path(workspace), Path(log), Path(app)
        self.port = port or free_port()
        self.env = {**os.environ, "PCAM_WORKSPACE": str(workspace), **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> Dashboard:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", self.app.name, "--server.port", str(self.port),
                 "--server.headless", "true"],
                cwd=self.app.parent, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            if time.time() > deadline:
                raise TimeoutError(f"streamlit did not answer within {timeout:.0f} s")
            time.sleep(0.3)

    def stop(self) -> None:
        stop_process_group(self.proc)

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def script_dashboard(folder: Path, source: str, *, with_static: bool = True) -> Dashboard:
    """A `Dashboard` serving a one-file app `source` from `folder` (made here) with the dashboard's
    `.streamlit/config.toml` and, unless told otherwise, its static/ (the charts' plotly.js): the
    script imports `pcam_app` from this checkout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(source)
    shutil.copytree(REPO / ".streamlit", folder / ".streamlit")
    if with_static:
        shutil.copytree(REPO / "static", folder / "static")
    return Dashboard(folder, folder / "streamlit.log", app=folder / "app.py", env={"PYTHONPATH": str(REPO)})


def wait_rendered(page: Any, locator: Any, *, timeout_ms: float = 60_000) -> None:
    """Wait until `locator` (an element only the expected page shows) is visible and the page is drawn
    completely (`PAGE_DRAWN`)."""
    locator.first.wait_for(timeout=timeout_ms)
    page.wait_for_function(PAGE_DRAWN, timeout=timeout_ms, polling=50)


def running_run(root: Path, run_id: str, *, epochs: int = 3, best: dict[str, Any] | None = None) -> Path:
    """A run folder as a training process leaves it during its second epoch of `epochs`: status "running"
    with this (live) process as its trainer and a fresh heartbeat, one finished epoch in epochs.jsonl
    (the best so far, with `best`'s figures). Written as the trainer writes it, through the run folder."""
    from pcam_core.config import ExperimentConfig
    from pcam_core.fileio import append_jsonl, atomic_write_json
    from pcam_core.runs import create_run, process_start_time

    run = create_run(root, ExperimentConfig().replace(model={"name": "pcamnet"}, train={"epochs": epochs}), run_id=run_id)
    now = time.time()
    status = run.raw_status()
    status.update(state="running", pid=os.getpid(), pid_start=process_start_time(os.getpid()), host=socket.gethostname(),
                  started_at=now - 60, heartbeat=now, updated_at=now, epoch=1, epochs=epochs, step=30,
                  total_steps=20 * epochs, steps_per_epoch=20, model="pcamnet")
    atomic_write_json(run.status_path, status)
    append_jsonl(run.epochs_path, {"epoch": 1, "train_loss": 0.6, "loss": 0.5, "roc_auc": 0.7, "pr_auc": 0.6,
                                   "accuracy": 0.65, "f1": 0.6, "is_best": True, "epoch_seconds": 30.0, "time": now - 30,
                                   **(best or {})})
    return run.path


def analysed_demo_slide(root: Path, *, width: int, height: int, stride: int = 32, name: str = "demo") -> tuple[Path, Path, str]:
    """A SYNTHETIC demo slide of `width` x `height` pixels registered in the slide library of workspace `root`
    and analysed there with the bundled model (`pcam slide`'s engine, in this process): (slide file, analysis
    folder, slide id)."""
    from pcam_core.bundled import BUNDLED
    from pcam_core.scoring_options import ScoringOptions
    from pcam_core.slides.batch import analyse
    from pcam_core.slides.demo import DemoSlideSpec, make_demo_slide
    from pcam_core.workspace.slides import SlideLibrary

    make_demo_slide(root / "demo-slides" / name, DemoSlideSpec(width=width, height=height, seed=0))
    slide = root / "demo-slides" / name / "slide.tif"
    library = SlideLibrary(root)
    entry = library.add_file(slide)
    out = library.analysis_folder(entry.id, BUNDLED, stride=stride).path
    analyse(BUNDLED, slide, out, ScoringOptions(device="cpu", workers=0, tta=False), stride=stride)
    return slide, out, entry.id


def real_mosaic_slide(out: Path, *, cols: int = 24, rows: int = 16, tumour: tuple[int, int, int, int] | None = (4, 9, 6, 13),
                      seed: int = 0, size: tuple[int, int] | None = None) -> tuple[Path, dict[str, Any]]:
    """A slide assembled from the real PCam fixture patches (CC0, tests/data): `rows` x `cols` patches at PCam scale
    (0.972 µm/px) on glass, normal patches everywhere but in the block of patch rows [r0, r1) and columns [c0, c1) of
    `tumour` (None: a slide with no tumour at all), each patch drawn at random (flipped, rotated) from its class;
    a two-level pyramidal tiled TIFF that OpenSlide opens as generic-tiff. `size` (width, height) in pixels: the
    slide's exact size, as many patches as fit within a margin of one patch (then `cols`, `rows` are ignored). Returns (slide file, truth: the block in
    level-0 pixels and patches)."""
    from pcam_core.slides.mosaic import MARGIN, write_mosaic_slide

    table = pd.read_csv(REAL_KAGGLE / "train_labels.csv", dtype={"id": str})
    pixels = {label: [np.asarray(Image.open(REAL_KAGGLE / "train" / f"{i}.tif").convert("RGB"))
                      for i in table["id"][table["label"] == label]] for label in (0, 1)}
    if size is not None:
        cols, rows = (size[0] - 2 * MARGIN) // 96, (size[1] - 2 * MARGIN) // 96
    path = out / "slide.tif"
    written = write_mosaic_slide(path, pixels[0], pixels[1], rows=rows, cols=cols, lesions=[tumour] if tumour else [],
                                 seed=seed, size=size)
    truth = {"mpp": written["mpp"], "patches": [rows, cols], "tumour_patches": list(tumour) if tumour else None,
             "tumour_box": written["lesions"][0]["box"] if tumour else None}
    return path, truth


def analysed_real_slide(root: Path, *, stride: int = 32, name: str = "mosaic", mode: str | None = None,
                        **mosaic: Any) -> tuple[Path, Path, str]:
    """A slide of real lymph-node patches (`real_mosaic_slide`) registered in the slide library of workspace `root`
    and analysed there with the bundled model (in scope for it, unlike the SYNTHETIC demo slide), in `mode` (None:
    `pcam slide`'s default): (slide file, analysis folder, slide id)."""
    from pcam_core.bundled import BUNDLED
    from pcam_core.scoring_options import ScoringOptions
    from pcam_core.slides.batch import analyse
    from pcam_core.workspace.slides import SlideLibrary

    slide, _ = real_mosaic_slide(root / "real-slides" / name, **mosaic)
    library = SlideLibrary(root)
    entry = library.add_file(slide)
    out = library.analysis_folder(entry.id, BUNDLED, stride=stride).path
    analyse(BUNDLED, slide, out, ScoringOptions(device="cpu", workers=0, tta=False), stride=stride, mode=mode)
    return slide, out, entry.id


def mosaic_truth_geojson(path: Path, tumour: tuple[int, int, int, int] = (4, 9, 6, 13)) -> Path:
    """The truth of a `real_mosaic_slide` (its tumour block of patch rows [r0, r1) and columns [c0, c1), past a margin of
    one 96-px patch) as QuPath exports it, classified Tumor, written to `path`."""
    r0, r1, c0, c1 = tumour
    x0, y0, x1, y1 = 96 + 96 * c0, 96 + 96 * r0, 96 + 96 * c1, 96 + 96 * r1
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [ring]}, "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}]}))
    return path


def blind_probabilities(labels: np.ndarray) -> np.ndarray:
    """Probabilities that say nothing about `labels`: each class gets the same evenly spread values in 0.1-0.9."""
    probs = np.empty(len(labels))
    for cls in (0, 1):
        where = np.flatnonzero(labels == cls)
        probs[where] = 0.1 + 0.8 * (np.arange(where.size) + 0.5) / where.size
    return probs


def blind_validation(valid_predictions: Path) -> None:
    """Rewrite a run's validation predictions (its valid_predictions.csv) as `blind_probabilities`: its next
    calibration fit ends at the largest temperature, with a warning."""
    valid = pd.read_csv(valid_predictions)
    valid["probability"] = blind_probabilities(valid["label"].to_numpy())
    valid.to_csv(valid_predictions, index=False)


def model_name_params() -> list:
    """Every registered model's name as a test parameter; the largest ImageNet models (about a second each on a 2-core
    CPU) marked `slow`, outside the fast lane."""
    import pytest

    from pcam_core.models import model_names

    return [pytest.param(n, marks=pytest.mark.slow) if n in ("resnet50", "densenet121") else n for n in model_names()]
