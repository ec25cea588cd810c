"""pcam_core: metastatic-tissue detection on PatchCamelyon patches (data, models, training, evaluation, Grad-CAM).

Score images from Python with ``pcam_core.load_predictor(run).predict(images)`` (docs/python.md).
"""

from __future__ import annotations

import os
from typing import Any

__version__ = "0.1.0"

# PyTorch backs its CPU buffers of 2 MB or more with transparent huge pages when this is set before its first allocation
# (and the kernel allows it, as `madvise` does): a slide analysis's region-sized activations then fault in 2 MB at a
# time, not 4 kB (a 12 x 10-patch slide with the bundled ensemble: 6.1 M page faults and 12 s of system time -> 0.6 M and
# 7 s; benchmarks/README.md). Set it to 0 to turn it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# Importing pcam_core stays cheap (the CLI's --version, the dashboard's first paint): what pulls in
# torch is imported on first use.
_LAZY = {"load_predictor": "api", "Predictor": "api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["Predictor", "__version__", "load_predictor"]
