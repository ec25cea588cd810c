"""pcam_core.serve without a server: the micro-batcher, the slides folder's guard, the CLI's defaults, the
request models and the schema's words for rules that live elsewhere, the OpenMP wait policy. The live server
(and schemathesis against it) is tested in tests/e2e/test_serve.py (pytest needs the two files named apart)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from pcam_core.cli import SERVE_DEFAULTS, SERVE_TOKEN_ENV, make_parser
from pcam_core.decision import check_threshold
from pcam_core.serve import TOKEN_ENV, ApiError, Limits, MicroBatcher, resolve_slide
from pcam_core.serve.schema import MPP_RANGE, SLIDE_PATH_PATTERN, THRESHOLD_RANGE, PredictQuery, SlideRequest, SlideSummary
from pcam_core.slides.folder import AnalysisFolder
from pcam_core.slides.reader import SLIDE_SUFFIXES

REPO = Path(__file__).resolve().parents[1]


def test_the_batcher_scores_concurrent_requests_together_and_returns_each_its_own():
    seen: list[int] = []

    def score(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return batch.reshape(len(batch), -1)[:, 0].astype(np.float64)  # each patch's first pixel: tells them apart

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(score, max_batch=64, wait_s=0.05)
        batcher.start()
        requests = [np.full((1 + i % 3, 96, 96, 3), i, np.uint8) for i in range(20)]
        try:
            return await asyncio.gather(*(batcher.submit(r) for r in requests))
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    for i, probs in enumerate(results):
        assert probs.tolist() == [float(i)] * (1 + i % 3)
    assert sum(seen) == sum(1 + i % 3 for i in range(20)) and len(seen) < 20 and max(seen) <= 64


def test_the_batcher_caps_a_pass_and_reports_a_failure_to_its_requests():
    calls: list[int] = []

    def score(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if batch[0, 0, 0, 0] == 99:
            raise ValueError("bad batch")
        return np.zeros(len(batch))

    async def main():
        batcher = MicroBatcher(score, max_batch=4, wait_s=0.05)
        batcher.start()
        try:
            ok = await asyncio.gather(*(batcher.submit(np.zeros((2, 96, 96, 3), np.uint8)) for _ in range(4)))
            with pytest.raises(ValueError, match="bad batch"):
                await batcher.submit(np.full((1, 96, 96, 3), 99, np.uint8))
            again = await batcher.submit(np.zeros((1, 96, 96, 3), np.uint8))  # the loop goes on
            return ok, again
        finally:
            await batcher.stop()

    ok, again = asyncio.run(main())
    assert [len(p) for p in ok] == [2, 2, 2, 2] and len(again) == 1
    assert max(calls) <= 4


def test_resolve_slide_keeps_to_the_slides_folder(tmp_path: Path):
    root = tmp_path / "slides"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.svs").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    outside = tmp_path / "outside.svs"
    outside.write_bytes(b"x")
    (root / "link.svs").symlink_to(outside)
    (root / "inner.svs").symlink_to(root / "sub" / "a.svs")  # a link that stays inside is fine
    assert resolve_slide(root, "sub/a.svs") == (root / "sub" / "a.svs").resolve()
    assert resolve_slide(root, "inner.svs") == (root / "sub" / "a.svs").resolve()
    for name, status, words in (("../outside.svs", 400, "outside"), ("link.svs", 400, "outside"),
                                (str(outside), 400, "absolute"), ("sub/../../outside.svs", 400, "outside"),
                                ("", 400, "relative"), ("a\x00.svs", 400, "relative"), ("nope.svs", 404, "not found"),
                                ("sub", 404, "a folder, not one slide"), ("notes.txt", 404, "slide file type")):
        with pytest.raises(ApiError, match=words) as caught:
            resolve_slide(root, name)
        assert caught.value.status == status, name


def test_limits_are_checked_and_the_cli_defaults_are_the_libraries():
    assert {k: v for k, v in asdict(Limits()).items() if k in SERVE_DEFAULTS} == SERVE_DEFAULTS
    assert SERVE_TOKEN_ENV == TOKEN_ENV
    args = make_parser().parse_args(["serve", "--run", "r"])
    assert args.host == "127.0.0.1" and args.token is None
    assert {k: getattr(args, k) for k in SERVE_DEFAULTS} == SERVE_DEFAULTS
    for bad in ({"max_file_mb": 0}, {"max_request_mb": -1}, {"max_batch": 0}, {"batch_wait_ms": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Limits(**bad)


def test_the_schemas_threshold_range_is_decisions():
    """The schema states the range `decision.check_threshold` keeps, and the requests call it."""
    low, high = THRESHOLD_RANGE["minimum"], THRESHOLD_RANGE["maximum"]
    assert check_threshold(low) == low and check_threshold(high) == high
    for outside in (low - 1e-9, high + 1e-9, float("nan")):
        with pytest.raises(ValueError):
            check_threshold(outside)
        for model, fields in ((PredictQuery, {}), (SlideRequest, {"path": "a.svs"})):
            with pytest.raises(ValueError, match="between 0 and 1"):
                model(threshold=outside, **fields)
    assert PredictQuery().threshold is None and SlideRequest(path="a.svs").threshold is None  # None: the run's own


def test_requests_refuse_unknown_fields_and_check_mpp():
    with pytest.raises(ValueError, match="extra"):
        SlideRequest(path="a.svs", strides=96)
    with pytest.raises(ValueError, match="extra"):
        PredictQuery(thresold=0.3)
    assert SlideRequest(path="a.svs", mpp=0.25).mpp == 0.25
    for bad in (0, -0.25, MPP_RANGE[0] / 2, MPP_RANGE[1] * 2):
        with pytest.raises(ValueError, match="mpp"):
            SlideRequest(path="a.svs", mpp=bad)
    with pytest.raises(ValueError, match="stride"):
        SlideRequest(path="a.svs", stride=64)
    with pytest.raises(ValueError, match="path"):
        SlideRequest(path="")


def test_the_path_pattern_describes_what_resolve_slide_takes(tmp_path: Path):
    """A name the schema's pattern refuses is refused by `resolve_slide` too (with its own words), and the
    pattern lets through the relative slide names that exist."""
    pattern = re.compile(SLIDE_PATH_PATTERN)
    (tmp_path / "case 1").mkdir()
    for suffix in SLIDE_SUFFIXES:
        (tmp_path / "case 1" / f"s{suffix.upper()}").write_bytes(b"x")
        name = f"case 1/s{suffix.upper()}"
        assert pattern.match(name) and resolve_slide(tmp_path, name), name
    assert pattern.match("./case 1/.hidden.svs") and pattern.match("..a/b..svs")
    for bad in ("/etc/x.svs", "../x.svs", "a/../../x.svs", "a/..", "a\x00.svs", "a//b.svs", ""):
        assert not pattern.match(bad), bad
        if bad != "a//b.svs":  # (an empty segment is harmless, just not the canonical form)
            with pytest.raises(ApiError):
                resolve_slide(tmp_path, bad)
    (tmp_path / "x.txt").write_text("no slide")
    for name, status, words in (("x.txt", 404, "not a slide file type"), ("case 1", 404, "a folder, not one slide")):
        assert pattern.match(name)  # a name the server checks itself, and refuses saying why
        with pytest.raises(ApiError, match=words) as caught:
            resolve_slide(tmp_path, name)
        assert caught.value.status == status
    shutil.copytree(REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region-dicom", tmp_path / "scan")
    assert pattern.match("scan") and resolve_slide(tmp_path, "scan") == (tmp_path / "scan").resolve()  # a DICOM series
    with pytest.raises(ApiError) as caught:
        resolve_slide(tmp_path, "x" * 300 + ".svs")  # too long for the file system: no such file, not a crash
    assert caught.value.status == 404


def test_a_summary_keeps_no_server_paths():
    record = {"slide": "/srv/slides/a.svs", "checkpoint": "/srv/runs/r/best.pt", "model": "pcamnet", "checkpoint_epoch": 3,
              "threshold": 0.4, "stride": 96, "tta": False, "mpp": 0.25, "windows_scored": 7, "cells_scored": 7,
              "cells_at_threshold": 1, "cells_unreadable": 0, "slide_score": 0.9, "slide_topk_mean": 0.5, "top_k": 10,
              "regions": 1, "tumour_area_mm2": 0.01, "largest_diameter_mm": 0.1, "size_class": "micro", "seconds": 1.5,
              "region_list": [{"name": "tumour region 1", "cells": 1, "area_mm2": 0.01, "longest_diameter_mm": 0.1,
                               "max_probability": 0.9, "centroid_x": 10.0, "centroid_y": 20.0, "objectType": "annotation"}],
              "skipped_regions": [{"tile": 0, "cells": [0, 1, 0, 1], "unreadable_cells": 2, "x": 0, "y": 0, "width": 96,
                                   "height": 96, "error": "/srv/slides/a.svs: cannot read"}],
              "slide_info": {"width": 1000, "height": 800, "path": "/srv/slides/a.svs"}, "lattice": "cell (i, j) = ...",
              "scope": {"in_scope": True, "out_of_scope_fraction": 0.01, "cells_out_of_scope": 0, "reason": "In scope: ...",
                        "checked": True, "guard": {"fitted_on": "/srv/data"}, "mpp": 0.25, "mpp_source": "given", "line": "..."}}
    summary = SlideSummary.from_record(record, "a.svs").model_dump_json()
    assert "/srv" not in summary and "lattice" not in summary and "objectType" not in summary and "guard" not in summary
    assert SlideSummary.from_record(record, "a.svs").width == 1000


def test_progress_gives_fraction_and_time_left(tmp_path: Path):
    folder = AnalysisFolder(tmp_path)
    assert folder.progress().fraction == 0 and folder.progress().seconds_left is None
    folder.progress_json.write_text('{"windows": 25, "windows_total": 100, "seconds": 5.0, "params": {"slide": "/srv/x"}}')
    progress = folder.progress()
    assert (progress.windows_done, progress.windows_total, progress.fraction) == (25, 100, 0.25)
    assert progress.windows_per_s == 5.0 and progress.seconds_left == 15.0


@pytest.mark.slow  # a Python process of its own
def test_the_server_lets_openmp_wait_passively_unless_told_otherwise():
    """Defect 17: OMP_WAIT_POLICY is set as training launches set it, before torch (and OpenMP) load; a
    policy in the environment is kept. (The live server reports it in /v1/model: tests/e2e/test_serve.py.)"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    probe = ("import os, sys; from pcam_core.serve import prefer_passive_openmp as p; os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'; "
             "kept = p(); del os.environ['OMP_WAIT_POLICY']; print(kept, p(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ACTIVE", "PASSIVE", "False"]  # and importing the server did not load torch
