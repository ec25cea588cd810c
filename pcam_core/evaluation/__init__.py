"""Evaluating analysed slides against their truth as the field does: CAMELYON16's lesion detections, FROC and
slide ROC-AUC, CAMELYON17's pN stages and quadratic weighted kappa. See docs/evaluation.md.

    from pcam_core.evaluation import EvaluationOptions, evaluate_slides
    result = evaluate_slides("analyses/", "evaluation/", truth="truth/", cases="cases.csv")
"""

from __future__ import annotations

from typing import Any

from .options import EvaluationOptions


def __getattr__(name: str) -> Any:
    if name == "evaluate_slides":  # imported when asked for: it reads maps through the slide modules (torch)
        from .evaluate import evaluate_slides

        return evaluate_slides
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EvaluationOptions", "evaluate_slides"]
