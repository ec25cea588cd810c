"""Training with reviewed labels (`pcam_core.data.overrides`, `pcam train --label-overrides`): a review
export made by the real review store flips and drops the labels the loader yields on the real fixture
patches (both layouts), refuses files it cannot read, and a short run records what it used."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers import cli_here
from pcam_core.data import DataError, apply_overrides, make_loader, open_dataset, read_overrides, train_valid_datasets
from pcam_core.runs import RunDir
from pcam_core.workspace.reviews import ReviewStore, ReviewTarget


def loader_labels(dataset) -> dict[str, int]:
    """id -> label of every patch as the training loader yields them."""
    out: dict[str, int] = {}
    for batch in make_loader(dataset, 32, shuffle=False, num_workers=0, ids=True):
        out.update(zip(batch["id"], batch["label"].tolist()))
    return out


def export(tmp_path, reviews: list[tuple[str, str, int | None, str]]) -> str:
    """A review export written by the review store: (split, id, index, verdict) per review."""
    store = ReviewStore(tmp_path / "reviews.sqlite")
    for split, pid, index, verdict in reviews:
        store.add_review(ReviewTarget("real", patch_id=pid, split=split, index=index), verdict, "Dr A")
    path = tmp_path / "reviews.csv"
    store.export_csv(path)
    return str(path)


def test_overrides_flip_and_drop_the_labels_the_h5_loader_yields(real_h5, tmp_path):
    train = open_dataset(real_h5, "train")
    ids = pd.read_csv(real_h5 / "camelyonpatch_level_2_split_train_ids.csv")["id"].tolist()
    valid_id = pd.read_csv(real_h5 / "camelyonpatch_level_2_split_valid_ids.csv")["id"].iloc[0]
    before = loader_labels(train)
    path = export(tmp_path, [("train", ids[0], 0, "disagree_label_wrong"), ("train", ids[1], 1, "artefact"),
                             ("train", ids[2], 2, "agree"), ("valid", valid_id, 0, "artefact"),
                             ("train", "0" * 40, 5, "artefact")])  # an id that is not patch 5 (the data changed)
    changed, counts = apply_overrides(train, path)
    after = loader_labels(changed)
    assert after[ids[0]] == 1 - before[ids[0]]
    assert ids[1] not in after and len(after) == len(before) - 1
    assert after[ids[2]] == before[ids[2]] and all(after[i] == before[i] for i in ids[3:])
    assert (counts.flipped, counts.dropped, counts.kept, counts.unmatched, counts.reviewed) == (1, 1, 1, 2, 5)
    assert "2 of the 5 reviewed patch id(s)" in counts.warning(path)
    assert train.labels[0] == before[ids[0]]  # the dataset itself is untouched


def test_a_file_with_ids_only_is_matched_by_hashing_the_patches(real_h5, tmp_path):
    train = open_dataset(real_h5, "train")
    ids = pd.read_csv(real_h5 / "camelyonpatch_level_2_split_train_ids.csv")["id"].tolist()
    path = tmp_path / "foreign.csv"
    pd.DataFrame({"id": [ids[7].upper(), ids[9], ids[9]], "verdict": ["artefact", "agree", "disagree_label_wrong"]}).to_csv(path, index=False)
    changed, counts = apply_overrides(train, path)
    assert (counts.dropped, counts.flipped, counts.conflicting, counts.rows) == (1, 1, 1, 3)  # the last row of an id decides
    assert loader_labels(changed)[ids[9]] == 1 - train.labels[9]


def test_overrides_change_only_the_training_part_of_a_kaggle_folder(real_kaggle, tmp_path):
    data = train_valid_datasets(real_kaggle, valid_frac=0.2, seed=0)
    train_ids = data.train._ids(range(len(data.train)), None)
    valid_ids = data.valid._ids(range(len(data.valid)), None)
    path = export(tmp_path, [("train", train_ids[0], None, "disagree_label_wrong"), ("train", train_ids[1], None, "artefact"),
                             ("valid", valid_ids[0], 0, "disagree_label_wrong")])
    changed, counts = apply_overrides(data.train, path)
    labels = dict(zip(changed._ids(range(len(changed)), None), changed.labels))  # the Kaggle ids need no pixel read
    assert labels[train_ids[0]] == 1 - int(data.train.labels[0]) and train_ids[1] not in labels
    assert (counts.flipped, counts.dropped, counts.unmatched) == (1, 1, 1)
    assert changed.source is data.train.source  # a view on the same files, not a copy


def test_unreadable_override_files_are_refused_naming_the_file(tmp_path):
    no_verdict = tmp_path / "ids.csv"
    no_verdict.write_text("id,label\nabc,1\n")
    with pytest.raises(DataError, match=r"ids.csv: label overrides need the column\(s\) id, verdict; missing verdict"):
        read_overrides(no_verdict)
    odd = tmp_path / "odd.csv"
    odd.write_text("id,verdict\nabc,maybe\n")
    with pytest.raises(DataError, match="unknown verdict.*'maybe'"):
        read_overrides(odd)
    with pytest.raises(FileNotFoundError, match="label overrides file not found"):
        read_overrides(tmp_path / "missing.csv")


@pytest.mark.slow
def test_a_run_trained_with_overrides_records_them(real_h5, tmp_path, capsys):
    ids = pd.read_csv(real_h5 / "camelyonpatch_level_2_split_train_ids.csv")["id"].tolist()
    path = export(tmp_path, [("train", ids[0], 0, "disagree_label_wrong"), ("train", ids[1], 1, "artefact"),
                             ("test", "f" * 40, 3, "artefact")])
    out = tmp_path / "run"
    done = cli_here(capsys, "train", "--data", str(real_h5), "--out", str(out), "--epochs", "1", "--max-steps", "2",
                   "--batch-size", "16", "--workers", "0", "--label-overrides", path)
    assert done.returncode == 0, done.stderr
    assert "1 of the 3 reviewed patch id(s)" in done.stderr and "1 flipped, 1 dropped" in done.stdout
    run = RunDir(out)
    assert run.label_overrides_path.read_text() == open(path).read()
    record = run.label_overrides()
    assert record["counts"]["flipped"] == 1 and record["counts"]["dropped"] == 1 and record["counts"]["unmatched"] == 1
    assert run.summary()["label_overrides"] == record["counts"]
    assert run.config().data.label_overrides == path
    bad = cli_here(capsys, "train", "--data", str(real_h5), "--out", str(tmp_path / "bad"), "--label-overrides", str(real_h5 / "camelyonpatch_level_2_split_train_ids.csv"))
    assert bad.returncode != 0 and "missing verdict" in bad.stderr and not (tmp_path / "bad").exists()
    assert json.loads(run.config_path.read_text())["data"]["label_overrides"] == path
