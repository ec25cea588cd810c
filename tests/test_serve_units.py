"""pcam_core.serve without a server: the micro-batcher, the slides folder's guard, the CLI's defaults.
The live server is tested in tests/e2e/test_serve.py (pytest needs the two files named apart)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from pcam_core.cli import SERVE_DEFAULTS, SERVE_TOKEN_ENV, make_parser
from pcam_core.serve import TOKEN_ENV, ApiError, Limits, MicroBatcher, resolve_slide


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
                                ("sub", 400, "not a file"), ("notes.txt", 400, "slide file type")):
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
