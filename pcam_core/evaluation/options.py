"""The options of a slide evaluation, with their one default each (light: the CLI declares its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

# non-maximum suppression as NCRF (Li & Ping 2018) made detections for CAMELYON16: 12 pixels at level 6, floor 0.5
NMS_RADIUS_UM = 12 * 64 * 0.243
NMS_FLOOR = 0.5
NOT_ASSESSED_MODES = ("map", "exclude")


@dataclass(frozen=True)
class EvaluationOptions:
    """`floor`: the lowest probability a detection may have; `radius_um`: the suppression radius between detections;
    `not_assessed`: what a slide out of the model's scope gets, "map" (evaluated from its raw map) or "exclude"."""

    floor: float = NMS_FLOOR
    radius_um: float = NMS_RADIUS_UM
    not_assessed: str = "map"

    def __post_init__(self) -> None:
        if not 0 <= self.floor <= 1:
            raise ValueError(f"floor must be a probability in [0, 1], not {self.floor}")
        if not self.radius_um > 0:
            raise ValueError(f"radius_um must be positive microns, not {self.radius_um}")
        if self.not_assessed not in NOT_ASSESSED_MODES:
            raise ValueError(f"not_assessed must be one of {', '.join(NOT_ASSESSED_MODES)}, not {self.not_assessed!r}")


__all__ = ["NMS_FLOOR", "NMS_RADIUS_UM", "NOT_ASSESSED_MODES", "EvaluationOptions"]
