"""Shards: "i/n" splits a list of items (patches, slides, region tiles) into n contiguous blocks, one per
process; every item lies in exactly one block. Imports nothing of ours."""

from __future__ import annotations

import numpy as np


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """"i/n" (0 <= i < n) -> (i, n)."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_indices(n_items: int, shard: tuple[int, int] | None) -> np.ndarray:
    """The contiguous block of 0..n_items-1 that shard (i, n) covers; shards cover everything once."""
    if shard is None:
        return np.arange(n_items)
    i, n = shard
    bounds = np.linspace(0, n_items, n + 1).round().astype(int)
    return np.arange(bounds[i], bounds[i + 1])


__all__ = ["parse_shard", "shard_indices"]
