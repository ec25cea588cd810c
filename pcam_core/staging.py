"""Lymph-node metastasis size classes (AJCC/UICC TNM 8th edition, as CAMELYON17 uses them), by the
largest diameter of a tumour region: isolated tumour cells (ITC, <= 0.2 mm), micrometastasis
(> 0.2 and <= 2 mm), macrometastasis (> 2 mm); and a patient's pN stage from the size classes of its lymph
nodes, by the CAMELYON17 rules. One home for the rules and their words. Imports nothing of ours.
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


# CAMELYON17's five pN stages, in the order quadratic weighted kappa weighs them (pN3, ten nodes or more with
# metastases, cannot arise from CAMELYON17's five nodes a patient; it is kept last for cases with more).
PN_STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2", "pN3")
# CAMELYON17's words for a node's class (its submission and reference files), by size class
NODE_CLASSES = {"none": "negative", "itc": "itc", "micro": "micro", "macro": "macro"}


def node_size_class(word: str) -> str:
    """The size class of a CAMELYON17 node class word (negative/itc/micro/macro) or of one of ours."""
    key = word.strip().lower()
    for name, node_word in NODE_CLASSES.items():
        if key in (name, node_word):
            return name
    raise ValueError(f"unknown node class {word!r}; valid: {', '.join(NODE_CLASSES.values())}")


def pn_stage(node_classes: list[str]) -> str:
    """A patient's pN stage from its nodes' size classes (none/itc/micro/macro), by the CAMELYON17 rules:
    pN0 no ITC, micro- or macrometastasis; pN0(i+) only ITC; pN1mi micrometastases but no macrometastasis;
    pN1 metastases (micro or macro; ITC do not count) in 1-3 nodes, at least one a macrometastasis; pN2 in 4-9
    nodes, at least one a macrometastasis (pN3: 10 or more, beyond CAMELYON17)."""
    for name in node_classes:
        if name not in SIZE_CLASSES:
            raise ValueError(f"unknown size class {name!r}; valid: {', '.join(SIZE_CLASSES)}")
    metastases = sum(name in ("micro", "macro") for name in node_classes)
    if "macro" in node_classes:
        return "pN1" if metastases <= 3 else "pN2" if metastases <= 9 else "pN3"
    if "micro" in node_classes:
        return "pN1mi"
    return "pN0(i+)" if "itc" in node_classes else "pN0"


def deciding_classes(stage: str) -> tuple[str, ...]:
    """The size classes of the nodes that decide `stage` (for pN0: none; every node is negative)."""
    return {"pN0": (), "pN0(i+)": ("itc",), "pN1mi": ("micro",)}.get(stage, ("micro", "macro"))


__all__ = ["ITC_MAX_MM", "MICRO_MAX_MM", "NODE_CLASSES", "PN_STAGES", "SIZE_CLASSES", "SIZE_CLASS_WORDS", "deciding_classes",
           "node_size_class", "pn_stage", "size_class", "size_class_words"]
