"""pcam_core.workspace.gallery: selecting and paging patches without reading them, the centre box, colour
statistics on a bounded sample, the most confident errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pcam_core.data import PCamH5
from pcam_core.workspace.gallery import (
    BOX_COLOUR,
    class_balance,
    colour_statistics,
    OUTCOMES,
    confident_errors,
    find_patch,
    outcome_counts,
    outcome_examples,
    outcome_of,
    outline_centre,
    page_count,
    page_items,
    random_examples,
    sample_by_class,
    select_indices,
    slide_ids,
)


def test_select_by_label_and_slide():
    labels = np.array([0, 1, 1, 0, 1, -1])
    slides = np.array(["a", "a", "b", "b", "b", "a"])
    assert select_indices(labels).tolist() == [0, 1, 2, 3, 4, 5]
    assert select_indices(labels, label=1).tolist() == [1, 2, 4]
    assert select_indices(labels, label=1, slides=slides, slide="b").tolist() == [2, 4]
    assert select_indices(labels, slides=slides, slide="a").tolist() == [0, 1, 5]
    assert select_indices(labels, label=0, slides=slides, slide="zzz").tolist() == []
    with pytest.raises(ValueError, match="no slide metadata"):
        select_indices(labels, slide="a")
    with pytest.raises(ValueError, match="label must be"):
        select_indices(labels, label=2)


def test_selection_on_an_official_size_split():
    # how fast the Dataset page is on such a split: benchmarks/bench_dashboard.py
    labels = np.random.default_rng(0).integers(0, 2, 262_144)
    slides = np.array([f"slide_{i % 400:03d}" for i in range(262_144)])
    picked = select_indices(labels, label=1, slides=slides, slide="slide_007")
    expected = np.flatnonzero((labels == 1) & (slides == "slide_007"))
    assert picked.tolist() == expected.tolist()


def test_paging():
    idx = np.arange(10, 20)
    assert page_count(0, 4) == 1 and page_count(10, 4) == 3 and page_count(12, 4) == 3
    assert page_items(idx, 1, 4).tolist() == [10, 11, 12, 13]
    assert page_items(idx, 3, 4).tolist() == [18, 19]
    assert page_items(idx, 99, 4).tolist() == [18, 19]  # past the end: the last page
    assert page_items(idx, 0, 4).tolist() == [10, 11, 12, 13]
    assert page_items(np.array([], dtype=int), 1, 4).tolist() == []
    with pytest.raises(ValueError):
        page_count(5, 0)


def test_centre_box_is_drawn_on_the_border_of_the_label_region():
    patch = np.zeros((96, 96, 3), dtype=np.uint8)
    out = outline_centre(patch)
    assert out.shape == (96, 96, 3) and not patch.any()  # the input is untouched
    ring = (out == BOX_COLOUR).all(axis=-1)
    assert ring[32, 32:64].all() and ring[63, 32:64].all() and ring[32:64, 32].all() and ring[32:64, 63].all()
    assert ring.sum() == 4 * 32 - 4 and not ring[33:63, 33:63].any() and not ring[:32].any()
    big = outline_centre(np.stack([patch, patch]), scale=3, width=3)
    assert big.shape == (2, 288, 288, 3)
    ring = (big[1] == BOX_COLOUR).all(axis=-1)
    assert ring[96:99, 96:192].all() and not ring[99:189, 99:189].any() and not ring[:96].any()
    assert not outline_centre(patch, width=0).any()
    with pytest.raises(ValueError, match="96, 96, 3"):
        outline_centre(np.zeros((64, 64, 3), dtype=np.uint8))


def test_class_balance_reads_no_image():
    assert class_balance(np.array([1, 0, 0, -1, 1, 1])) == {"patches": 6, "tumour": 3, "normal": 2, "unlabelled": 1}


def test_sample_by_class_is_bounded_sorted_and_seeded():
    labels = np.array([0] * 50 + [1] * 5)
    sample = sample_by_class(labels, 10, seed=3)
    assert len(sample[0]) == 10 and len(sample[1]) == 5
    assert (np.diff(sample[0]) > 0).all() and (labels[sample[0]] == 0).all()
    assert sample_by_class(labels, 10, seed=3)[0].tolist() == sample[0].tolist()


def test_colour_statistics_of_the_demo_split(demo_root):
    ds = PCamH5(demo_root, "valid")
    summary, hist = colour_statistics(ds, per_class=32, bins=16)
    assert set(summary["class"]) == {"tumour", "normal"} and len(summary) == 6
    assert (summary["patches"] == 32).all()
    assert summary["mean"].between(0, 255).all() and (summary["p5"] <= summary["median"]).all()
    assert np.allclose(hist.groupby(["class", "channel"])["share"].sum(), 1.0)
    # the same numbers as computing by hand on the sampled pixels
    idx = sample_by_class(ds.labels, 32)[1]
    red = ds.read_pixels(idx)[..., 0].astype(float)
    row = summary[(summary["class"] == "tumour") & (summary["channel"] == "red")].iloc[0]
    assert row["mean"] == pytest.approx(red.mean(), rel=1e-5) and row["std"] == pytest.approx(red.std(), rel=1e-4)
    assert [row["p5"], row["median"], row["p95"]] == pytest.approx(np.percentile(red, [5, 50, 95]))
    counts, _ = np.histogram(red, bins=16, range=(0, 256))
    shares = hist[(hist["class"] == "tumour") & (hist["channel"] == "red")]
    assert shares["intensity"].tolist() == list(range(0, 256, 16)) and np.allclose(shares["share"], counts / red.size)
    with pytest.raises(ValueError, match="bins must divide"):
        colour_statistics(ds, per_class=4, bins=10)


@pytest.mark.parametrize("n", [1, 2, 5, 100, 9217])
def test_colour_percentiles_match_numpy_on_any_sample_size(n):
    """The percentiles come from the count of each pixel level; they equal numpy's on the pixels themselves."""
    from pcam_core.workspace.gallery import _level_percentiles

    values = np.random.default_rng(n).integers(0, 256, n)
    got = _level_percentiles(np.bincount(values, minlength=256), (0, 5, 33.3, 50, 95, 100))
    assert got == pytest.approx(np.percentile(values, [0, 5, 33.3, 50, 95, 100]))


def test_slide_ids_come_from_the_metadata(demo_root):
    ds = PCamH5(demo_root, "train")
    slides = slide_ids(ds)
    assert slides is not None and len(slides) == len(ds) and slides[0].startswith("synthetic_slide_")
    assert slide_ids(ds.subset([0, 1])) is None  # a subset carries no metadata table of its own


def test_confident_errors_at_a_threshold():
    frame = pd.DataFrame({
        "index": [0, 1, 2, 3, 4, 5, 6],
        "label": [0, 0, 0, 1, 1, 1, 0],
        "probability": [0.9, 0.6, 0.1, 0.05, 0.4, 0.95, 0.99],
    })
    fp, fn = confident_errors(frame, 0.5, k=2)
    assert fp["index"].tolist() == [6, 0] and fn["index"].tolist() == [3, 4]
    fp, fn = confident_errors(frame, 0.95, k=5)
    assert fp["index"].tolist() == [6] and fn["index"].tolist() == [3, 4]  # 0.95 is called tumour (>=)
    with pytest.raises(ValueError, match="threshold"):
        confident_errors(frame, 1.5)
    with pytest.raises(ValueError, match="lack column"):
        confident_errors(frame.drop(columns="label"), 0.5)


def test_outcome_examples_most_confident_first():
    frame = pd.DataFrame({
        "index": [0, 1, 2, 3, 4, 5, 6],
        "label": [0, 0, 0, 1, 1, 1, 0],
        "probability": [0.9, 0.6, 0.1, 0.05, 0.4, 0.95, 0.99],
    })
    assert outcome_examples(frame, 0.5, "true_positive")["index"].tolist() == [5]
    assert outcome_examples(frame, 0.5, "true_negative")["index"].tolist() == [2]
    assert outcome_examples(frame, 0.5, "false_positive")["index"].tolist() == [6, 0, 1]
    assert outcome_examples(frame, 0.5, "false_positive", k=1)["index"].tolist() == [6]
    assert outcome_examples(frame, 0.5, "false_negative")["index"].tolist() == [3, 4]
    counts = outcome_counts(frame, 0.5)
    assert set(counts) == set(OUTCOMES) and sum(counts.values()) == len(frame)
    assert outcome_counts(frame, 0.0)["false_negative"] == 0  # everything is called tumour at 0
    with pytest.raises(ValueError, match="unknown outcome"):
        outcome_examples(frame, 0.5, "fp")
    for row in frame.itertuples():  # one patch at a time, the same outcome
        outcome = outcome_of(row.label, row.probability, 0.5)
        assert row.index in outcome_examples(frame, 0.5, outcome)["index"].tolist()
    assert outcome_of(-1, 0.9, 0.5) is None


def test_random_examples_are_seeded_and_bounded():
    frame = pd.DataFrame({"index": np.arange(50), "label": 0, "probability": 0.5})
    a, b = random_examples(frame, 5, seed=1), random_examples(frame, 5, seed=1)
    assert a["index"].tolist() == b["index"].tolist() and a["index"].nunique() == 5
    assert random_examples(frame, 5, seed=2)["index"].tolist() != a["index"].tolist()
    assert len(random_examples(frame, 500)) == 50
    with pytest.raises(ValueError, match="at least 1"):
        random_examples(frame, 0)


def test_find_patch_by_number_id_or_id_prefix():
    ids = ["a1b2c3d4" + "0" * 32, "a1b2c3ff" + "1" * 32, "0123456789" * 4]
    frame = pd.DataFrame({"id": ids, "index": [7, 8, 9], "label": [0, 1, 0], "probability": [0.1, 0.2, 0.3]})
    assert find_patch(frame, "8")["id"] == ids[1]
    assert find_patch(frame, " #9 ")["id"] == ids[2]
    assert find_patch(frame, ids[0].upper())["index"] == 7
    assert find_patch(frame, "a1b2c3f")["index"] == 8
    assert find_patch(frame, "0123456789" * 4)["index"] == 9  # digits only, but 40 of them: an id, not a number
    with pytest.raises(ValueError, match="no patch number 3.*from 7 to 9"):
        find_patch(frame, "3")
    with pytest.raises(ValueError, match="give more characters"):
        find_patch(frame, "a1b2c3")
    with pytest.raises(ValueError, match="too short"):
        find_patch(frame, "a1b2")
    with pytest.raises(ValueError, match="no patch has an id"):
        find_patch(frame, "ffffffff")
    with pytest.raises(ValueError, match="give a patch number"):
        find_patch(frame, "  ")


def test_a_probability_is_written_with_three_decimals_and_never_as_a_certainty():
    """Every page's captions: "p=0.912", and at the ends "p>0.999" / "p<0.001" rather than "p=1.000" / "p=0.000"."""
    from pcam_app.patches import probability_text, probability_value

    assert [probability_text(p) for p in (0.91234, 0.9994, 0.99951, 1.0, 0.0004, 0.0, 0.0005)] == [
        "p=0.912", "p=0.999", "p>0.999", "p>0.999", "p<0.001", "p<0.001", "p=0.001"]
    assert (probability_value(1.0), probability_value(0.25)) == (">0.999", "0.250")
