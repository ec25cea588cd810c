"""The workspace's slide library: the slides the dashboard knows (registered folders and files, uploads), each
with its description and thumbnail; their analyses are the slide queue's (`workspace.slide_queue`).

    WORKSPACE/slides/
      library.json              registered folders and files, and slides removed from a folder (rewritten atomically)
      uploads/                  uploaded slide files (the only slides the library owns and deletes)
      demo/slide.tif            the SYNTHETIC demo slide a first start makes
      cache/<slide id>.json     a slide's description (size, resolution, vendor, content fingerprint...), keyed by
                                its size and mtime
      cache/<slide id>.png      its thumbnail, made once
      analyses/, queue.json, jobs/, *.lock   the slide queue's (`workspace.slide_queue`)

A slide is read where it is, never copied: a registered folder is listed again on every `slides()`. A slide's
id is the SHA-1 of its resolved path (16 hex digits): stable across restarts, one per file. The same slide
in two places (uploaded and in a registered folder) is two entries, each with its origin, recognised as the
same slide by its content fingerprint (`fingerprint`: the file's size and the SHA-256 of its first and last
MiB, cheap on a slide of gigabytes; files that differ only in between are taken for one slide) and sharing
their analyses: an analysis of either copy is an analysis of both.

Removing a slide: an upload's file is deleted (the library owns it) with its analyses; a file registered alone
is forgotten; a slide of a registered folder is hidden from the listing (its file is never touched).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import zipfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from ..bundled import BUNDLED
from ..fileio import atomic_write_json, atomic_write_with, read_json
from ..slides.folder import AnalysisFolder
from ..slides.reader import SLIDE_SUFFIXES, MissingResolution, check_mpp, open_slide, slide_bytes, slide_files
from .slide_queue import STATES, AnalysisState, SlideQueue, run_key

log = logging.getLogger(__name__)

UPLOAD_LIMIT_ENV = "PCAM_SLIDE_UPLOAD_MAX_GB"
DEFAULT_UPLOAD_LIMIT = 4 * 1024**3  # bytes
DEMO_SLIDE_ENV = "PCAM_DEMO_SLIDE"  # WIDTHxHEIGHT of the demo slide a first start makes, or "off"
DEMO_SLIDE_SIZE = (8000, 6000)  # builds in ~5 s, scored by the bundled model at stride 32 in ~15 s on 2 cores
THUMB_PX = 256  # a thumbnail's longer side
FINGERPRINT_BYTES = 1 << 20  # a slide's content fingerprint reads this much from its start and from its end
ORIGINS = {"upload": "uploaded", "folder": "in a registered folder", "file": "registered file"}
_CHUNK = 1 << 20
_LOCK = threading.Lock()


def slide_id(path: str | Path) -> str:
    """The stable id of a slide file: 16 hex digits of the SHA-1 of its resolved path."""
    return hashlib.sha1(str(Path(path).expanduser().resolve()).encode("utf-8")).hexdigest()[:16]


def fingerprint(path: str | Path, *, size: int | None = None) -> str:
    """A slide file's content fingerprint: its size and the SHA-256 of its first and last `FINGERPRINT_BYTES`
    (the whole file when smaller than twice that); of a DICOM series folder, its files'. Cheap on a slide of
    gigabytes; two files that differ only in between are taken for the same slide."""
    path = Path(path)
    if path.is_dir():  # a DICOM series: the fingerprints of its files, in name order
        return "series-" + hashlib.sha256("".join(fingerprint(f) for f in sorted(path.glob("*.dcm"))).encode()).hexdigest()[:32]
    size = path.stat().st_size if size is None else size
    digest = hashlib.sha256(str(size).encode("ascii"))
    with open(path, "rb") as handle:
        if size <= 2 * FINGERPRINT_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(FINGERPRINT_BYTES))
            handle.seek(size - FINGERPRINT_BYTES)
            digest.update(handle.read(FINGERPRINT_BYTES))
    return f"{size}-{digest.hexdigest()[:32]}"


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
    mpp_source: str | None = None  # "metadata" (the file's), "given" (by a person, `set_mpp`); None: not known yet
    thumbnail: str | None = None  # a cached PNG
    error: str | None = None
    fingerprint: str | None = None  # of its content (`fingerprint`); None when the file cannot be read
    version: str = ""  # changes when the file does (its size and mtime): in the URLs of its tiles
    copies: tuple[str, ...] = ()  # the ids of the other entries with the same content, when listed by `slides()`

    @property
    def needs_mpp(self) -> bool:
        """Readable, but its file does not say its resolution: it must be given (`SlideLibrary.set_mpp`) before an
        analysis, never guessed."""
        return self.error is None and self.mpp is None

    @property
    def label(self) -> str:
        return f"{self.name} (SYNTHETIC)" if self.synthetic else self.name

    @property
    def origin_text(self) -> str:
        """Where the slide comes from, in words: "uploaded", "in a registered folder (/data/slides)"..."""
        words = ORIGINS.get(self.origin, self.origin)
        return f"{words} ({Path(self.path).parent})" if self.origin == "folder" else words


class SlideLibrary:
    """The slides of a workspace and their analyses (see the module docstring for the layout)."""

    def __init__(self, root: str | Path, *, upload_max_bytes: int | None = None) -> None:
        self.workspace = Path(root).expanduser().resolve()
        self.root = self.workspace / "slides"
        self.upload_max_bytes = upload_limit() if upload_max_bytes is None else int(upload_max_bytes)
        self.queue = SlideQueue(self.root, self.workspace)

    library_json = property(lambda self: self.root / "library.json")
    uploads = property(lambda self: self.root / "uploads")
    cache = property(lambda self: self.root / "cache")
    analyses_root = property(lambda self: self.queue.analyses_root)
    jobs = property(lambda self: self.queue.jobs)
    queue_json = property(lambda self: self.queue.queue_json)
    demo_slide = property(lambda self: self.root / "demo" / "slide.tif")

    # -- the registry ------------------------------------------------------------------------------
    def initialised(self) -> bool:
        return self.library_json.exists()

    def _load(self) -> dict[str, list[dict[str, Any]]]:
        raw = read_json(self.library_json, default=None)
        if raw is None and self.library_json.exists():
            raise ValueError(f"{self.library_json} is damaged; fix it by hand, or delete it to start over (no slide is deleted with it)")
        raw = raw or {}
        return {key: list(raw.get(key, [])) for key in ("folders", "files", "hidden", "resolutions")}

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
            registry["hidden"] = [h for h in registry["hidden"] if str(Path(h["path"]).parent) != folder]
            self._save(registry)

    def set_mpp(self, slide: str, mpp: float) -> SlideEntry:
        """Give the resolution (microns per level-0 pixel) of a slide whose file does not say it (0.25 for a 40x scan,
        0.5 for 20x); it is kept for that file and passed to its analyses (`pcam slide --mpp`)."""
        mpp = check_mpp(mpp)
        try:
            entry = self.lookup(slide)
        except KeyError as err:
            raise ValueError(str(err.args[0])) from None
        with _LOCK:
            registry = self._load()
            registry["resolutions"] = [r for r in registry["resolutions"] if r["path"] != entry.path]
            registry["resolutions"].append({"path": entry.path, "mpp": mpp, "given_at": time.time()})
            self._save(registry)
        return self.lookup(slide)

    def _given_mpp(self, path: Path) -> float | None:
        return next((float(r["mpp"]) for r in self._load()["resolutions"] if r["path"] == str(path)), None)

    def add_file(self, path: str | Path) -> SlideEntry:
        """Register one slide file where it is (the demo slide is registered so)."""
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise FileNotFoundError(f"slide not found: {file}")
        with _LOCK:
            registry = self._load()
            if str(file) not in (entry["path"] for entry in registry["files"]):
                registry["files"].append({"path": str(file), "added_at": time.time()})
            registry["hidden"] = [h for h in registry["hidden"] if h["path"] != str(file)]
            self._save(registry)
        return self.entry(slide_id(file))

    def add_upload(self, name: str, data: bytes | IO[bytes]) -> SlideEntry:
        """Store an uploaded slide (bytes, or a binary stream read in chunks) in uploads/ under `name`
        (made unique), refusing it above the size limit and when it is not a slide that can be read."""
        base = Path(str(name)).name
        stem, suffix = Path(base).stem, Path(base).suffix.lower()
        if suffix not in (*SLIDE_SUFFIXES, ".zip"):
            raise ValueError(f"{base!r} is not a slide file type; expected one of {', '.join(SLIDE_SUFFIXES)}, "
                             "or a .zip of one scan's DICOM series")
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
            if suffix == ".zip":
                return self._add_series_zip(tmp, base, stem, limit)
            try:
                with open_slide(tmp, mpp=1.0):  # readable at all? (its resolution is checked when listed)
                    pass
            except ValueError as err:  # name the upload, not the hidden temporary file it was written to
                raise ValueError(str(err).replace(str(tmp), base).replace(tmp.name, base)) from None
            with _LOCK:
                target, k = self.uploads / f"{stem}{suffix}", 2
                while target.exists():
                    target, k = self.uploads / f"{stem}-{k}{suffix}", k + 1
                os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.entry(slide_id(target))

    def _add_series_zip(self, archive: Path, base: str, stem: str, limit: int) -> SlideEntry:
        """Unpack a .zip holding one scan's DICOM series (its volume, label and overview files) into uploads/<stem>/,
        refusing members that would land outside it, more than `limit` bytes unpacked, and anything that is not
        exactly one readable series."""
        unpacked = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.uploads))
        try:
            try:
                with zipfile.ZipFile(archive) as zipped:
                    members = [m for m in zipped.infolist() if not m.is_dir()]
                    if sum(m.file_size for m in members) > limit:
                        raise ValueError(f"{base}: unpacked it is larger than the limit of {limit / 1024**3:.2f} GiB "
                                         f"({UPLOAD_LIMIT_ENV}); register the folder that holds the series instead")
                    for m in members:
                        target = (unpacked / m.filename).resolve()
                        if not target.is_relative_to(unpacked.resolve()):
                            raise ValueError(f"{base}: refused: the member {m.filename!r} would be written outside its folder")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with zipped.open(m) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst, _CHUNK)
            except zipfile.BadZipFile as err:
                raise ValueError(f"{base}: not a readable .zip file ({err})") from None
            dcm = sorted(unpacked.rglob("*.dcm"))
            if not dcm:
                raise ValueError(f"{base}: the .zip holds no DICOM files (.dcm); a .zip is for one scan's DICOM series")
            folders = {f.parent for f in dcm}
            if len(folders) > 1:
                raise ValueError(f"{base}: the .zip holds DICOM files in {len(folders)} folders; upload one scan's series a zip")
            series = slide_files(folders.pop())
            if len(series) != 1:
                raise ValueError(f"{base}: the .zip holds {len(series)} slides; upload one scan's DICOM series a zip")
            try:
                with open_slide(series[0], mpp=1.0):
                    pass
            except ValueError as err:
                raise ValueError(str(err).replace(str(unpacked), base)) from None
            for f in dcm:  # one folder per series: uploads/<stem>/
                os.replace(f, unpacked / f.name)
            for sub in sorted((d for d in unpacked.rglob("*") if d.is_dir()), reverse=True):
                shutil.rmtree(sub)  # what is left besides the series (other files of the zip) goes
            with _LOCK:
                target, k = self.uploads / stem, 2
                while target.exists():
                    target, k = self.uploads / f"{stem}-{k}", k + 1
                os.replace(unpacked, target)
        except BaseException:
            shutil.rmtree(unpacked, ignore_errors=True)
            raise
        finally:
            archive.unlink(missing_ok=True)
        return self.entry(slide_id(target))

    def remove(self, slide: str) -> SlideEntry:
        """Remove a slide from the library, stopping its analyses: an upload's file is deleted (the library owns
        it) with its analyses; a file registered alone is forgotten; a slide of a registered folder is hidden
        from the listing, its file left where it is. Returns the entry removed."""
        entry = self.entry(slide)
        self.queue.stop(entry.id)
        with _LOCK:
            registry = self._load()
            if entry.origin == "upload":
                if Path(entry.path).is_dir():  # an uploaded DICOM series
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    Path(entry.path).unlink(missing_ok=True)
            elif entry.origin == "folder":
                registry["hidden"].append({"path": entry.path, "removed_at": time.time()})
            registry["files"] = [f for f in registry["files"] if f["path"] != entry.path]
            self._save(registry)
        if entry.origin == "upload":
            self.queue.forget(entry.id)
        for suffix in (".json", ".png"):
            (self.cache / f"{entry.id}{suffix}").unlink(missing_ok=True)
        log.info("removed %s (%s) from the slide library", entry.path, entry.origin)
        return entry

    # -- listing -----------------------------------------------------------------------------------
    def _files(self) -> list[tuple[Path, str]]:
        found: dict[Path, str] = {}
        registry = self._load()
        hidden = {entry["path"] for entry in registry["hidden"]}
        for entry in registry["files"]:
            found.setdefault(Path(entry["path"]), "file")
        if self.uploads.is_dir():
            for p in slide_files(self.uploads):
                found.setdefault(p, "upload")
        for entry in registry["folders"]:
            folder = Path(entry["path"])
            if folder.is_dir():
                for p in slide_files(folder):
                    if str(p.resolve()) not in hidden:
                        found.setdefault(p.resolve(), "folder")
        return list(found.items())

    def slides(self) -> list[SlideEntry]:
        """Every slide: registered files, uploads, then each registered folder's slides (listed afresh), each
        with the ids of its copies (the same content elsewhere). A file that cannot be opened is listed with
        its error. Also restarts the queue runner if it died."""
        self.queue.ensure_runner()
        entries = [self._describe(path, origin) for path, origin in self._files()]
        by_content: dict[str, list[str]] = {}
        for entry in entries:
            if entry.fingerprint:
                by_content.setdefault(entry.fingerprint, []).append(entry.id)
        return [replace(entry, copies=tuple(i for i in by_content.get(entry.fingerprint or "", []) if i != entry.id))
                for entry in entries]

    def entry(self, slide: str) -> SlideEntry:
        """The slide with id `slide`, with its copies; ValueError when the library has none."""
        for entry in self.slides():
            if entry.id == slide:
                return entry
        raise ValueError(f"no slide with id {slide!r} in the library")

    def lookup(self, slide: str) -> SlideEntry:
        """The slide with id `slide`: for routes that take an id from a URL and must never serve a path
        outside the library. `KeyError` naming it when there is none (ValueError for a malformed id)."""
        if not isinstance(slide, str) or not re.fullmatch(r"[0-9a-f]{16}", slide):
            raise ValueError(f"slide id {slide!r} is not valid: 16 hex digits")
        for path, origin in self._files():
            if slide_id(path) == slide:
                return self._describe(path, origin)
        raise KeyError(f"no registered slide {slide!r}")

    def _describe(self, path: Path, origin: str) -> SlideEntry:
        """The slide's entry, from the cache when its size and mtime did not change; the thumbnail made once."""
        sid = slide_id(path)
        base = {"id": sid, "path": str(path), "name": path.name, "origin": origin}
        try:
            stat = path.stat()
        except OSError as err:
            return SlideEntry(**base, file_size=0, error=f"cannot read {path}: {err.strerror or err}")
        meta_path, thumb_path = self.cache / f"{sid}.json", self.cache / f"{sid}.png"
        given = self._given_mpp(path)
        stamp = [stat.st_size, stat.st_mtime_ns, given]
        meta = read_json(meta_path, default=None)
        if not meta or meta.get("stamp") != stamp or "fingerprint" not in meta:
            meta = {"stamp": stamp, **self._read_meta(path, thumb_path, given)}
            try:
                meta["fingerprint"] = fingerprint(path, size=None if path.is_dir() else stat.st_size)
            except OSError as err:
                meta["error"] = meta.get("error") or f"cannot read {path}: {err.strerror or err}"
                meta["fingerprint"] = None
            atomic_write_json(meta_path, meta)
        return SlideEntry(**base, file_size=slide_bytes(path), width=meta.get("width"), height=meta.get("height"), mpp=meta.get("mpp"),
                          vendor=meta.get("vendor"), backend=meta.get("backend"), levels=meta.get("levels"),
                          synthetic=bool(meta.get("synthetic")), mpp_source=meta.get("mpp_source"), error=meta.get("error"),
                          fingerprint=meta.get("fingerprint"),
                          version=format(stat.st_mtime_ns, "x") + format(stat.st_size, "x"),
                          thumbnail=str(thumb_path) if thumb_path.exists() and not meta.get("error") else None)

    def _read_meta(self, path: Path, thumb_path: Path, mpp: float | None = None) -> dict[str, Any]:
        """Size, levels, resolution and a thumbnail. A file without its resolution is listed, with `mpp` None (to
        be given), and read for its picture at a nominal scale that nothing else uses."""
        known = True
        try:
            try:
                slide = open_slide(path, mpp=mpp)
            except MissingResolution:
                slide, known = open_slide(path, mpp=1.0), False
            with slide:
                info = slide.describe()
                w, h = slide.dimensions
                scale = THUMB_PX / max(w, h)
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                thumb = slide.read_scaled(0, 0, w, h, size)
        except (OSError, ValueError) as err:
            return {"error": str(err)}
        self.cache.mkdir(parents=True, exist_ok=True)
        atomic_write_with(thumb_path, lambda handle: Image.fromarray(np.asarray(thumb)).save(handle, format="PNG"))
        return {"width": info["width"], "height": info["height"], "mpp": info["mpp"] if known else None,
                "mpp_source": info["mpp_source"] if known else None, "vendor": info["vendor"],
                "backend": info["backend"], "levels": len(info["levels"]), "synthetic": bool(info["synthetic"])}

    # -- analyses (the slide queue's) ----------------------------------------------------------------
    def analysis_folder(self, slide: str, run: str | Path = BUNDLED, *, stride: int = 32) -> AnalysisFolder:
        return self.queue.analysis_folder(slide, run, stride=stride)

    def analysis(self, slide: str, run: str | Path = BUNDLED, *, stride: int = 32) -> AnalysisState:
        """Where the analysis of `slide` with `run` at `stride` stands (see `AnalysisState`). Also restarts
        the queue runner if it died."""
        self.queue.ensure_runner()
        return self.queue.state(slide, run, stride)

    def analyses(self, slide: str | SlideEntry) -> list[AnalysisState]:
        """Every analysis of the slide and its copies, by any model and stride (done ones first, newest first).
        Also restarts the queue runner if it died."""
        entry = slide if isinstance(slide, SlideEntry) else self.entry(slide)
        self.queue.ensure_runner()
        return self.queue.analyses([entry.id, *entry.copies])

    def start(self, slides: list[str] | str, run: str | Path = BUNDLED, *, stride: int = 32,
              threshold: float | None = None) -> list[AnalysisState]:
        """Queue the analysis of each slide with `run` (the bundled model by default) at the run's own threshold
        (or `threshold`); one already queued, running or done (for this slide or a copy of it) is left as it is.
        A stopped or failed one starts again, resuming its map."""
        ids = [slides] if isinstance(slides, str) else list(slides)
        listed = {entry.id: entry for entry in self.slides()}
        missing = [s for s in ids if s not in listed]
        if missing:
            raise ValueError(f"no slide with id {missing[0]!r} in the library")
        entries = [listed[s] for s in ids]
        for entry in entries:
            if entry.error:
                raise ValueError(f"{entry.name} cannot be analysed: {entry.error}")
            if entry.needs_mpp:
                raise ValueError(f"{entry.name}: its file does not say its resolution; give it first (microns per pixel, "
                                 "e.g. 0.25 for a 40x scan, 0.5 for 20x): a slide is never analysed at a guessed scale")
        key = run_key(run, stride)
        states: dict[str, AnalysisState] = {}
        todo = []
        for entry in entries:
            made = [s for s in self.queue.analyses([entry.id, *entry.copies])
                    if s.key == key and s.state in ("queued", "running", "done")]
            if made:
                states[entry.id] = made[0]
            else:
                todo.append((entry.id, entry.path, entry.mpp if entry.mpp_source == "given" else None))
        for state in self.queue.enqueue(todo, run, stride=stride, threshold=threshold):
            states[state.slide_id] = state
        return [states[entry.id] for entry in entries]

    def stop(self, slide: str, run: str | Path | None = None, *, stride: int | None = None) -> None:
        """Stop the analyses of `slide` (with `run` and `stride` when given): take them off the queue, or
        end the running job. What was scored is kept; a later `start` resumes it."""
        self.queue.stop(slide, run, stride=stride)

    def runner_alive(self) -> bool:
        return self.queue.runner_alive()

    def ensure_runner(self) -> None:
        self.queue.ensure_runner()

    def run_queue(self, *, poll: float = 0.5, lock_wait: float = 5.0) -> int:
        """The queue runner's loop (`pcam slide-queue`): see `SlideQueue.run`."""
        return self.queue.run(poll=poll, lock_wait=lock_wait)

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


__all__ = ["AnalysisState", "DEFAULT_UPLOAD_LIMIT", "DEMO_SLIDE_ENV", "DEMO_SLIDE_SIZE", "STATES", "SlideEntry", "SlideLibrary",
           "UPLOAD_LIMIT_ENV", "demo_slide_size", "fingerprint", "run_key", "slide_id", "upload_limit"]
