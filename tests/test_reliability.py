"""Faults caused for real: kill -9, racing trainers, hostile checkpoints, random bytes and arrays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import REPO, cli_here, run_cli, wait_for
from pcam_core.config import ExperimentConfig
from pcam_core.data import DataError, PCamH5, decode_image, read_labels_csv
from pcam_core.runs import RunDir, create_run, launch

pytestmark = pytest.mark.slow  # every test here trains or kills a training process


def test_kill_9_mid_epoch_is_seen_and_resumed_with_every_epoch_once(small_demo, tmp_path, capsys):
    # three epochs of 24 steps (384 patches, batch 16)
    config = ExperimentConfig().replace(data={"path": str(small_demo), "num_workers": 0}, train={"batch_size": 16, "epochs": 3})
    run = create_run(tmp_path, config, run_id="victim")
    proc = launch(run)
    assert wait_for(lambda: len(run.epochs()) == 1 and run.steps() and run.steps()[-1]["step"] >= 34, timeout=180)
    os.kill(run.status()["pid"], signal.SIGKILL)  # mid-epoch 2, no chance to save anything
    proc.wait(timeout=30)
    killed_at = time.time()
    assert wait_for(lambda: run.status()["state"] == "interrupted", timeout=10)
    assert time.time() - killed_at < 10
    listing = json.loads(cli_here(capsys, "runs", "--root", str(tmp_path), "--json").stdout)
    assert listing[0]["state"] == "interrupted"
    proc = launch(run, resume=True)
    assert proc.wait(timeout=600) == 0, run.log_tail(console=True)
    assert run.status()["state"] == "finished"
    assert [e["epoch"] for e in run.epochs()] == [1, 2, 3]  # the half-done epoch 2 is not counted twice
    steps = [s["step"] for s in run.steps()]
    assert steps == sorted(set(steps)) == list(range(10, 72, 10))  # every logged step once
    assert run.summary()["global_step"] == 72


def test_two_trainers_on_one_folder_at_the_same_moment(small_demo, tmp_path):
    out = tmp_path / "contested"
    args = [sys.executable, "-m", "pcam_core", "train", "--data", str(small_demo), "--out", str(out), "--epochs", "1",
            "--batch-size", "32", "--workers", "0", "--max-steps", "6"]
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    # the loser names the folder and why: the lock is held (its holder's pid, when already written) or the
    # folder was already filled by the winner
    assert str(out) in loser and ("is being trained by" in loser or "not empty" in loser), loser
    assert RunDir(out).status()["state"] == "finished"


def test_hostile_checkpoint_in_a_run_folder_is_refused_by_predict(trained_run, tmp_path, capsys):
    marker = tmp_path / "owned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "hostile-run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"format": "pcam_core.checkpoint/1", "model": Payload()}, run / "checkpoints" / "best.pt")
    r = cli_here(capsys, "predict", "--run", str(run), "--input", str(trained_run), "--out", str(tmp_path / "s.csv"))
    assert r.returncode == 2 and "refused" in r.stderr and "would run code" in r.stderr and "Traceback" not in r.stderr
    assert "weights_only=False" not in r.stderr  # torch's advice to load it anyway is never passed on
    assert not marker.exists()


# -- property-based: random input never escapes as anything but a clear DataError --------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_to_the_image_reader(data):
    for convert in (False, True):
        try:
            out = decode_image(data, name="upload.tif", convert=convert)
        except DataError as err:
            assert str(err).startswith("upload.tif: ")
        else:
            assert out.pixels.shape == (96, 96, 3) and out.pixels.dtype == np.uint8


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["PNG", "TIFF", "JPEG", "BMP"]), st.integers(1, 200), st.integers(1, 200),
       st.sampled_from(["RGB", "L", "RGBA", "I;16", "1", "P", "CMYK"]), st.integers(0, 2**32 - 1))
def test_random_images_to_the_upload_path(fmt, w, h, mode, seed):
    from PIL import Image
    import io

    rng = np.random.default_rng(seed)
    try:
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # a combination Pillow will not write
    try:
        out = decode_image(buf.getvalue(), name="x", convert=True)
    except DataError as err:
        assert str(err).startswith("x: ")
        assert (w, h) != (96, 96) or "not an image" in str(err) or "corrupt" in str(err) or "mode" in str(err)
    else:
        assert (w, h) == (96, 96) and out.pixels.shape == (96, 96, 3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(hnp.arrays(dtype=st.sampled_from([np.uint8, np.int16, np.float32]),
                  shape=hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=8)),
       hnp.arrays(dtype=st.sampled_from([np.uint8, np.float64]), shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=4)))
def test_random_arrays_to_the_hdf5_reader(x, y):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with h5py.File(root / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
            f.create_dataset("x", data=x)
        with h5py.File(root / "camelyonpatch_level_2_split_test_y.h5", "w") as f:
            f.create_dataset("y", data=y)
        try:
            ds = PCamH5(root, "test")
        except DataError as err:
            assert "camelyonpatch_level_2_split_test_" in str(err)
        else:
            assert len(ds) == x.shape[0]
            assert ds.read_pixels([0]).shape == (1, 96, 96, 3)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_random_text_to_the_labels_reader(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train_labels.csv"
        path.write_text(text)
        try:
            frame = read_labels_csv(path)
        except DataError as err:
            assert str(path) in str(err)
        else:
            assert list(frame.columns) == ["id", "label"] and frame["label"].isin([0, 1]).all() and frame["id"].is_unique
