"""Lymph-node metastasis size classes (AJCC/UICC TNM 8th edition, as CAMELYON17 uses them), by the
largest diameter of a tumour region: isolated tumour cells (ITC, <= 0.2 mm), micrometastasis
(> 0.2 and <= 2 mm), macrometastasis (> 2 mm). One home for the rule and its words. Imports nothing of ours.
"""

from __future__ import annotations

ITC_MAX_MM = 0.2
MICRO_MAX_MM = 2.0
SIZE_CLASSES = ("none", "itc", "micro", "macro")  # in order of size
SIZE_CLASS_WORDS = {"none": "no tumour region", "itc": "isolated tumour cells (≤ 0.2 mm)",
                    "micro": "micrometastasis (≤ 2 mm)", "macro": "macrometastasis (> 2 mm)"}


def size_class(diameter_mm: float | None) -> str:
    """The size class of a region (or a slide's largest region) of this largest diameter; None is "none"."""
    if diameter_mm is None or diameter_mm <= 0:
        return "none"
    return "itc" if diameter_mm <= ITC_MAX_MM else "micro" if diameter_mm <= MICRO_MAX_MM else "macro"


def size_class_words(name: str) -> str:
    """The words for a size class, or a ValueError listing the valid ones."""
    try:
        return SIZE_CLASS_WORDS[name]
    except KeyError:
        raise ValueError(f"unknown size class {name!r}; valid: {', '.join(SIZE_CLASSES)}") from None


__all__ = ["ITC_MAX_MM", "MICRO_MAX_MM", "SIZE_CLASSES", "SIZE_CLASS_WORDS", "size_class", "size_class_words"]
