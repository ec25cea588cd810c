"""A SYNTHETIC whole slide of CAMELYON16's size (100,000 x 220,000 px at 0.243 um/px) in minutes: the demo slide's
tissue (`pcam_core.slides.demo`), laid out as a few large pieces covering about a quarter of the glass, with tumour
regions of macro- and micrometastasis size, written from a pool of tiles encoded once.

Rendering every pixel, as `make_demo_slide` does, costs about 80 minutes at that size on 2 cores. Here the slide is
a grid of blocks of `BLOCK` x `BLOCK` level-0 pixels (one 256-px tile at PCam scale for 0.243 um/px), each one of:

- glass or tissue inside a piece: one of a pool of blocks the demo renderer drew once (`pool` distinct tissue
  blocks, a few of glass), JPEG-encoded once per pyramid level and written wherever the layout asks for them;
- a block that a piece's edge or a tumour region (with a margin) crosses: drawn where it lies by the same renderer,
  so edges and tumour are exactly the demo slide's.

Every level of a block is resampled from its PCam-scale pixels (bilinear, as `make_demo_slide` does), so the
pyramid is consistent: the levels from 8 up are mosaics of downsampled blocks. Texture does not continue across
pooled blocks' borders; nothing else tells the slide from one drawn whole. The file is what `make_demo_slide`
writes (levels as pages of the main IFD chain, 256-px JPEG tiles encoded as tifffile encodes them, resolution
tags: OpenSlide reads `generic-tiff`), with the same truth files; `truth.json` adds `layout` (the pieces, the
tissue share drawn, the pool and the counts of each kind of block).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from .demo import (CANDIDATE_REGIONS, TILE, Blob, DemoSlideSpec, Region, TissueRenderer, _levels, level_tags, noise_at,
                   write_truth)
from .reader import PCAM_MPP

log = logging.getLogger(__name__)

BLOCK = 1024  # level-0 pixels per block side: 4 x 4 tiles at level 0, one tile at level 2 (PCam scale at 0.243 um/px)
GLASS, TISSUE, FRESH = 0, 1, 2  # block kinds
_GLASS_POOL = 4
_SAMPLE = 8  # PCam-scale pixels between the samples that decide a block's kind
_BLOCKS_PER_WORKER = 50  # blocks to draw per worker below which they are drawn in this process
_TUMOUR_MARGIN = 16  # PCam-scale pixels around a tumour region whose blocks are drawn where they lie
# (x, y) in a piece's own frame, as fractions of its semi-axes: where the candidate regions go, in order
_REGION_SPOTS = [(0.3, -0.25), (-0.35, 0.3), (-0.3, -0.4), (0.35, 0.45), (0.0, 0.0)]


def _block_px(mpp: float) -> int:
    """PCam-scale pixels per block side (BLOCK level-0 pixels), between 64 and BLOCK."""
    p = round(BLOCK * mpp / PCAM_MPP)
    if not 64 <= p <= BLOCK:
        raise ValueError(f"a pooled demo slide needs 0.061 <= mpp <= {PCAM_MPP} um/px (level 0 at least as fine as "
                         f"PCam's scale), not {mpp}")
    return p


def pooled_layout(spec: DemoSlideSpec, tissue_share: float = 0.25) -> tuple[list[Blob], list[Region]]:
    """A few large pieces of tissue (ellipses with rough edges, in PCam-scale pixels of `BLOCK / _block_px` level-0
    pixels each) in slots along the slide's long side, covering about `tissue_share` of it, and the candidate tumour
    regions of `demo.default_regions` (macro, micro, small micro, ITC) placed inside them where they fit."""
    if not 0.02 <= tissue_share <= 0.5:
        raise ValueError(f"tissue share must be between 0.02 and 0.5, not {tissue_share}")
    f = BLOCK / _block_px(spec.mpp)
    wp, hp = spec.width / f, spec.height / f
    rng = np.random.default_rng(spec.seed)
    portrait = hp >= wp
    long_side, short_side = max(wp, hp), min(wp, hp)
    n = int(np.clip(round(1.4 * long_side / short_side), 1, 4))
    slot_long, slot_short = long_side / n, short_side
    blobs: list[Blob] = []
    for k in range(n):
        area = tissue_share * slot_long * slot_short / math.pi  # a * b
        ratio = slot_long / slot_short * rng.uniform(0.8, 1.25)
        a_long = min(math.sqrt(area * ratio), 0.42 * slot_long)
        a_short = min(area / a_long, 0.42 * slot_short)
        a_long = min(area / a_short, 0.42 * slot_long)
        c_long = (k + 0.5 + rng.uniform(-0.04, 0.04)) * slot_long
        c_short = (0.5 + rng.uniform(-0.04, 0.04)) * slot_short
        angle = float(rng.uniform(-12, 12))
        noise = 0.35 * min(1.0, 1900 / math.sqrt(a_long * a_short))  # edges as rough in microns as the demo slide's
        if portrait:
            blobs.append(Blob(c_short, c_long, a_short, a_long, angle, noise))
        else:
            blobs.append(Blob(c_long, c_short, a_long, a_short, angle, noise))

    regions: list[Region] = []
    order = sorted(range(n), key=lambda i: -blobs[i].a * blobs[i].b)
    for i, (name, _fx, _fy, a_um, b_um, angle) in enumerate(CANDIDATE_REGIONS):
        blob = blobs[order[i % n]]
        u, v = _REGION_SPOTS[i % len(_REGION_SPOTS)]
        t = math.radians(blob.angle_deg)
        du, dv = u * blob.a, v * blob.b
        cx, cy = blob.cx + du * math.cos(t) - dv * math.sin(t), blob.cy + du * math.sin(t) + dv * math.cos(t)
        reach = a_um / spec.mpp / f  # the region's semi-major axis in PCam-scale pixels
        if math.hypot(u, v) + reach / min(blob.a, blob.b) > 0.8:  # not well inside the piece
            continue
        region = Region(name, cx * f, cy * f, a_um, b_um, angle)
        if any(math.hypot(region.cx - r.cx, region.cy - r.cy) * spec.mpp < a_um + r.semi_major_um + 100 for r in regions):
            continue
        regions.append(region)
    return blobs, regions


def _block_kinds(renderer: TissueRenderer, p: int, rows: int, cols: int) -> tuple[np.ndarray, float]:
    """Each block's kind (GLASS, TISSUE or FRESH) and the share of the slide that is tissue. A block is glass or
    tissue when the tissue value at every sample (every `_SAMPLE` PCam-scale pixels, its edges included) lies on the
    same side of 1 by more than the value can change between samples; else, or near a tumour region, FRESH."""
    spec, f = renderer.spec, renderer.f
    k = max(1, p // _SAMPLE)
    step = p / k
    # the most the value changes over one step: the steepest ellipse plus the steepest edge noise (smoothstep: 1.5 / cell)
    margin = 1.5 * step * max((2 / min(b.a, b.b) + 1.5 * b.edge_noise / 160 for b in renderer.blobs), default=0.0)
    kinds = np.empty((rows, cols), dtype=np.int8)
    tissue_samples = total = 0
    xs = np.round(np.arange(cols * k + 1) * step).astype(np.int64)
    for r in range(rows):
        ys = np.round(np.arange(r * k, (r + 1) * k + 1) * step).astype(np.int64)
        value = renderer.tissue_value((ys + 0.5)[:, None], (xs + 0.5)[None, :], noise_at(ys, xs, 160, renderer.salt + 1))
        inside = ((ys[:-1, None] + 0.5) * f < spec.height) & ((xs[None, :-1] + 0.5) * f < spec.width)
        tissue_samples += int((value[:-1, :-1] < 1)[inside].sum())
        total += int(inside.sum())
        for c in range(cols):
            v = value[:, c * k:(c + 1) * k + 1]
            kinds[r, c] = TISSUE if v.max() < 1 - margin else GLASS if v.min() > 1 + margin else FRESH
    for region in renderer.regions:  # tumour, and tissue around it: drawn where it lies
        reach = region.semi_major_um / spec.mpp + _TUMOUR_MARGIN * f  # level-0 pixels
        r0, r1 = int((region.cy - reach) // BLOCK), int((region.cy + reach) // BLOCK)
        c0, c1 = int((region.cx - reach) // BLOCK), int((region.cx + reach) // BLOCK)
        kinds[max(0, r0):r1 + 1, max(0, c0):c1 + 1] = FRESH
    return kinds, tissue_samples / max(total, 1)


def _render_blocks(path: str, spec: DemoSlideSpec, regions: list[Region], blobs: list[Blob], f: float, p: int,
                   jobs: list[tuple[int, int, int]]) -> None:
    """Draw blocks (index in the memory map at `path`, block row, block column) where they lie; a worker's task."""
    renderer = TissueRenderer(spec, regions, blobs, f=f)
    out = np.load(path, mmap_mode="r+")
    for index, r, c in jobs:
        out[index] = renderer.render(r * p, c * p, p, p)
    out.flush()


def _pool(spec: DemoSlideSpec, f: float, p: int, tissue: int) -> np.ndarray:
    """`tissue` distinct blocks of tissue without tumour, then `_GLASS_POOL` of glass, drawn by the demo renderer away
    from each other (a piece of tissue covering everything, or none)."""
    everywhere = [Blob(0.0, 0.0, 1e12, 1e12, 0.0, 0.0)]
    full, glass = TissueRenderer(spec, [], everywhere, f=f), TissueRenderer(spec, [], [], f=f)
    blocks = [full.render(0, (2 * i + 1) * p, p, p) for i in range(tissue)]
    blocks += [glass.render(0, (2 * i + 1) * p, p, p) for i in range(_GLASS_POOL)]
    return np.stack(blocks)


def _resized(block: np.ndarray, side: int) -> np.ndarray:
    if block.shape[0] == side:
        return block
    return np.asarray(Image.fromarray(block).resize((side, side), Image.Resampling.BILINEAR))


class _Writer:
    """The tiles of each level, row-major, as JPEG bytes encoded as tifffile encodes them for `demo.level_tags`."""

    def __init__(self, spec: DemoSlideSpec, kinds: np.ndarray, choice: np.ndarray, pool: np.ndarray, fresh: np.ndarray,
                 fresh_index: np.ndarray) -> None:
        import tifffile

        self.spec, self.kinds, self.choice, self.pool, self.fresh, self.fresh_index = spec, kinds, choice, pool, fresh, fresh_index
        codec = tifffile.TIFF.COMPRESSORS[7]  # imagecodecs' JPEG, with the arguments tifffile gives it for RGB JPEG tiles
        self.encode: Callable[[np.ndarray], bytes] = lambda tile: codec(
            np.ascontiguousarray(tile), level=spec.quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))
        self._pooled: dict[int, list[list[bytes]]] = {}
        self._thumbs: dict[int, list[np.ndarray]] = {}

    def _block(self, r: int, c: int) -> tuple[bool, int, np.ndarray]:
        """(pooled?, key, PCam-scale pixels) of block (r, c)."""
        if self.kinds[r, c] == FRESH:
            i = int(self.fresh_index[r, c])
            return False, i, self.fresh[i]
        return True, int(self.choice[r, c]), self.pool[self.choice[r, c]]

    def _cut(self, block: np.ndarray, side: int) -> list[bytes]:
        image, n = _resized(block, side), side // TILE
        return [self.encode(image[i * TILE:(i + 1) * TILE, j * TILE:(j + 1) * TILE]) for i in range(n) for j in range(n)]

    def tiles(self, downsample: int) -> Iterator[bytes]:
        side = BLOCK // downsample  # a block's side at this level
        rows, cols = self.kinds.shape
        lw, lh = math.ceil(self.spec.width / downsample), math.ceil(self.spec.height / downsample)
        tx, ty = math.ceil(lw / TILE), math.ceil(lh / TILE)
        if side >= TILE:  # a block is n x n tiles
            n = side // TILE
            pooled = self._pooled.setdefault(downsample, [self._cut(b, side) for b in self.pool])
            for r in range(math.ceil(ty / n)):
                row = []
                for c in range(math.ceil(tx / n)):
                    is_pooled, key, block = self._block(r, c)
                    row.append(pooled[key] if is_pooled else self._cut(block, side))
                for i in range(min(n, ty - r * n)):
                    yield from (row[x // n][i * n + x % n] for x in range(tx))
            return
        k = TILE // side  # a tile is k x k blocks
        thumbs = self._thumbs.setdefault(downsample, [_resized(b, side) for b in self.pool])
        for y in range(ty):
            band = np.full((TILE, tx * TILE, 3), 255, dtype=np.uint8)  # white past the last block
            for i in range(min(k, rows - y * k)):
                for c in range(min(cols, tx * k)):
                    is_pooled, key, block = self._block(y * k + i, c)
                    band[i * side:(i + 1) * side, c * side:(c + 1) * side] = thumbs[key] if is_pooled else _resized(block, side)
            yield from (self.encode(band[:, x * TILE:(x + 1) * TILE]) for x in range(tx))


def make_pooled_demo_slide(out: str | Path, spec: DemoSlideSpec | None = None, *, tissue_share: float = 0.25,
                           pool: int = 32, workers: int = 1) -> dict[str, Any]:
    """Write a SYNTHETIC slide of `spec`'s size (default CAMELYON16's, 100,000 x 220,000 at 0.243 um/px) with tissue
    covering about `tissue_share` of it into `out` (`slide.tif`, `truth.png`, `truth.npy`, `truth.json`, as
    `make_demo_slide`), from `pool` distinct tissue blocks; `workers` processes draw the blocks at tissue edges and
    tumour (this process alone when there are fewer than `_BLOCKS_PER_WORKER` per worker). Returns the truth JSON."""
    import tifffile

    spec = spec or DemoSlideSpec(width=100_000, height=220_000)
    if not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be a whole number of at least 1 tissue block, not {pool!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number of at least 1, not {workers!r}")
    downsamples = list(spec.levels) if spec.levels else _levels(spec.width, spec.height)
    if any(d & (d - 1) or d > BLOCK for d in downsamples):
        raise ValueError(f"a pooled demo slide's levels must be powers of two up to {BLOCK}, not {downsamples}")
    p = _block_px(spec.mpp)
    f = BLOCK / p
    blobs, regions = pooled_layout(spec, tissue_share)
    renderer = TissueRenderer(spec, regions, blobs, f=f)
    rows, cols = math.ceil(spec.height / BLOCK), math.ceil(spec.width / BLOCK)
    kinds, share = _block_kinds(renderer, p, rows, cols)
    rng = np.random.default_rng(spec.seed)
    choice = np.where(kinds == TISSUE, rng.integers(0, pool, kinds.shape), pool + rng.integers(0, _GLASS_POOL, kinds.shape))
    fresh_at = np.argwhere(kinds == FRESH)
    fresh_index = np.full(kinds.shape, -1, dtype=np.int64)
    fresh_index[tuple(fresh_at.T)] = np.arange(len(fresh_at))
    log.info("pooled demo slide %d x %d: %d blocks, %d drawn where they lie, tissue share %.3f", spec.width, spec.height,
             kinds.size, len(fresh_at), share)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        path = str(Path(tmp) / "fresh.npy")
        fresh = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(max(1, len(fresh_at)), p, p, 3))
        jobs = [(i, int(r), int(c)) for i, (r, c) in enumerate(fresh_at)]
        if workers == 1 or len(jobs) < _BLOCKS_PER_WORKER * workers:  # a worker's start (torch's import) costs ~50 blocks
            _render_blocks(path, spec, regions, blobs, f, p, jobs)
        else:  # spawned, not forked: the parent has torch's thread pools
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
                chunks = [jobs[i::workers] for i in range(workers)]
                list(ex.map(_render_blocks, *zip(*[(path, spec, regions, blobs, f, p, chunk) for chunk in chunks])))
        writer = _Writer(spec, kinds, choice, _pool(spec, f, p, pool), fresh, fresh_index)
        partial = Path(tmp) / "slide.tif"  # renamed into place when complete
        with tifffile.TiffWriter(partial, bigtiff=spec.width * spec.height > 2**31) as tif:
            for index, d in enumerate(downsamples):
                tif.write(writer.tiles(d), **level_tags(spec, index, d))
        os.replace(partial, out / "slide.tif")
        del fresh, writer
    layout = {"tissue_share": round(share, 4), "pieces": [asdict(b) for b in blobs], "block_px": BLOCK,
              "pool": pool, "blocks": {"glass": int((kinds == GLASS).sum()), "tissue": int((kinds == TISSUE).sum()),
                                       "drawn_in_place": len(fresh_at)}}
    return write_truth(out, spec, regions, downsamples, layout=layout)
