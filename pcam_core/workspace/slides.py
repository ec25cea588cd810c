"""The slide library and its queue, under their old name: `workspace.slide_library` (the slides) and
`workspace.slide_queue` (their analyses) are where they live."""

from __future__ import annotations

from .slide_library import (
    DEFAULT_UPLOAD_LIMIT,
    DEMO_SLIDE_ENV,
    DEMO_SLIDE_SIZE,
    UPLOAD_LIMIT_ENV,
    SlideEntry,
    SlideLibrary,
    demo_slide_size,
    fingerprint,
    slide_id,
    upload_limit,
)
from .slide_queue import STATES, AnalysisState, SlideQueue, run_key

__all__ = ["AnalysisState", "DEFAULT_UPLOAD_LIMIT", "DEMO_SLIDE_ENV", "DEMO_SLIDE_SIZE", "STATES", "SlideEntry", "SlideLibrary",
           "SlideQueue", "UPLOAD_LIMIT_ENV", "demo_slide_size", "fingerprint", "run_key", "slide_id", "upload_limit"]
