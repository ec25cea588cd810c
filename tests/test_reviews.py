"""Reviews by pathologists (`pcam_core.workspace.reviews`): the SQLite store on a real file, its history
and current view, the CSV export, the schema version, the review queue, and concurrent writers (five
processes at once, one killed with SIGKILL mid-way) losing nothing."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3

import numpy as np
import pandas as pd
import pytest

from pcam_core.workspace import Workspace
from pcam_core.workspace.reviews import (
    SCHEMA_VERSION,
    VERDICTS,
    ModelCall,
    ReviewStore,
    ReviewTarget,
    review_queue,
)


def patch(i: int, source: str = "demo") -> ReviewTarget:
    return ReviewTarget(source, patch_id=f"{i:040x}", split="valid", index=i)


def test_a_review_is_saved_with_everything_it_was_given(tmp_path):
    store = Workspace(tmp_path).reviews()
    rid = store.add_review(patch(3), "disagree_label_wrong", " Dr A ", note="tumour cells at the edge",
                           model=ModelCall(probability=np.float32(0.71), call="tumour", threshold=0.5, run_id="r1"))
    row = store.reviews().iloc[0]
    assert rid == row["review_id"] and (tmp_path / "reviews.sqlite").exists()
    assert (row["reviewer"], row["source"], row["split"], row["patch_index"], row["verdict"], row["note"]) == \
        ("Dr A", "demo", "valid", 3, "disagree_label_wrong", "tumour cells at the edge")
    assert row["probability"] == pytest.approx(0.71) and row["call"] == "tumour" and row["run_id"] == "r1"
    assert row["created_at"].endswith("+00:00")  # UTC
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_later_review_supersedes_for_current_and_history_keeps_both(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    store.add_review(patch(1), "unsure", "A")
    store.add_review(patch(1), "artefact", "B")
    store.add_review(patch(1), "agree", "A", note="looked again")
    store.add_review(patch(2), "agree", "A")
    assert list(store.reviews(reviewer="A")["verdict"]) == ["unsure", "agree", "agree"]
    current = store.current_reviews()
    assert sorted(zip(current["reviewer"], current["patch_index"], current["verdict"])) == \
        [("A", 1, "agree"), ("A", 2, "agree"), ("B", 1, "artefact")]
    assert store.counts(reviewer="A") == {**dict.fromkeys(VERDICTS, 0), "agree": 2, "total": 2}
    assert store.latest(patch(1), "A")["note"] == "looked again"
    assert store.reviewed_items("A", "demo") == {patch(1).item, patch(2).item}
    assert store.current_reviews(verdict=["artefact", "unsure"])["reviewer"].tolist() == ["B"]


def test_slide_regions_are_reviewed_by_corner_or_region_id(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    corner = ReviewTarget.slide_region("slides", "tumor_001", x=1024, y=2048)
    named = ReviewTarget.slide_region("slides", "tumor_001", region="r7")
    store.add_review(corner, "disagree_model_wrong", "A")
    store.add_review(named, "agree", "A")
    rows = store.current_reviews()
    assert rows["item"].tolist() == ["tumor_001@1024,2048", "tumor_001#r7"]
    assert (rows.iloc[0]["x"], rows.iloc[0]["y"], rows.iloc[1]["region"]) == (1024, 2048, "r7")
    with pytest.raises(ValueError, match="level-0 x and y"):
        ReviewTarget.slide_region("slides", "tumor_001", x=5)


def test_bad_reviews_are_refused_with_what_is_valid(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match="'maybe' is not one of agree"):
        store.add_review(patch(1), "maybe", "A")
    with pytest.raises(ValueError, match="reviewer's name"):
        store.add_review(patch(1), "agree", "  ")
    with pytest.raises(ValueError, match="patch id"):
        ReviewTarget("demo")
    with pytest.raises(ValueError, match="cannot filter reviews on 'colour'"):
        store.reviews(colour="red")


def test_export_is_the_current_reviews_written_atomically(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    store.add_review(patch(1), "unsure", "A")
    store.add_review(patch(1), "disagree_label_wrong", "A")
    store.add_review(patch(2), "artefact", "A")
    out = tmp_path / "out" / "reviews.csv"
    assert store.export_csv(out) == 2
    frame = pd.read_csv(out, dtype={"id": str})
    assert {"id", "index", "split", "verdict", "reviewer", "probability", "run_id"} <= set(frame.columns)
    assert frame["verdict"].tolist() == ["disagree_label_wrong", "artefact"] and frame["id"].tolist() == [patch(1).patch_id, patch(2).patch_id]
    assert store.export_csv(out, history=True) == 3
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_an_older_database_is_migrated_and_a_newer_one_refused(tmp_path):
    old = tmp_path / "old.sqlite"
    sqlite3.connect(old).close()  # version 0: an empty file from before the schema
    assert ReviewStore(old).schema_version() == SCHEMA_VERSION
    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ValueError, match="newer than this pcam_core knows"):
        ReviewStore(newer).reviews()


# -- the queue ------------------------------------------------------------------------------------------

def _predictions(probabilities, uncertainty=None) -> pd.DataFrame:
    frame = pd.DataFrame({"id": [f"p{i}" for i in range(len(probabilities))], "label": 0,
                          "probability": probabilities, "index": range(len(probabilities))})
    if uncertainty is not None:
        frame["uncertainty"] = uncertainty
    return frame


def test_the_queue_puts_the_patches_nearest_the_threshold_first_and_leaves_out_reviewed_ones():
    predictions = _predictions([0.02, 0.45, 0.97, 0.31, 0.52])
    queue = review_queue(predictions, 0.5)
    assert queue["id"].tolist() == ["p4", "p1", "p3", "p2", "p0"]
    assert queue["closeness"].iloc[0] == pytest.approx(1 - 0.02 / 0.5)
    assert review_queue(predictions, 0.5, reviewed={"p4", "p1"}, k=2)["id"].tolist() == ["p3", "p2"]
    assert review_queue(predictions, 0.3)["id"].iloc[0] == "p3"  # the threshold decides what is close


def test_the_queue_combines_closeness_with_the_tta_uncertainty_when_the_split_has_one():
    # p1 is nearest the threshold but the 8 views agree on it; p3 is a little farther and the views disagree
    predictions = _predictions([0.10, 0.49, 0.90, 0.40], uncertainty=[0.01, 0.001, 0.02, 0.30])
    queue = review_queue(predictions, 0.5)
    assert queue["id"].tolist()[0] == "p3"
    assert queue["priority"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="probability"):
        review_queue(predictions.drop(columns="probability"), 0.5)


# -- concurrency ----------------------------------------------------------------------------------------

def _write_reviews(path: str, writer: int, count: int, done=None) -> None:
    store = ReviewStore(path)
    for i in range(count):
        rid = store.add_review(patch(writer * 10_000 + i), VERDICTS_LIST[i % len(VERDICTS_LIST)], f"reviewer-{writer}",
                               model=ModelCall(probability=i / count, call="normal", threshold=0.5, run_id="r"))
        if done is not None:
            done.put(rid)  # committed: add_review has returned


VERDICTS_LIST = list(VERDICTS)


@pytest.mark.slow
def test_five_processes_reviewing_at_once_lose_nothing_and_a_restart_reads_them_all(tmp_path):
    path = str(tmp_path / "ws" / "reviews.sqlite")
    context = mp.get_context("spawn")
    workers = [context.Process(target=_write_reviews, args=(path, w, 200)) for w in range(5)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    fresh = Workspace(tmp_path / "ws").reviews()  # a new instance: the app restarted
    history = fresh.reviews()
    assert len(history) == 1000 and history["review_id"].is_unique
    assert history.groupby("reviewer").size().tolist() == [200] * 5
    assert len(fresh.current_reviews()) == 1000


@pytest.mark.slow
def test_a_process_killed_mid_way_loses_no_committed_review(tmp_path):
    path = str(tmp_path / "reviews.sqlite")
    context = mp.get_context("spawn")
    done = context.Queue()
    busy = [context.Process(target=_write_reviews, args=(path, w, 100_000)) for w in (1, 2)]  # contention while it dies
    victim = context.Process(target=_write_reviews, args=(path, 0, 100_000, done))
    for process in (*busy, victim):
        process.start()
    committed = [done.get(timeout=60) for _ in range(150)]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(30)
    for process in busy:
        process.kill()
        process.join(30)
    while not done.empty():
        committed.append(done.get())
    assert victim.exitcode == -signal.SIGKILL
    saved = set(ReviewStore(path).reviews(reviewer="reviewer-0")["review_id"])
    assert set(committed) <= saved and len(saved) >= 150
    ReviewStore(path).add_review(patch(1), "agree", "after")  # the database is usable after the kills
