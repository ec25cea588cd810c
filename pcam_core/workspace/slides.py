"""The workspace's slide library: the slides the dashboard knows, and their analyses as a queue of
background jobs.

    WORKSPACE/slides/
      library.json              registered folders and files (rewritten atomically)
      uploads/                  uploaded slide files (the only slides the library owns and deletes)
      demo/slide.tif            the SYNTHETIC demo slide a first start makes
      cache/<slide id>.json     a slide's description (size, resolution, vendor...), keyed by its size and mtime
      cache/<slide id>.png      its thumbnail, made once
      analyses/<slide id>/<run key>/   one analysis folder (`pcam_core.slides.folder`) per slide and run
      queue.json                the analyses waiting, in order
      jobs/                     the job record and log of each analysis (`pcam_core.runs.jobs`), queue.log
      runner.lock, queue.lock   the locks described below; runner.json: the pid of the last runner started

A slide is read where it is, never copied: a registered folder is listed again on every `slides()`. A
slide's id is the SHA-1 of its resolved path (16 hex digits): stable across restarts.

The queue. At most one analysis runs at a time (a 2-core machine is full with one). `start` appends to
queue.json and makes sure a queue runner lives: one detached process (`python -m pcam_core slide-queue`)
that holds runner.lock (an flock, released by the kernel when the process dies, however it dies) for
its whole life, takes the first queued item, runs it as a job (`pcam slide ... --resume`, its own
detached process), waits for it to end, and goes on until the queue is empty. So the queue moves on
with no page open, survives a closed tab and a restarted app; should the runner itself be killed, the
next `start`, `slides()` or `analysis()` call starts another (which first waits for a job still running).
queue.lock makes "the queue is empty, the runner leaves" and "an item is queued, a runner is needed"
exclusive, so no item is ever left behind by a runner on its way out.

Stop: removes a queued item, or writes `stopped` in the analysis folder and ends the job's process
group; the runner goes on with the next item. The map stays resumable: a later start continues it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
from PIL import Image

from ..bundled import BUNDLED, is_bundled
from ..fileio import atomic_write_json, atomic_write_with, read_json
from ..runs.jobs import JobStatus, job_error, job_status, start_job
from ..runs.process import pid_alive, process_start_time, signal_quietly, spawn_detached
from ..slides.folder import AnalysisFolder
from ..slides.reader import SLIDE_SUFFIXES, open_slide, slide_files

log = logging.getLogger(__name__)

UPLOAD_LIMIT_ENV = "PCAM_SLIDE_UPLOAD_MAX_GB"
DEFAULT_UPLOAD_LIMIT = 4 * 1024**3  # bytes
DEMO_SLIDE_ENV = "PCAM_DEMO_SLIDE"  # WIDTHxHEIGHT of the demo slide a first start makes, or "off"
DEMO_SLIDE_SIZE = (8000, 6000)  # builds in ~5 s, scored by the bundled model at stride 32 in ~15 s on 2 cores
THUMB_PX = 256  # a thumbnail's longer side
STATES = ("none", "queued", "running", "done", "failed", "stopped")
_CHUNK = 1 << 20
_LOCK = threading.Lock()


def slide_id(path: str | Path) -> str:
    """The stable id of a slide file: 16 hex digits of the SHA-1 of its resolved path."""
    return hashlib.sha1(str(Path(path).expanduser().resolve()).encode("utf-8")).hexdigest()[:16]


def run_key(run: str | Path, stride: int) -> str:
    """The folder name of a run's analyses: the run's name (`bundled` for the bundled model) and the stride."""
    name = BUNDLED if is_bundled(run) else Path(str(run)).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return f"{name[:80]}-s{int(stride)}"


def upload_limit() -> int:
    """Bytes an upload may have: $PCAM_SLIDE_UPLOAD_MAX_GB (a number of GiB), else 4 GiB."""
    raw = os.environ.get(UPLOAD_LIMIT_ENV, "")
    if not raw:
        return DEFAULT_UPLOAD_LIMIT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{UPLOAD_LIMIT_ENV}={raw!r} must be a number of GiB (e.g. 4)") from None
    if value <= 0:
        raise ValueError(f"{UPLOAD_LIMIT_ENV}={raw!r} must be a positive number of GiB")
    return int(value * 1024**3)


@dataclass(frozen=True)
class SlideEntry:
    """A slide of the library, as the Slides page lists it. `error` says why a file could not be opened
    (the other fields but path, name, size are then empty)."""

    id: str
    path: str
    name: str
    file_size: int
    origin: str  # "folder", "upload" or "file" (registered one by one: the demo slide)
    width: int | None = None
    height: int | None = None
    mpp: float | None = None
    vendor: str | None = None
    backend: str | None = None
    levels: int | None = None
    synthetic: bool = False
    thumbnail: str | None = None  # a cached PNG
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} (SYNTHETIC)" if self.synthetic else self.name


@dataclass(frozen=True)
class AnalysisState:
    """An analysis of one slide with one run: its folder and where it stands. `state` is one of STATES.
    While running: windows done, their total, windows/s and seconds left (None before the first tile)."""

    slide_id: str
    run: str
    key: str
    folder: AnalysisFolder
    state: str
    position: int | None = None  # in the queue (1: next), while queued
    windows_done: int = 0
    windows_total: int | None = None
    windows_per_s: float | None = None
    seconds_left: float | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    report: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, self.windows_done / self.windows_total) if self.windows_total else 0.0


@contextlib.contextmanager
def _flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (made if missing); yields False when not blocking and it is held elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SlideLibrary:
    """The slides of a workspace and their analyses (see the module docstring for the layout)."""

    def __init__(self, root: str | Path, *, upload_max_bytes: int | None = None) -> None:
        self.workspace = Path(root).expanduser().resolve()
        self.root = self.workspace / "slides"
        self.upload_max_bytes = upload_limit() if upload_max_bytes is None else int(upload_max_bytes)

    library_json = property(lambda self: self.root / "library.json")
    uploads = property(lambda self: self.root / "uploads")
    cache = property(lambda self: self.root / "cache")
    analyses = property(lambda self: self.root / "analyses")
    jobs = property(lambda self: self.root / "jobs")
    queue_json = property(lambda self: self.root / "queue.json")
    demo_slide = property(lambda self: self.root / "demo" / "slide.tif")
    _runner_lock = property(lambda self: self.root / "runner.lock")
    _queue_lock = property(lambda self: self.root / "queue.lock")

    # -- the registry ------------------------------------------------------------------------------
    def initialised(self) -> bool:
        return self.library_json.exists()

    def _load(self) -> dict[str, list[dict[str, Any]]]:
        raw = read_json(self.library_json, default=None)
        if raw is None and self.library_json.exists():
            raise ValueError(f"{self.library_json} is damaged; fix it by hand, or delete it to start over (no slide is deleted with it)")
        raw = raw or {}
        return {"folders": list(raw.get("folders", [])), "files": list(raw.get("files", []))}

    def _save(self, registry: dict[str, list[dict[str, Any]]]) -> None:
        atomic_write_json(self.library_json, {"version": 1, **registry})

    def folders(self) -> list[str]:
        return [entry["path"] for entry in self._load()["folders"]]

    def add_folder(self, path: str | Path) -> Path:
        """Register a folder of slides by its path (nothing is copied; it is listed again on every `slides()`)."""
        text = str(path).strip()
        if not text:
            raise ValueError("give the path of a folder of slides")
        folder = Path(text).expanduser().resolve()
        if not folder.exists():
            raise FileNotFoundError(f"folder not found: {folder}")
        if not folder.is_dir():
            raise ValueError(f"{folder} is a file; give the folder that holds the slides (or upload the file)")
        if not slide_files(folder):
            raise FileNotFoundError(f"no slide files in {folder} (looked for {', '.join(SLIDE_SUFFIXES)})")
        with _LOCK:
            registry = self._load()
            if str(folder) in (entry["path"] for entry in registry["folders"]):
                raise ValueError(f"{folder} is already registered")
            registry["folders"].append({"path": str(folder), "added_at": time.time()})
            self._save(registry)
        return folder

    def remove_folder(self, path: str | Path) -> None:
        """Forget a registered folder; its slides stay where they are."""
        folder = str(Path(path).expanduser().resolve())
        with _LOCK:
            registry = self._load()
            kept = [entry for entry in registry["folders"] if entry["path"] != folder]
            if len(kept) == len(registry["folders"]):
                raise ValueError(f"{folder} is not a registered folder; registered: {', '.join(self.folders()) or 'none'}")
            registry["folders"] = kept
            self._save(registry)

    def add_file(self, path: str | Path) -> SlideEntry:
        """Register one slide file where it is (the demo slide is registered so)."""
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise FileNotFoundError(f"slide not found: {file}")
        with _LOCK:
            registry = self._load()
            if str(file) not in (entry["path"] for entry in registry["files"]):
                registry["files"].append({"path": str(file), "added_at": time.time()})
                self._save(registry)
        return self.entry(slide_id(file))

    def add_upload(self, name: str, data: bytes | IO[bytes]) -> SlideEntry:
        """Store an uploaded slide (bytes, or a binary stream read in chunks) in uploads/ under `name`
        (made unique), refusing it above the size limit and when it is not a slide that can be read."""
        base = Path(str(name)).name
        stem, suffix = Path(base).stem, Path(base).suffix.lower()
        if suffix not in SLIDE_SUFFIXES:
            raise ValueError(f"{base!r} is not a slide file type; expected one of {', '.join(SLIDE_SUFFIXES)}")
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:100] or "slide"
        limit = self.upload_max_bytes
        self.uploads.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=suffix, dir=self.uploads)
        tmp = Path(tmp_name)
        try:
            written = 0
            with os.fdopen(fd, "wb") as handle:
                chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else iter(lambda: data.read(_CHUNK), b"")
                for chunk in chunks:
                    written += len(chunk)
                    if written > limit:
                        raise ValueError(f"{base}: the upload is larger than the limit of {limit / 1024**3:.2f} GiB "
                                         f"({UPLOAD_LIMIT_ENV}); register the folder that holds it instead (it is then read where it is)")
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            if written == 0:
                raise ValueError(f"{base}: the upload is empty (0 bytes)")
            with open_slide(tmp, mpp=1.0):  # readable at all? (its resolution is checked when listed)
                pass
            with _LOCK:
                target, k = self.uploads / f"{stem}{suffix}", 2
                while target.exists():
                    target, k = self.uploads / f"{stem}-{k}{suffix}", k + 1
                os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.entry(slide_id(target))

    def remove(self, slide: str) -> None:
        """Remove a slide: an upload is deleted (the library owns it); a file registered alone is forgotten;
        a slide of a registered folder cannot be removed alone (remove the folder)."""
        entry = self.entry(slide)
        if entry.origin == "folder":
            raise ValueError(f"{entry.name} lies in the registered folder {Path(entry.path).parent}; remove the folder "
                             "to forget its slides (they are never deleted)")
        self.stop(entry.id)
        if entry.origin == "upload":
            Path(entry.path).unlink(missing_ok=True)
        else:
            with _LOCK:
                registry = self._load()
                registry["files"] = [f for f in registry["files"] if f["path"] != entry.path]
                self._save(registry)
        for suffix in (".json", ".png"):
            (self.cache / f"{entry.id}{suffix}").unlink(missing_ok=True)

    # -- listing -----------------------------------------------------------------------------------
    def _files(self) -> list[tuple[Path, str]]:
        found: dict[Path, str] = {}
        registry = self._load()
        for entry in registry["files"]:
            found.setdefault(Path(entry["path"]), "file")
        if self.uploads.is_dir():
            for p in slide_files(self.uploads):
                found.setdefault(p, "upload")
        for entry in registry["folders"]:
            folder = Path(entry["path"])
            if folder.is_dir():
                for p in slide_files(folder):
                    found.setdefault(p.resolve(), "folder")
        return list(found.items())

    def slides(self) -> list[SlideEntry]:
        """Every slide: registered files, uploads, then each registered folder's slides (listed afresh).
        A file that cannot be opened is listed with its error. Also restarts the queue runner if it died."""
        self.ensure_runner()
        return [self._describe(path, origin) for path, origin in self._files()]

    def entry(self, slide: str) -> SlideEntry:
        for path, origin in self._files():
            if slide_id(path) == slide:
                return self._describe(path, origin)
        raise ValueError(f"no slide with id {slide!r} in the library")

    def lookup(self, slide: str) -> SlideEntry:
        """The slide with id `slide`: for routes that take an id from a URL and must never serve a path
        outside the library. `KeyError` naming it when there is none (ValueError for a malformed id)."""
        if not isinstance(slide, str) or not re.fullmatch(r"[0-9a-f]{16}", slide):
            raise ValueError(f"slide id {slide!r} is not valid: 16 hex digits")
        try:
            return self.entry(slide)
        except ValueError:
            raise KeyError(f"no registered slide {slide!r}") from None

    def _describe(self, path: Path, origin: str) -> SlideEntry:
        """The slide's entry, from the cache when its size and mtime did not change; the thumbnail made once."""
        sid = slide_id(path)
        base = {"id": sid, "path": str(path), "name": path.name, "origin": origin}
        try:
            stat = path.stat()
        except OSError as err:
            return SlideEntry(**base, file_size=0, error=f"cannot read {path}: {err.strerror or err}")
        meta_path, thumb_path = self.cache / f"{sid}.json", self.cache / f"{sid}.png"
        stamp = [stat.st_size, stat.st_mtime_ns]
        meta = read_json(meta_path, default=None)
        if not meta or meta.get("stamp") != stamp:
            meta = {"stamp": stamp, **self._read_meta(path, thumb_path)}
            atomic_write_json(meta_path, meta)
        return SlideEntry(**base, file_size=stat.st_size, width=meta.get("width"), height=meta.get("height"), mpp=meta.get("mpp"),
                          vendor=meta.get("vendor"), backend=meta.get("backend"), levels=meta.get("levels"),
                          synthetic=bool(meta.get("synthetic")), error=meta.get("error"),
                          thumbnail=str(thumb_path) if thumb_path.exists() and not meta.get("error") else None)

    def _read_meta(self, path: Path, thumb_path: Path) -> dict[str, Any]:
        try:
            with open_slide(path) as slide:
                info = slide.describe()
                w, h = slide.dimensions
                scale = THUMB_PX / max(w, h)
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                thumb = slide.read_scaled(0, 0, w, h, size)
        except (OSError, ValueError) as err:
            return {"error": str(err)}
        self.cache.mkdir(parents=True, exist_ok=True)
        atomic_write_with(thumb_path, lambda handle: Image.fromarray(np.asarray(thumb)).save(handle, format="PNG"))
        return {"width": info["width"], "height": info["height"], "mpp": info["mpp"], "vendor": info["vendor"],
                "backend": info["backend"], "levels": len(info["levels"]), "synthetic": bool(info["synthetic"])}

    # -- analyses ----------------------------------------------------------------------------------
    def analysis_folder(self, slide: str, run: str | Path = BUNDLED, *, stride: int = 32) -> AnalysisFolder:
        return AnalysisFolder(self.analyses / slide / run_key(run, stride))

    def _job_name(self, slide: str, key: str) -> str:
        return f"analysis-{slide}-{key}"

    def _queue(self) -> list[dict[str, Any]]:
        return list(read_json(self.queue_json, default=None) or [])

    def analysis(self, slide: str, run: str | Path = BUNDLED, *, stride: int = 32) -> AnalysisState:
        """Where the analysis of `slide` with `run` at `stride` stands (see `AnalysisState`). Also restarts
        the queue runner if it died."""
        self.ensure_runner()
        return self._state(slide, run, stride)

    def _state(self, slide: str, run: str | Path, stride: int) -> AnalysisState:
        key = run_key(run, stride)
        folder = self.analysis_folder(slide, run, stride=stride)
        base = {"slide_id": slide, "run": str(run), "key": key, "folder": folder}
        if folder.is_complete():
            summary = read_json(folder.summary_json, default=None)
            return AnalysisState(**base, state="done", summary=summary,
                                 report=folder.report_html if folder.report_html.exists() else None)
        queue = self._queue()
        for position, item in enumerate(queue, 1):
            if item["slide_id"] == slide and item["key"] == key:
                return AnalysisState(**base, state="queued", position=position, options=item)
        job = job_status(self.jobs, self._job_name(slide, key))
        if job is not None and job.active:
            return AnalysisState(**base, state="running", **_progress(folder))
        if (folder.path / "stopped").exists():
            return AnalysisState(**base, state="stopped", **_progress(folder))
        if job is not None:
            return AnalysisState(**base, state="failed", error=job_error(job))
        return AnalysisState(**base, state="none")

    def start(self, slides: list[str] | str, run: str | Path = BUNDLED, *, stride: int = 32, threshold: float = 0.5) -> list[AnalysisState]:
        """Queue the analysis of each slide with `run` (the bundled model by default); one already queued,
        running or done is left as it is. A stopped or failed one starts again, resuming its map."""
        if stride not in (32, 96):
            raise ValueError(f"stride must be 32 or 96, not {stride}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), not {threshold}")
        if not is_bundled(run) and not Path(str(run)).is_dir():
            raise FileNotFoundError(f"run not found: {run}")
        ids = [slides] if isinstance(slides, str) else list(slides)
        entries = [self.entry(s) for s in ids]
        for entry in entries:
            if entry.error:
                raise ValueError(f"{entry.name} cannot be analysed: {entry.error}")
        key = run_key(run, stride)
        run_arg = BUNDLED if is_bundled(run) else str(Path(str(run)).resolve())
        with _flock(self._queue_lock):
            queue = self._queue()
            for entry in entries:
                if self._state(entry.id, run, stride).state in ("queued", "running", "done"):
                    continue
                (self.analysis_folder(entry.id, run, stride=stride).path / "stopped").unlink(missing_ok=True)
                queue.append({"slide_id": entry.id, "slide": entry.path, "run": run_arg, "key": key, "stride": stride,
                              "threshold": threshold, "queued_at": time.time()})
            atomic_write_json(self.queue_json, queue)
            self._spawn_runner_if_none()
        return [self._state(entry.id, run, stride) for entry in entries]

    def stop(self, slide: str, run: str | Path | None = None, *, stride: int | None = None) -> None:
        """Stop the analyses of `slide` (with `run` and `stride` when given): take them off the queue, or
        end the running job's process group. What was scored is kept; a later `start` resumes it."""
        def match(key: str) -> bool:
            if run is None:
                return True
            return key == run_key(run, stride) if stride is not None else key.rsplit("-s", 1)[0] == run_key(run, 32).rsplit("-s", 1)[0]

        with _flock(self._queue_lock):
            queue = self._queue()
            kept = [item for item in queue if not (item["slide_id"] == slide and match(item["key"]))]
            for item in queue:
                if item not in kept:
                    folder = AnalysisFolder(self.analyses / slide / item["key"])
                    folder.path.mkdir(parents=True, exist_ok=True)
                    (folder.path / "stopped").write_text(str(time.time()))
            atomic_write_json(self.queue_json, kept)
        folder_root = self.analyses / slide
        for record in sorted(self.jobs.glob(f"analysis-{slide}-*.json")) if self.jobs.is_dir() else []:
            job_key = record.stem[len(f"analysis-{slide}-"):]
            status = job_status(self.jobs, record.stem)
            if status is None or not status.active or not match(job_key):
                continue
            (folder_root / job_key).mkdir(parents=True, exist_ok=True)
            (folder_root / job_key / "stopped").write_text(str(time.time()))
            job = read_json(record, default=None) or {}
            if pid_alive(job.get("pid"), job.get("pid_start")):  # its own session: the process group ends with it
                signal_quietly(lambda: os.killpg(job["pid"], signal.SIGTERM))

    # -- the queue runner ------------------------------------------------------------------------------
    def runner_alive(self) -> bool:
        """Whether a queue runner holds the runner lock, or was started and is still on its way to it."""
        record = read_json(self.root / "runner.json", default=None) or {}
        if pid_alive(record.get("pid"), record.get("pid_start")):
            return True
        with _flock(self._runner_lock, blocking=False) as free:
            return not free

    def _spawn_runner_if_none(self) -> None:
        """Start a queue runner unless one lives. Call with queue.lock held."""
        if self.runner_alive():
            return
        self.jobs.mkdir(parents=True, exist_ok=True)
        proc = spawn_detached([sys.executable, "-m", "pcam_core", "slide-queue", "--workspace", str(self.workspace)], self.jobs / "queue.log")
        atomic_write_json(self.root / "runner.json", {"pid": proc.pid, "pid_start": process_start_time(proc.pid), "started_at": time.time()})

    def ensure_runner(self) -> None:
        """Start a queue runner when items wait and none runs (it was killed, or the machine restarted)."""
        if not self.queue_json.exists():
            return
        with _flock(self._queue_lock):
            if self._queue():
                self._spawn_runner_if_none()

    def _active_job(self) -> JobStatus | None:
        if not self.jobs.is_dir():
            return None
        for record in sorted(self.jobs.glob("analysis-*.json")):
            status = job_status(self.jobs, record.stem)
            if status is not None and status.active:
                return status
        return None

    def run_queue(self, *, poll: float = 0.5, lock_wait: float = 5.0) -> int:
        """The queue runner's loop (`pcam slide-queue`): run the queued analyses one at a time until the
        queue is empty; returns how many it started. Leaves at once when another runner holds the lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self._runner_lock, "a+") as lock:
            deadline = time.time() + lock_wait
            while True:  # the lock may be held for a moment by a process checking whether a runner lives
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.time() > deadline:
                        log.info("another queue runner is running in %s", self.root)
                        return 0
                    time.sleep(0.1)
            started = 0
            while True:
                while self._active_job() is not None:  # one left running by a runner that died
                    time.sleep(poll)
                with _flock(self._queue_lock):
                    queue = self._queue()
                    if not queue:
                        fcntl.flock(lock, fcntl.LOCK_UN)  # inside queue.lock: a `start` now spawns a new runner
                        return started
                    item = queue[0]
                    name = self._job_name(item["slide_id"], item["key"])
                    folder = AnalysisFolder(self.analyses / item["slide_id"] / item["key"])
                    folder.path.mkdir(parents=True, exist_ok=True)
                    args = ["slide", "--run", item["run"], "--input", item["slide"], "--out", str(folder.path),
                            "--stride", str(item["stride"]), "--threshold", repr(float(item["threshold"])), "--resume"]
                    try:
                        start_job(self.jobs, name, args, outputs=[folder.summary_json])
                    except RuntimeError:
                        pass  # already running (a runner died between starting it and taking it off the queue)
                    atomic_write_json(self.queue_json, queue[1:])
                started += 1
                while (status := job_status(self.jobs, name)) is not None and status.active:
                    time.sleep(poll)

    # -- first start -------------------------------------------------------------------------------
    def bootstrap(self, *, size: tuple[int, int] | None = None, analyse: bool = True) -> SlideEntry | None:
        """A new library: make the SYNTHETIC demo slide (`size`, default $PCAM_DEMO_SLIDE or 8000x6000; "off"
        makes none), register it and, with `analyse`, queue its analysis with the bundled model. Does
        nothing once library.json exists (a removed demo slide stays removed)."""
        if self.initialised():
            return None
        if size is None:
            size = demo_slide_size()
        if size is None:
            self._save(self._load())
            return None
        from ..slides.demo import DemoSlideSpec, make_demo_slide

        if not self.demo_slide.exists():
            make_demo_slide(self.demo_slide.parent, DemoSlideSpec(width=size[0], height=size[1]))
        with _LOCK:
            registry = self._load()
            registry["files"].append({"path": str(self.demo_slide), "added_at": time.time()})
            self._save(registry)
        entry = self.entry(slide_id(self.demo_slide))
        if analyse:
            self.start(entry.id, BUNDLED, stride=32)
        return entry


def demo_slide_size() -> tuple[int, int] | None:
    """$PCAM_DEMO_SLIDE as (width, height), None for "off"; 8000x6000 when unset."""
    raw = os.environ.get(DEMO_SLIDE_ENV, "").strip().lower()
    if not raw:
        return DEMO_SLIDE_SIZE
    if raw in ("off", "0", "no", "none"):
        return None
    try:
        width, height = (int(v) for v in raw.split("x"))
    except ValueError:
        raise ValueError(f"{DEMO_SLIDE_ENV}={raw!r} must be WIDTHxHEIGHT (e.g. 8000x6000) or off") from None
    return width, height


def _progress(folder: AnalysisFolder) -> dict[str, Any]:
    """windows_done, windows_total, windows_per_s and seconds_left from the analysis's progress.json."""
    progress = read_json(folder.progress_json, default=None) or {}
    done, total, seconds = int(progress.get("windows", 0)), progress.get("windows_total"), float(progress.get("seconds", 0.0))
    rate = done / seconds if done and seconds > 0 else None
    left = (total - done) / rate if rate and total is not None else None
    return {"windows_done": done, "windows_total": total, "windows_per_s": rate, "seconds_left": left}


__all__ = ["AnalysisState", "DEFAULT_UPLOAD_LIMIT", "DEMO_SLIDE_ENV", "DEMO_SLIDE_SIZE", "STATES", "SlideEntry", "SlideLibrary",
           "UPLOAD_LIMIT_ENV", "demo_slide_size", "run_key", "slide_id", "upload_limit"]
