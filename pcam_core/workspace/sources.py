"""The dashboard's workspace: one folder holding the data sources and the training runs.

    WORKSPACE/                  $PCAM_WORKSPACE, or ./workspace
      sources.json              the registered data sources (name, path, layout), rewritten atomically
      data/demo/                the SYNTHETIC demo dataset, generated on first start
      data/pcam/                the real PCam files, when downloaded from the dashboard
      runs/<run id>/            one folder per training run (the contract of `pcam_core.runs`)
      jobs/<name>.json, .log    background jobs other than training (download, scoring a split)
      slides/                   the slide library and its analyses (`workspace.slides`)
      reviews.sqlite            pathologists' reviews (`workspace.reviews`: SQLite in WAL mode)
      exports/                  review exports the Train page hands to a run (`--label-overrides`)

A data source may live anywhere (a PCam HDF5 folder or a Kaggle folder is registered by its path and
never copied); the workspace only remembers where it is. Removing a source forgets it and deletes
nothing. The workspace counts as set up once `sources.json` exists: a user who removed the demo data
does not get it back on the next start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..data.common import PATCH_SHAPE, DataError
from ..data.download import FILES as DOWNLOAD_FILES
from ..fileio import atomic_write_json
from ..runs.jobs import JobStatus, job_status, start_job
from ..config import ExperimentConfig
from ..runs import RunDir, RunSummary, check_processes, create_run, launch, list_runs, run_path
from .slides import SlideLibrary
from .reviews import ReviewStore, store_for

if TYPE_CHECKING:
    from ..data import PatchDataset
    from ..data.demo import DemoSpec

# The dataset readers (pcam_core.data's h5, kaggle, loader, demo) import torch: they are imported where
# used, so that importing the services costs no torch (tests/test_layering.py checks it).

log = logging.getLogger(__name__)

ENV_VAR = "PCAM_WORKSPACE"
DEMO_ENV_VAR = "PCAM_DEMO_PATCHES"  # training patches of the demo set a first start generates
DEFAULT_ROOT = "workspace"
DEMO_NAME = "demo"
DEMO_TRAIN_PATCHES = 2048  # with a quarter as many each for valid and test: ~10 s to generate, learnable in minutes
DOWNLOAD_NAME = "pcam"
DOWNLOAD_JOB = "download-pcam"
FORMAT_LABELS = {"h5": "PCam HDF5", "kaggle": "Kaggle folder"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LOCK = threading.Lock()  # sessions of one dashboard are threads of one process


def workspace_root(path: str | Path | None = None) -> Path:
    """`path`, else $PCAM_WORKSPACE, else ./workspace; made absolute (and `~` expanded)."""
    chosen = path if path not in (None, "") else os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def demo_spec(train_patches: int | None = None) -> DemoSpec:
    """The demo set a first start generates: `train_patches` (default $PCAM_DEMO_PATCHES or 2048) for
    training and a quarter of that each for validation and test."""
    from ..data.demo import DemoSpec

    if train_patches is None:
        raw = os.environ.get(DEMO_ENV_VAR, "")
        try:
            train_patches = int(raw) if raw else DEMO_TRAIN_PATCHES
        except ValueError:
            raise ValueError(f"{DEMO_ENV_VAR}={raw!r} must be a whole number of patches") from None
    if not 64 <= train_patches <= 262_144:
        raise ValueError(f"the demo set needs between 64 and 262,144 training patches, not {train_patches}")
    small = max(16, train_patches // 4)
    return DemoSpec(sizes=(("train", train_patches), ("valid", small), ("test", small)))


def check_source_name(name: str) -> str:
    """A source name is a short plain label: letters, digits, '.', '_' and '-'."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"invalid data source name {name!r}: use up to 64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


@dataclass(frozen=True)
class DataSource:
    """A registered dataset: a PCam HDF5 folder or a Kaggle folder."""

    name: str
    path: str
    format: str  # "h5" or "kaggle"
    synthetic: bool = False
    added_at: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.name} (SYNTHETIC)" if self.synthetic else self.name

    @property
    def kind(self) -> str:
        return FORMAT_LABELS.get(self.format, self.format) + (", synthetic demo" if self.synthetic else "")

    def exists(self) -> bool:
        return Path(self.path).is_dir()

    def splits(self) -> list[str]:
        """The splits present on disk (Kaggle: train and/or test; HDF5: any of train, valid, test)."""
        from ..data import available_splits
        from ..data.kaggle import KAGGLE_SPLITS

        if not self.exists():
            return []
        if self.format == "h5":
            return available_splits(self.path)
        return [s for s in KAGGLE_SPLITS if (Path(self.path) / s).is_dir()]

    def version(self, split: str) -> float:
        """A number that changes when the split's files are replaced (to key caches on)."""
        from ..data import split_files

        folder = Path(self.path)
        files = split_files(folder, split).values() if self.format == "h5" else [folder / split, folder / "train_labels.csv"]
        return max((p.stat().st_mtime for p in files if p.exists()), default=0.0)

    def open(self, split: str) -> PatchDataset:
        """One split as a dataset; nothing but the labels (and HDF5 metadata) is read."""
        if not self.exists():
            raise FileNotFoundError(f"data source {self.name!r}: folder {self.path} no longer exists; "
                                    "restore it or remove the source")
        if split not in self.splits():
            raise ValueError(f"data source {self.name!r} has no split {split!r}; it has: {', '.join(self.splits()) or 'none'}")
        from ..data import open_dataset

        return open_dataset(self.path, split, format=self.format)


class Workspace:
    """The folder the dashboard works in (see the module docstring for its layout)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = workspace_root(root)

    runs_root = property(lambda self: self.root / "runs")
    data_root = property(lambda self: self.root / "data")
    jobs_root = property(lambda self: self.root / "jobs")
    sources_path = property(lambda self: self.root / "sources.json")
    exports_root = property(lambda self: self.root / "exports")

    def reviews(self) -> ReviewStore:
        """The workspace's review database (`reviews.sqlite`, created on first use)."""
        return store_for(self.root)

    @property
    def slide_library(self) -> SlideLibrary:
        """The workspace's slides and their analyses (`workspace.slides`)."""
        return SlideLibrary(self.root)

    # -- data sources ----------------------------------------------------------------------------
    def initialised(self) -> bool:
        return self.sources_path.exists()

    def sources(self) -> list[DataSource]:
        """The registered sources, in the order they were added."""
        if not self.sources_path.exists():
            return []
        try:
            raw = json.loads(self.sources_path.read_text(encoding="utf-8"))
            return [DataSource(**entry) for entry in raw["sources"]]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{self.sources_path} is damaged ({type(err).__name__}: {err}); fix it by hand, "
                             "or delete it to start over (no data is deleted with it)") from err

    def source(self, name: str) -> DataSource:
        for source in self.sources():
            if source.name == name:
                return source
        names = ", ".join(s.name for s in self.sources()) or "none"
        raise ValueError(f"no data source named {name!r}; registered: {names}")

    def _save(self, sources: list[DataSource]) -> None:
        atomic_write_json(self.sources_path, {"version": 1, "sources": [asdict(s) for s in sources]})

    def add_source(self, path: str | Path, name: str | None = None) -> DataSource:
        """Register a PCam HDF5 folder or a Kaggle folder by its path, after checking it can be read.

        Raises FileNotFoundError for a missing path, `DataError` for a folder that is neither layout
        (or whose labels do not match its images), ValueError for a name or path already registered."""
        from ..data import detect_format
        from ..data.demo import is_demo_dataset

        text = str(path).strip()
        if not text:
            raise ValueError("give the path of a PCam HDF5 folder or a Kaggle folder")
        name = (name or "").strip()
        if name:
            check_source_name(name)
        folder = Path(text).expanduser().resolve()
        fmt = detect_format(folder)
        if folder.is_file():
            raise DataError(f"{folder} is a file; give the folder that holds the PCam HDF5 files")
        if fmt == "images":
            raise DataError(f"{folder} holds loose images without labels or splits; register a PCam HDF5 folder "
                            "or a Kaggle folder (train/ with train_labels.csv), or score loose images on the Predict page")
        probe = DataSource("", str(folder), fmt)
        synthetic = is_demo_dataset(folder)
        for split in probe.splits():  # opening checks the files (labels against images, shapes, metadata)
            synthetic = probe.open(split).synthetic or synthetic
        with _LOCK:
            sources = self.sources()
            name = name or self._free_name(folder.name, sources)
            for other in sources:
                if other.name == name:
                    raise ValueError(f"a data source named {name!r} already exists; choose another name")
                if Path(other.path) == folder:
                    raise ValueError(f"{folder} is already registered as {other.name!r}")
            source = DataSource(name, str(folder), fmt, synthetic, time.time())
            self._save([*sources, source])
        log.info("registered data source %s at %s (%s)", name, folder, fmt)
        return source

    @staticmethod
    def _free_name(stem: str, sources: list[DataSource]) -> str:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:56] or "data"
        taken = {s.name for s in sources}
        name, k = base, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        return name

    def remove_source(self, name: str) -> None:
        """Forget a source; its files stay where they are."""
        with _LOCK:
            sources = self.sources()
            kept = [s for s in sources if s.name != name]
            if len(kept) == len(sources):
                raise ValueError(f"no data source named {name!r}")
            self._save(kept)

    # -- first start -------------------------------------------------------------------------------
    def bootstrap(self, progress: Callable[[float, str], None] | None = None, *, spec: DemoSpec | None = None) -> DataSource | None:
        """Set up a new workspace: generate the SYNTHETIC demo dataset into data/demo (unless a complete
        one is there) and register it; make the SYNTHETIC demo slide and queue its analysis (`SlideLibrary.bootstrap`). Does nothing for a workspace already set up; returns the demo source."""
        from ..data.demo import is_demo_dataset

        with _LOCK:
            if self.initialised():
                return None
            self.root.mkdir(parents=True, exist_ok=True)
            target = self.data_root / DEMO_NAME
            if not is_demo_dataset(target) or not all((target / f).exists() for f in _demo_files()):
                self._generate_demo(target, spec or demo_spec(), progress)
            source = DataSource(DEMO_NAME, str(target), "h5", True, time.time())
            self._save([source])
        if progress:
            progress(1.0, "the SYNTHETIC demo slide")
        self.slide_library.bootstrap()  # the demo slide ($PCAM_DEMO_SLIDE), its analysis queued
        return source

    def _generate_demo(self, target: Path, spec: DemoSpec, progress: Callable[[float, str], None] | None) -> None:
        # Rendered into a temporary folder and renamed into place: a crash never leaves half a dataset.
        from ..data.demo import make_demo_dataset

        self.data_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=self.data_root))
        try:
            make_demo_dataset(tmp, spec, progress=progress)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- runs --------------------------------------------------------------------------------------
    def runs(self) -> list[RunSummary]:
        """Every run of the workspace, newest first."""
        return list_runs(self.runs_root)

    def run(self, run_id: str) -> RunDir:
        """Run `run_id` (a checked plain folder name) of this workspace."""
        run = RunDir(run_path(self.runs_root, run_id))
        if not run.exists():
            raise FileNotFoundError(f"no run {run_id!r} in {self.runs_root}")
        return run

    def start_run(self, config: ExperimentConfig, *, nproc: int = 1) -> RunDir:
        """Create a run folder for `config` under runs/ and start training it in the background with
        `nproc` processes (through torchrun when more than one; see `runs.launch`): a cross-validation where
        `config.data.folds` asks for one (`pcam train --folds K`). A number of processes it cannot train with, or a
        teacher that cannot teach it (`distil.check_teacher`), is refused before the folder is made."""
        from ..distil import check_teacher  # here only: it imports torch, which the rest of the workspace does not need

        check_processes(nproc, config.data.folds)
        check_teacher(config)
        run = create_run(self.runs_root, config)
        launch(run, nproc=nproc)
        return run

    # -- downloading the real data -----------------------------------------------------------------
    @property
    def download_dest(self) -> Path:
        return self.data_root / DOWNLOAD_NAME

    def start_download(self, *, base_url: str | None = None) -> JobStatus:
        """Download PCam from Zenodo into data/pcam in the background (`pcam download`, resumable)."""
        args = ["download", "--dest", str(self.download_dest)]
        if base_url:
            args += ["--base-url", base_url]
        outputs = [self.download_dest / f.local_name for f in DOWNLOAD_FILES]
        return start_job(self.jobs_root, DOWNLOAD_JOB, args, outputs=outputs)

    def download_status(self) -> JobStatus | None:
        return job_status(self.jobs_root, DOWNLOAD_JOB)

    def download_progress(self) -> float:
        """Share of the decompressed PCam bytes on disk in data/pcam (finished and partial files)."""
        from ..data.h5 import OFFICIAL_SIZES

        expected = sum(OFFICIAL_SIZES.values()) * math.prod(PATCH_SHAPE)
        dest = self.download_dest
        if not dest.is_dir():
            return 0.0
        have = sum(p.stat().st_size for p in dest.iterdir()
                   if p.is_file() and p.name.startswith("camelyonpatch") and not p.name.endswith(".gz.part"))
        return min(1.0, have / expected)

    def register_download(self) -> DataSource | None:
        """Register data/pcam once after its download finished; None while it is incomplete, or when
        this download was registered before (a user who then removed the source keeps it removed)."""
        status = self.download_status()
        marker = self.jobs_root / f"{DOWNLOAD_JOB}.registered"
        if status is None or status.state != "finished":
            return None
        if marker.exists() and marker.stat().st_mtime >= status.started_at:
            return None
        if any(Path(s.path) == self.download_dest.resolve() for s in self.sources()):
            source = None
        else:
            source = self.add_source(self.download_dest)  # named after its folder: "pcam"
        marker.touch()
        return source


def _demo_files() -> list[str]:
    return [f"camelyonpatch_level_2_split_{s}_{k}.h5" for s in ("train", "valid", "test") for k in ("x", "y")]


