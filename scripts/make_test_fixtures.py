"""Cut the real-patch test fixtures (tests/data/) from the 4,000 real PCam patches in the Kaggle layout.

    python scripts/make_test_fixtures.py --source ../shared/data/pcam-real-dev

Draws 160 patches (96 normal, 64 tumour: about the source's ratio) with a fixed seed, copies their original
tif bytes into `tests/data/pcam-real-kaggle/` (Kaggle layout) and writes the same pixels as the official HDF5
layout into `tests/data/pcam-real-h5/` (train 96, valid 32, test 32, each split label-stratified; `x`
contiguous and uncompressed like the Zenodo files). Run once by a maintainer; the tests only read the result.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
COUNTS = {0: 96, 1: 64}
SPLITS = {"train": 0.6, "valid": 0.2, "test": 0.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="Kaggle-layout folder of real patches")
    parser.add_argument("--out", default=str(REPO / "tests" / "data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source, out = Path(args.source), Path(args.out)
    labels = pd.read_csv(source / "train_labels.csv")
    rng = np.random.default_rng(args.seed)
    picked = pd.concat([labels[labels.label == y].sample(n, random_state=args.seed) for y, n in COUNTS.items()])
    picked = picked.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)

    kaggle = out / "pcam-real-kaggle"
    shutil.rmtree(kaggle, ignore_errors=True)
    (kaggle / "train").mkdir(parents=True)
    for ident in picked.id:
        shutil.copyfile(source / "train" / f"{ident}.tif", kaggle / "train" / f"{ident}.tif")
    picked.to_csv(kaggle / "train_labels.csv", index=False)

    h5 = out / "pcam-real-h5"
    shutil.rmtree(h5, ignore_errors=True)
    h5.mkdir(parents=True)
    split_of = np.empty(len(picked), dtype=object)
    for y in COUNTS:
        rows = rng.permutation(np.flatnonzero(picked.label.to_numpy() == y))
        edges = np.cumsum([round(f * len(rows)) for f in SPLITS.values()])[:-1]
        for name, part in zip(SPLITS, np.split(rows, edges)):
            split_of[part] = name
    for name in SPLITS:
        part = picked[split_of == name]
        x = np.stack([np.asarray(Image.open(kaggle / "train" / f"{i}.tif").convert("RGB")) for i in part.id])
        stem = h5 / f"camelyonpatch_level_2_split_{name}"
        with h5py.File(f"{stem}_x.h5", "w") as f:
            f.create_dataset("x", data=x)
        with h5py.File(f"{stem}_y.h5", "w") as f:
            f.create_dataset("y", data=part.label.to_numpy().astype(np.uint8).reshape(-1, 1, 1, 1))
        part.assign(split=name).to_csv(f"{stem}_ids.csv", index=False)
        print(f"{name}: {len(part)} patches, {int(part.label.sum())} tumour")


if __name__ == "__main__":
    main()
