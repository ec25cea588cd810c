"""The `pcam` command line end to end, as a user runs it: every command, and clean errors."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import REPO, cli_here, make_bad_images, run_cli, tif_bytes
from pcam_core.cli import EXIT_ERROR, main, make_parser
from pcam_core.config import AugmentConfig, DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from pcam_core.runs import RunDir, create_run


@pytest.mark.slow  # a Python process of its own
def test_python_dash_m_and_console_script_agree():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("pcam_core ")
    # The console script sits beside the interpreter of the environment the package is installed in
    # (the test command runs .venv/bin/python without activating the environment, so not on PATH).
    pcam = Path(sys.executable).with_name("pcam")
    assert pcam.is_file(), f"the `pcam` console script is installed with the package beside {sys.executable}"
    script = subprocess.run([str(pcam), "--version"], capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and script.stdout == result.stdout


@pytest.mark.slow  # a Python process of its own
def test_the_command_line_starts_without_loading_torch():
    """`pcam --help` and every parser load no model code: each command imports its engine when it runs."""
    code = "import sys, pcam_core.cli; pcam_core.cli.make_parser(); assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_resuming_a_folder_without_a_run_is_refused_before_torch_is_loaded(tmp_path):
    """`pcam train --resume` of a mistyped folder answers at once (it took 7 s to import the trainer first)."""
    code = ("import sys; from pcam_core.cli import main; code = main(['train', '--out', sys.argv[1], '--resume']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "typo")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"cannot resume: {tmp_path / 'typo'} is not a run folder (no config.json)" in done.stderr


@pytest.mark.slow
def test_end_to_end_on_demo_data(tmp_path, capsys):
    """As a user runs it. Training and predicting are processes of their own, as `pcam` starts them (the log lines on
    stderr, no progress bar off a terminal); the quick commands between them go through the same entry point here."""
    data = tmp_path / "demo"
    r = cli_here(capsys, "demo-data", "--out", str(data), "--train", "384", "--valid", "128", "--test", "128")
    assert r.returncode == 0, r.stderr
    assert "SYNTHETIC" in r.stdout
    r = cli_here(capsys, "verify", str(data))
    assert r.returncode == 0 and "all good" in r.stdout
    runs = tmp_path / "runs"
    create_run(runs, ExperimentConfig().replace(data={"path": str(data)}), run_id="older")  # as the dashboard makes one
    before = time.time()
    r = run_cli("train", "--data", str(data), "--out", str(runs / "a"), "--epochs", "2", "--batch-size", "32",
                "--workers", "0", "--model", "pcamnet")
    assert r.returncode == 0, r.stderr
    assert "finished a: 2 epochs" in r.stdout and "SYNTHETIC" in r.stdout
    assert "epoch 2/2: train loss" in r.stderr and "\r" not in r.stderr  # log lines, and no bar off a terminal
    assert before <= RunDir(runs / "a").raw_status()["created_at"] <= time.time()  # a CLI run has its creation time
    r = cli_here(capsys, "runs", "--root", str(runs), "--json")
    listing = json.loads(r.stdout)
    assert [run["run_id"] for run in listing] == ["a", "older"]  # newest first
    assert listing[0]["run_id"] == "a" and listing[0]["state"] == "finished" and listing[0]["best"]["roc_auc"] > 0.5
    r = cli_here(capsys, "runs", "--root", str(runs))
    assert "finished" in r.stdout and "pcamnet" in r.stdout
    r = cli_here(capsys, "evaluate", "--run", str(runs / "a"), "--data", str(data), "--split", "test", "--out", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    assert "ROC-AUC" in r.stdout and json.loads((tmp_path / "m.json").read_text())["metrics"]["n"] == 128
    assert (tmp_path / "m_predictions.csv").exists()
    r = run_cli("predict", "--run", str(runs / "a"), "--input", str(data), "--out", str(tmp_path / "sub.csv"), "--tta")
    assert r.returncode == 0, r.stderr
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["id", "label"] and len(sub) == 128
    r = cli_here(capsys, "stop", "--run", str(runs / "a"))
    assert r.returncode == 0 and "not running" in r.stdout


@pytest.mark.slow
def test_convert_then_train_on_the_fast_path(real_kaggle, tmp_path, capsys):
    """Kaggle's tifs converted to HDF5 (the fast path to read), verified, then trained on (in-process: no process
    boundary is under test here)."""
    h5 = tmp_path / "h5"
    assert main(["convert", "--input", str(real_kaggle), "--out", str(h5), "--valid-frac", "0.1", "--test-frac", "0.1"]) == 0
    assert "train 128, valid 16, test 16" in capsys.readouterr().out
    assert main(["verify", str(h5 / "camelyonpatch_level_2_split_test_x.h5")]) == 0
    assert main(["train", "--data", str(h5), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "32",
                 "--workers", "0"]) == 0
    run = RunDir(tmp_path / "run")
    assert run.status()["state"] == "finished" and run.checkpoint("best").exists()
    assert run.config().data.path == str(h5) and len(run.epochs()) == 1


@pytest.mark.slow
def test_verify_reports_bad_files_and_fails(tmp_path):
    bad = make_bad_images(tmp_path / "imgs")
    r = run_cli("verify", str(tmp_path / "imgs"), "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 1 and not report["ok"] and len(report["problems"]) == len(bad)
    said = {Path(p["file"]).name: p["problem"] for p in report["problems"]}
    assert all(problem in said[name] for name, problem in bad.items()), said  # each named for what is wrong with it


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "--data", "/nonexistent/data", "--out", "OUT"], "pcam demo-data --out /nonexistent/data"),
        (["train", "--out", "OUT"], "--data is required"),
        (["train", "--data", ".", "--out", "OUT", "--model", "vgg"], "valid models: pcamnet"),
        (["train", "--data", ".", "--out", "OUT", "--lr", "5"], "train.lr=5.0 is out of range"),
        (["predict", "--run", "/nonexistent/run", "--input", ".", "--out", "/tmp/x.csv"], "run folder not found"),
        (["predict", "--run", ".", "--input", ".", "--out", "/tmp/x.csv", "--shard", "3/2"], "need 0 <= i < n"),
        (["evaluate", "--run", "/nonexistent/run", "--data", ".", "--out", "/tmp/m.json"], "run folder not found"),
        (["convert", "--input", "/nonexistent", "--out", "/tmp/h"], "Kaggle split 'train' not found"),
        (["verify", "/nonexistent"], "data path not found"),
    ],
)
def test_errors_are_one_clear_line_without_traceback(args, expected, capsys, tmp_path):
    out = tmp_path / "run"
    args = [str(out) if a == "OUT" else a for a in args]
    assert main(args) == 2  # what the `pcam` console script calls, in-process to save start-up time
    assert not out.exists()  # a refused command leaves nothing behind
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1
    assert expected in err, err


def test_predict_a_folder_with_a_bad_image_names_it(tmp_path, capsys):
    cases = make_bad_images(tmp_path / "imgs")
    for convertible in ("gray.tif", "rgba.png", "sixteen.png"):  # converted, not bad (as the Predict page does)
        (tmp_path / "imgs" / convertible).unlink()
    args = ["predict", "--run", "bundled", "--input", str(tmp_path / "imgs"), "--out", str(tmp_path / "s.csv"), "--workers", "0",
            "--no-tta", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and str(tmp_path / "imgs") in err
    assert err.rstrip().endswith("nothing was written (--skip-bad scores the rest and lists every bad file)")
    assert not (tmp_path / "s.csv").exists()
    assert main([*args, "--skip-bad"]) == 2
    assert f"none of the {len(cases) - 3} image(s) could be read" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.slow  # the 5-member ensemble scores 5 patches with its guard: 2-3 s
def test_two_files_of_one_id_are_refused_or_the_second_listed_and_out_of_scope_referrals_are_counted(tmp_path, capsys):
    """a.tif and a.png would be two rows of id "a" in a Kaggle submission (QA: written without a word): refused,
    or with --skip-bad the second listed as skipped. The triage line counts the referrals that were out of scope
    (a blank patch), which a crossed triage did not explain ("nothing referred", then "1 referred")."""
    from PIL import Image

    real = sorted((REPO / "tests" / "data" / "pcam-real-kaggle" / "train").glob("*.tif"))[:3]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k, path in enumerate(real):
        (folder / f"p{k}.tif").write_bytes(path.read_bytes())
    Image.open(real[0]).save(folder / "p0.png")  # the same patch, the same id
    Image.new("RGB", (96, 96), "white").save(folder / "blank.png")  # glass: out of scope
    out = tmp_path / "s.csv"
    args = ["predict", "--run", "bundled", "--input", str(folder), "--out", str(out), "--workers", "0", "--no-tta",
            "--device", "cpu", "--results", str(tmp_path / "r.csv"), "--triage", "0.98"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 file(s) share their id with another: p0.tif: same id 'p0' as p0.png" in err and "--skip-bad" in err
    assert not out.exists()
    assert main([*args, "--skip-bad"]) == 0
    printed = capsys.readouterr()
    frame = pd.read_csv(out, dtype={"id": str})
    assert sorted(frame["id"]) == ["blank", "p0", "p1", "p2"]  # one row per id: the first file of each (p0.png)
    assert "skipped 1 image(s)" in printed.err and "p0.tif: same id 'p0' as p0.png" in printed.err
    results = pd.read_csv(tmp_path / "r.csv", dtype={"id": str}).set_index("id")
    assert not results.loc["blank", "in_scope"] and results.loc["blank", "call"] == "refer"
    refer = int((results["call"] == "refer").sum())
    assert re.search(rf"referral rate [\d.]+%: {refer} referred \({int((~results['in_scope']).sum())} of them out of scope\)",
                     printed.out), printed.out


def test_runs_on_a_missing_folder_is_an_error_and_an_empty_one_is_not(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    for extra in ([], ["--json"]):
        assert main(["runs", "--root", str(missing), *extra]) == EXIT_ERROR
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.strip() == (f"error: runs folder not found: {missing} (--root names the "
                                                               "folder that holds your run folders: for `pcam train --out "
                                                               "runs/first`, --root runs)")
    (tmp_path / "empty").mkdir()
    assert main(["runs", "--root", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out.strip() == f"no runs in {tmp_path / 'empty'}"
    assert main(["runs", "--root", str(tmp_path / "empty"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def _train_help_actions() -> dict[str, object]:
    sub = next(a for a in make_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices["train"]._actions}


def test_train_help_shows_every_default_from_the_config_dataclasses(capsys, monkeypatch):
    actions = _train_help_actions()
    sections = [DataConfig(), AugmentConfig(), ModelConfig(), TrainConfig()]
    checked = 0
    for section in sections:
        for f in fields(section):
            # flags are named after the fields (dest), but for --model (model.name; --name is the run's label)
            action = actions["model"] if isinstance(section, ModelConfig) and f.name == "name" else actions.get(f.name)
            if action is None:
                continue
            value = getattr(section, f.name)
            if value is None:  # a rule rather than a value ("negatives/positives", "on CUDA only", "none")
                assert "(default: " in action.help, action.option_strings
            else:
                assert f"(default: {value})" in action.help, (action.option_strings, action.help)
            checked += 1
    assert actions["ema_decay"].help.endswith(f"(default: {TrainConfig().ema_decay})")
    assert checked >= 20
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert f"{TrainConfig().epochs} epochs" in text and "30 epochs" not in text
    for default in (f"(default: {TrainConfig().epochs})", f"(default: {TrainConfig().lr})", f"(default: {TrainConfig().seed})",
                    f"(default: {TrainConfig().batch_size})"):
        assert default in text


@pytest.mark.slow
def test_resume_refuses_flags_it_cannot_honour(tmp_path, capsys):
    """In this process (the refusal is the parser's and the run folder's, no process boundary is under test)."""
    run = create_run(tmp_path, ExperimentConfig().replace(data={"path": str(tmp_path)}), run_id="r")
    status = run.raw_status()
    for args, named in [
        (["--lr", "0.1", "--model", "resnet18"], "--model, --lr"),
        (["--batch-size", "8"], "--batch-size"),
        (["--data", str(tmp_path)], "--data"),
        (["--no-augment"], "--no-augment"),
        (["--config", str(tmp_path / "other.json")], "--config"),
    ]:
        code, err = main(["train", "--out", str(run.path), "--resume", *args]), capsys.readouterr().err
        assert code == 2 and f"cannot change {named}" in err and "only --epochs" in err, err
    assert run.raw_status() == status  # nothing touched


def _kaggle(root: Path, n: int = 48) -> None:
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    ids = [f"img{i:03d}" for i in range(n)]
    for i in ids:
        (root / "train" / f"{i}.tif").write_bytes(tif_bytes(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)))
    pd.DataFrame({"id": ids, "label": [i % 2 for i in range(n)]}).to_csv(root / "train_labels.csv", index=False)


@pytest.mark.slow
def test_data_error_leaves_no_run_folder_and_the_same_out_works_once_fixed(tmp_path, capsys):
    data, out = tmp_path / "kaggle", tmp_path / "runs" / "r"
    _kaggle(data)
    labels = pd.read_csv(data / "train_labels.csv")
    labels.iloc[1:].to_csv(data / "train_labels.csv", index=False)  # img000 has no label
    args = ["--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--workers", "0", "--max-steps", "2",
            "--valid-frac", "0.25"]
    r = cli_here(capsys, "train", *args)
    assert r.returncode == 2 and "train_labels.csv" in r.stderr and "img000" in r.stderr, r.stderr
    assert not out.exists()  # no failed run folder left behind
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2 and not out.exists()
    labels.to_csv(data / "train_labels.csv", index=False)
    r = cli_here(capsys, "train", *args)
    assert r.returncode == 0, r.stderr
    assert RunDir(out).status()["state"] == "finished"


@pytest.mark.slow
def test_train_on_a_terminal_shows_a_progress_bar(small_demo, tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 150, 0, 0))  # a terminal 150 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "pcam_core", "train", "--data", str(small_demo), "--out", str(tmp_path / "r"),
                             "--epochs", "1", "--batch-size", "32", "--workers", "0", "--max-steps", "6"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    err = b"".join(chunks).decode(errors="replace")
    assert "epoch 1/1" in err and "img/s" in err, err
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", err), err  # time spent < time left
    assert "epoch 1/1: train loss" in err  # the log lines still appear with the bar


# -- defects a new user hit (issue 20), in-process with the bundled model: no training --------------------------

def _real_patches(real_kaggle: Path, n: int, folder: Path) -> pd.DataFrame:
    """The first n/2 tumour and n/2 normal real patches copied into a Kaggle layout `folder` (train/ + labels)."""
    labels = pd.read_csv(real_kaggle / "train_labels.csv")
    chosen = pd.concat([labels[labels["label"] == 1].head(n // 2), labels[labels["label"] == 0].head(n - n // 2)])
    (folder / "train").mkdir(parents=True)
    for pid in chosen["id"]:
        (folder / "train" / f"{pid}.tif").write_bytes((real_kaggle / "train" / f"{pid}.tif").read_bytes())
    chosen.to_csv(folder / "train_labels.csv", index=False)
    return chosen


def test_predict_takes_one_grayscale_file_and_converts_it_as_the_predict_page_does(real_kaggle, tmp_path, capsys):
    from PIL import Image

    from pcam_core.loading import load_run_model
    from pcam_core.predict import results_table, score_uploads

    first = sorted((real_kaggle / "train").iterdir())[0]
    gray = tmp_path / "gray.png"
    Image.open(first).convert("L").save(gray)
    out, results = tmp_path / "sub.csv", tmp_path / "results.csv"
    assert main(["predict", "--run", "bundled", "--input", str(gray), "--out", str(out), "--results", str(results),
                 "--workers", "0", "--no-tta", "--device", "cpu"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "1 image(s) converted to 8-bit RGB" in err and "grayscale" in err
    row = pd.read_csv(results).iloc[0]
    assert row["id"] == "gray" and "grayscale" in row["notes"]
    # the Predict page's engine (uploads) converts the same file to the same pixels, so the same probability and call
    loaded = load_run_model("bundled", device="cpu")
    uploaded = score_uploads(loaded.model, [("gray.png", gray.read_bytes())], scope=loaded.scope)
    page = uploaded.scored[0]
    assert row["probability"] == pytest.approx(page.probability, abs=1e-6)
    # the same call: a grey patch is unlike H&E, so the guard refers it on both faces
    assert row["call"] == results_table(uploaded, loaded.threshold, model="pcamnet", run="bundled")["call"].iloc[0] == "refer"
    assert not row["in_scope"] and page.in_scope is False
    assert row["threshold"] == pytest.approx(loaded.threshold)


def test_a_missing_input_is_said_not_to_exist(tmp_path, capsys):
    assert main(["predict", "--run", "bundled", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'missing'} does not exist" in err and "demo-data" not in err
    assert main(["explain", "--run", "bundled", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "e")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_unknown_split_of_kaggle_data_lists_valid_too(real_kaggle, capsys):
    assert main(["evaluate", "--run", "bundled", "--data", str(real_kaggle), "--split", "foo", "--out", "/tmp/never.json",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown split 'foo'" in err and "train, valid" in err and "test" in err


@pytest.mark.slow
def test_evaluate_on_8_patches_gives_an_interval_that_does_not_collapse_and_warns(real_kaggle, tmp_path, capsys):
    _real_patches(real_kaggle, 8, tmp_path / "eight")
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", "bundled", "--data", str(tmp_path / "eight"), "--split", "train", "--out", str(out),
                 "--no-tta", "--workers", "0", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "warning: only 8 patch(es)" in captured.err
    report = json.loads(out.read_text())
    auc = report["intervals"]["roc_auc"]
    assert auc["low"] < auc["high"] and auc["low"] < 0.9, auc  # 8 patches cannot pin an AUC down
    assert report["warnings"] and "ROC-AUC" in captured.out and "(1.000-1.000)" not in captured.out


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_evaluate_takes_a_threshold_number_or_a_method(real_kaggle, tmp_path, capsys):
    from pcam_core.loading import run_threshold

    _real_patches(real_kaggle, 8, tmp_path / "eight")
    base = ["evaluate", "--run", "bundled", "--data", str(tmp_path / "eight"), "--split", "train", "--no-tta", "--workers", "0",
            "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "own.json")]) == 0
    assert json.loads((tmp_path / "own.json").read_text())["metrics"]["threshold"] == pytest.approx(run_threshold("bundled"))
    assert main([*base, "--out", str(tmp_path / "fixed.json"), "--threshold", "0.3"]) == 0
    assert json.loads((tmp_path / "fixed.json").read_text())["metrics"]["threshold"] == pytest.approx(0.3)
    assert main([*base, "--out", str(tmp_path / "s.json"), "--threshold-method", "sensitivity", "--target-sensitivity", "0.9"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["threshold_target"] == 0.9
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "x.json"), "--threshold", "1.5"]) == 2
    assert "threshold=1.5 must be a probability between 0 and 1" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x.json"), "--threshold-method", "sensitivity"]) == 2
    assert "needs its target sensitivity" in capsys.readouterr().err


def test_shared_options_have_one_default_and_one_meaning_everywhere():
    from pcam_core.scoring_options import EXPLAIN_BATCH_SIZE

    sub = next(a for a in make_parser()._actions if a.dest == "command")
    seen: dict[str, set] = {}
    for name, parser in sub.choices.items():
        if name == "train":  # its flags feed the experiment config (None: the config's value)
            continue
        for action in parser._actions:
            if action.dest in ("tta", "device", "checkpoint", "workers", "threshold", "batch_size"):
                seen.setdefault(action.dest, set()).add((action.help, parser.get_default(action.dest)))
    assert {dest: len(variants) for dest, variants in seen.items()} == {
        "tta": 2, "device": 1, "checkpoint": 1, "workers": 1, "threshold": 1, "batch_size": 2}
    # patches: 8 symmetries by default; slides: one pass (every pixel is already in nine windows at stride 32)
    assert {default for _, default in seen["tta"]} == {True, False} and {default for _, default in seen["threshold"]} == {None}
    assert sub.choices["slide"].get_default("tta") is False and sub.choices["predict"].get_default("tta") is True
    assert {default for _, default in seen["batch_size"]} == {256, EXPLAIN_BATCH_SIZE}  # maps keep every gradient
    for command in ("evaluate", "predict", "compare", "robustness", "slide"):
        assert "--no-tta" in sub.choices[command].format_help()


def test_a_damaged_checkpoint_is_said_to_be_damaged_and_last_is_offered(tmp_path, capsys):
    from helpers import bundled_weight_files

    run = create_run(tmp_path, ExperimentConfig().replace(data={"path": str(tmp_path)}), run_id="r")
    run.checkpoints.mkdir()
    whole = bundled_weight_files()[0].read_bytes()
    run.last_checkpoint.write_bytes(whole)
    for damage in (whole[: len(whole) // 2], b"\0" * 1000, b"hello world"):
        run.best_checkpoint.write_bytes(damage)
        assert main(["predict", "--run", str(run.path), "--input", str(tmp_path), "--out", str(tmp_path / "s.csv")]) == 2
        err = capsys.readouterr().err
        assert "damaged" in err and "--checkpoint last" in err and "weights_only" not in err, err
        assert err.count("\n") == 1


def test_resuming_a_finished_run_says_it_is_finished_and_how_to_extend_it(tmp_path, capsys):
    from pcam_core.fileio import atomic_write_json

    run = create_run(tmp_path, ExperimentConfig().replace(data={"path": str(tmp_path)}, train={"epochs": 3}), run_id="done")
    atomic_write_json(run.status_path, {**run.raw_status(), "state": "finished", "epoch": 3, "message": "finished (finished)"})
    assert main(["train", "--out", str(run.path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "has finished training (3 of 3 epoch(s))" in err and "--resume --epochs 4" in err
    assert run.raw_status()["state"] == "finished"


def test_serve_on_a_busy_port_fails_before_saying_serving(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--run", "bundled", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and "serving" not in err


def test_progress_lines_off_a_terminal_say_the_rate_and_the_time_left(monkeypatch, capsys):
    from pcam_core.cli import common

    monkeypatch.setattr(common, "PROGRESS_EVERY", 0.0)
    with common.progress_bar(1000, "epoch 1/2", unit="img") as bar:  # capsys: stderr is no terminal
        bar.set_postfix_str("loss 0.5000")
        time.sleep(0.01)
        bar.update(250)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("epoch 1/2: 250/1,000 img (25%)") and "img/s" in line and "left" in line and "loss 0.5000" in line
    monkeypatch.setattr(common, "PROGRESS_EVERY", 3600.0)
    with common.progress_bar(1000, "quiet") as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""  # throttled: no line before the interval


@pytest.mark.slow  # a few seconds of CPU: outside the fast lane
def test_pcam_slide_reports_progress_with_the_time_left(tmp_path, monkeypatch, capsys):
    from pcam_core.cli import common

    assert main(["demo-slide", "--out", str(tmp_path / "s"), "--size", "3000x2400"]) == 0
    monkeypatch.setattr(common, "PROGRESS_EVERY", 0.0)
    capsys.readouterr()
    assert main(["slide", "--run", "bundled", "--input", str(tmp_path / "s" / "slide.tif"), "--out", str(tmp_path / "a"),
                 "--stride", "96", "--no-tta", "--workers", "0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"slide\.tif: [\d,]+/[\d,]+ win \(\d+%\), [\d.,]+ win/s, about \d\d:\d\d left", err), err


@pytest.mark.slow
def test_train_off_a_terminal_reports_progress_inside_an_epoch(demo_root, tmp_path, monkeypatch, capsys):
    from pcam_core.cli import common

    monkeypatch.setattr(common, "PROGRESS_EVERY", 0.0)
    assert main(["train", "--data", str(demo_root), "--out", str(tmp_path / "r"), "--epochs", "1", "--batch-size", "32",
                 "--workers", "0", "--max-steps", "4"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"epoch 1/1: [\d,]+/[\d,]+ img \(\d+%\), [\d.,]+ img/s, about \d\d:\d\d left, loss \d", err), err
