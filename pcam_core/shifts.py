"""Graded image shifts of uint8 RGB patches: stain, blur, JPEG, brightness, contrast, stain normalisation.

Each shift takes patches ``(N, 96, 96, 3)`` uint8 and an integer strength (0 is the identity, returned
untouched; negative strengths go the other way where a shift has two directions) and returns new uint8
patches. They model what changes between a training lab and another: the amount of each stain, focus,
the scanner's compression, exposure, and the other lab's whole H&E look. `pcam_core.robustness` scores
a model under them; docs/robustness.md has the maths and the grades.

No torch here: pure numpy, scikit-image, scipy, Pillow and torchstain (its numpy backend).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np

# skimage's stain units: rgb2hed divides the optical density (natural log) by -log(1e-6)
_SKIMAGE_OD_UNIT = -np.log(1e-6)

# The "other lab": the reference H&E stain vectors (columns: haematoxylin, eosin, as optical density per
# RGB channel) and 99th-percentile stain concentrations of Macenko et al.'s reference implementation
# (mitkovetta/staining-normalization, torchstain's defaults), written out so the target never moves with
# a library upgrade. Camelyon16's patches come out paler and bluer under it.
OTHER_LAB_STAINS = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
OTHER_LAB_MAX_CONCENTRATION = np.array([1.9705, 1.0308])
# Macenko estimates the source stains from many patches at once (one 96x96 patch holds too few tissue
# pixels for a stable estimate): the patches are normalised in mosaics of this many, in order.
MOSAIC = 256
# Shifts that hold float copies work through the patches in chunks of this many (memory stays flat).
CHUNK = 512


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def scale_stain(pixels: np.ndarray, factor: float, stain: int) -> np.ndarray:
    """Scale one stain's amount (0: haematoxylin, 1: eosin) by `factor`, leaving the other stains as they
    are: the concentration comes from skimage's colour deconvolution (`rgb2hed`, Ruifrok & Johnston), and
    the change is applied to the optical density, OD' = OD + (factor - 1) c s, with s the stain's vector."""
    from skimage.color import rgb2hed, rgb_from_hed

    rgb = pixels.astype(np.float64) / 255.0
    concentration = rgb2hed(rgb)[..., stain : stain + 1]
    extra_od = (factor - 1.0) * concentration * _SKIMAGE_OD_UNIT * rgb_from_hed[stain]
    return _to_uint8(pixels * np.exp(-extra_od))


def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of `sigma` pixels within each patch (an out-of-focus scan)."""
    from scipy.ndimage import gaussian_filter

    return _to_uint8(gaussian_filter(pixels.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="reflect"))


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """Each patch saved as a JPEG at `quality` (Pillow, 4:2:0 chroma subsampling, its default) and read back."""
    from PIL import Image

    out = np.empty_like(pixels)
    for i, patch in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(patch).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def brightness(pixels: np.ndarray, offset: float) -> np.ndarray:
    """Every channel shifted by `offset` (a share of the full range, -1..1): a brighter or darker scan."""
    return _to_uint8(pixels.astype(np.float32) + offset * 255.0)


def contrast(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Each patch's deviations from its own mean grey level scaled by `factor` (Pillow's definition)."""
    x = pixels.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return _to_uint8(mean + factor * (x - mean))


def normalise_stain(pixels: np.ndarray, amount: float) -> np.ndarray:
    """Move the patches `amount` (0..1) of the way to the other lab's H&E look (`OTHER_LAB_STAINS`): Macenko
    normalisation (torchstain, numpy backend) on mosaics of `MOSAIC` patches, blended with the original in
    optical density, so amount 1 is the normalised image and 1/2 lies halfway in stain space."""
    import torchstain

    normaliser = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    normaliser.HERef, normaliser.maxCRef = OTHER_LAB_STAINS.copy(), OTHER_LAB_MAX_CONCENTRATION.copy()
    out = np.empty_like(pixels)
    for start in range(0, len(pixels), MOSAIC):
        chunk = pixels[start : start + MOSAIC]
        mosaic = chunk.reshape(-1, chunk.shape[2], 3)  # the patches stacked into one tall image
        try:
            normalised, _, _ = normaliser.normalize(I=mosaic, stains=False)
        except (np.linalg.LinAlgError, ValueError, IndexError) as err:  # no tissue at all in the mosaic
            raise ValueError(f"Macenko normalisation failed on patches {start}..{start + len(chunk) - 1} "
                             f"(too little stained tissue?): {err}") from err
        od_original = np.log1p(chunk.astype(np.float64))
        od_target = np.log1p(normalised.reshape(chunk.shape).astype(np.float64))
        out[start : start + len(chunk)] = _to_uint8(np.expm1((1 - amount) * od_original + amount * od_target))
    return out


@dataclass(frozen=True)
class Shift:
    """One kind of shift: its grades (strength -> the level `apply` takes) and how to say a level in words."""

    name: str
    title: str  # for charts and tables
    grades: dict[int, float]
    apply: Callable[[np.ndarray, float], np.ndarray]
    words: Callable[[float], str]  # "the haematoxylin is 30% weaker than in these patches"
    unit: str  # what the level is

    @property
    def strengths(self) -> list[int]:
        return sorted({0, *self.grades})


def _stain_words(stain: str) -> Callable[[float], str]:
    def words(factor: float) -> str:
        change = round(abs(factor - 1) * 100)
        return f"the {stain} is {change}% {'weaker' if factor < 1 else 'stronger'} than in these patches"

    return words


def _signed(step: float, grades: range) -> dict[int, float]:
    return {k: round(k * step, 4) for k in grades if k}


SHIFTS: dict[str, Shift] = {s.name: s for s in (
    Shift("haematoxylin", "Haematoxylin amount", {k: 1 + v for k, v in _signed(0.15, range(-3, 4)).items()},
          lambda p, f: scale_stain(p, f, 0), _stain_words("haematoxylin (the nuclear stain)"), "factor"),
    Shift("eosin", "Eosin amount", {k: 1 + v for k, v in _signed(0.15, range(-3, 4)).items()},
          lambda p, f: scale_stain(p, f, 1), _stain_words("eosin (the cytoplasm stain)"), "factor"),
    Shift("normalise", "Stain normalisation to another lab", {1: 1 / 3, 2: 2 / 3, 3: 1.0}, normalise_stain,
          lambda a: (f"the colours are moved {round(a * 100)}% of the way to another lab's H&E look "
                     "(Macenko normalisation)"), "share of the way"),
    Shift("blur", "Blur", {1: 0.5, 2: 1.0, 3: 1.5, 4: 2.0, 5: 3.0}, blur,
          lambda s: f"the scan is out of focus by a Gaussian blur of {s:g} pixel{'' if s == 1 else 's'} (about {s:g} µm)",
          "sigma (px)"),
    Shift("jpeg", "JPEG compression", {1: 90, 2: 70, 3: 50, 4: 30, 5: 15, 6: 5}, jpeg,
          lambda q: f"the images are JPEG-compressed at quality {q:g}", "quality"),
    Shift("brightness", "Brightness", _signed(0.1, range(-3, 4)), brightness,
          lambda o: f"the scan is {round(abs(o) * 100)}% {'darker' if o < 0 else 'brighter'} "
                    f"({'minus' if o < 0 else 'plus'} {round(abs(o) * 255)} grey levels)", "offset (share of 255)"),
    Shift("contrast", "Contrast", {k: 1 + v for k, v in _signed(0.2, range(-3, 4)).items()}, contrast,
          lambda f: f"the contrast is {round(abs(f - 1) * 100)}% {'lower' if f < 1 else 'higher'}", "factor"),
)}
# What `--shifts` accepts: "stain" is the two stains, each in both directions.
SHIFT_GROUPS: dict[str, tuple[str, ...]] = {"stain": ("haematoxylin", "eosin"), "normalise": ("normalise",),
                                             "blur": ("blur",), "jpeg": ("jpeg",), "brightness": ("brightness",),
                                             "contrast": ("contrast",)}
DEFAULT_SHIFTS = tuple(SHIFT_GROUPS)


def resolve_shifts(names: str | list[str] | tuple[str, ...] | None) -> list[Shift]:
    """The shifts that group names ("stain,blur", or a list) or single shift names mean, in order, once each."""
    if names is None:
        names = DEFAULT_SHIFTS
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    chosen: list[str] = []
    for name in names:
        members = SHIFT_GROUPS.get(name) or ((name,) if name in SHIFTS else None)
        if members is None:
            raise ValueError(f"unknown shift {name!r}; valid: {', '.join([*SHIFT_GROUPS, 'haematoxylin', 'eosin'])}")
        chosen += [m for m in members if m not in chosen]
    if not chosen:
        raise ValueError("no shift chosen; valid: " + ", ".join(SHIFT_GROUPS))
    return [SHIFTS[name] for name in chosen]


def apply_shift(pixels: np.ndarray, name: str, strength: int) -> np.ndarray:
    """`pixels` (N, 96, 96, 3) uint8 under shift `name` at integer `strength` (0: the pixels themselves)."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; valid: {', '.join(SHIFTS)}")
    shift = SHIFTS[name]
    if strength == 0:
        return pixels
    if strength not in shift.grades:
        raise ValueError(f"shift {name!r} has no strength {strength}; valid: {', '.join(map(str, shift.strengths))}")
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected uint8 patches (N, H, W, 3), got {pixels.dtype} {pixels.shape}")
    level = shift.grades[strength]
    step = MOSAIC if name == "normalise" else CHUNK
    out = np.empty_like(pixels)
    for start in range(0, len(pixels), step):
        out[start : start + step] = shift.apply(pixels[start : start + step], level)
    return out
