"""`pcam convert`: a Kaggle-layout folder to the PCam HDF5 layout, split by label with a seed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .common import stratified_split
from .h5 import SplitWriter
from .kaggle import KaggleFolder


def convert_kaggle(
    input_dir: str | Path,
    out: str | Path,
    *,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    seed: int = 0,
    chunk: int = 2048,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Write `train`, `valid` and `test` splits (stratified by label, seeded) of the labelled Kaggle
    training images in `input_dir` into `out`, in the official HDF5 layout with a `_meta.csv` holding
    each patch's Kaggle `id`. Reads and writes in chunks, so memory stays bounded on 220,025 images.

    Images are decoded strictly: the first bad one stops the conversion with its name, and nothing is
    left published (splits this call already wrote are removed again).
    """
    if not 0 <= valid_frac < 1 or not 0 <= test_frac < 1 or valid_frac + test_frac >= 1:
        raise ValueError(f"--valid-frac {valid_frac} and --test-frac {test_frac} must be in [0, 1) and sum to less than 1")
    source = KaggleFolder(input_dir, "train")
    parts = stratified_split(source.labels, [valid_frac, test_frac], seed)
    names = ["train", "valid", "test"]
    total = len(source)
    done = 0
    written: list[dict[str, Path]] = []
    counts: dict[str, int] = {}
    try:
        for name, idx in zip(names, parts):
            if not len(idx):
                continue
            # shuffle within the split (seeded), so that reading a prefix is not label-sorted
            idx = np.random.default_rng(seed).permutation(idx)
            with SplitWriter(out, name, len(idx), attrs={"source": f"Kaggle folder {Path(input_dir).name}", "split_seed": seed}) as writer:
                for start in range(0, len(idx), chunk):
                    block = idx[start : start + chunk]
                    writer.write(start, source.read_pixels(block), source.labels[block])
                    done += len(block)
                    if progress:
                        progress(done, total)
                writer.set_meta(pd.DataFrame({"id": [source.paths[i].stem for i in idx]}))
                written.append(writer.commit())
            counts[name] = len(idx)
    except BaseException:
        for files in written:
            for path in files.values():
                path.unlink(missing_ok=True)
        raise
    return counts
