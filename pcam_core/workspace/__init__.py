"""The dashboard's services: the workspace and its data sources (`sources`), watching runs (`monitor`),
a run's scores per split (`scoring`), choosing patches to show (`gallery`), pathologists' reviews and the review queue (`reviews`).

No Streamlit and no model code here (no torch, models, inference, predict or train): the pages start
training through `pcam_core.runs` (a separate process) and read what it writes.
"""

from .sources import (
    DEFAULT_ROOT,
    DEMO_ENV_VAR,
    DEMO_NAME,
    DEMO_TRAIN_PATCHES,
    DOWNLOAD_JOB,
    DOWNLOAD_NAME,
    ENV_VAR,
    FORMAT_LABELS,
    DataSource,
    Workspace,
    check_source_name,
    demo_spec,
    workspace_root,
)

__all__ = [
    "DEFAULT_ROOT",
    "DEMO_ENV_VAR",
    "DEMO_NAME",
    "DEMO_TRAIN_PATCHES",
    "DOWNLOAD_JOB",
    "DOWNLOAD_NAME",
    "ENV_VAR",
    "FORMAT_LABELS",
    "DataSource",
    "Workspace",
    "check_source_name",
    "demo_spec",
    "workspace_root",
]
