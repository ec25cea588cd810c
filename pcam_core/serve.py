"""`pcam serve`: an HTTP API over a trained run (FastAPI on uvicorn; see docs/serve.md).

A face, as thin as a CLI command: each route parses, calls the engine the dashboard calls, and formats
JSON. Uploaded patches are checked by `uploads.read_uploads` (the Predict page's rules and messages) and
scored by `api.Predictor.predict`; whole slides are analysed by `pcam slide` in a background job process
(`runs.jobs.start_job`), so the server keeps answering while a slide is scored.

Patches from requests that arrive together are scored in one forward pass: a `MicroBatcher` collects
them for a few milliseconds (or up to `max_batch` patches) and hands each request its own results.

Every error is JSON `{"error": message}` with a 4xx status for what the client can fix, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from . import __version__
from .decision import call
from .api import DEFAULT_THRESHOLD, Predictor, load_predictor
from .calibration import load_calibration
from .fileio import read_json
from .runs.jobs import job_error, job_status, start_job
from .slides.batch import SLIDE_SUFFIXES
from .slides.folder import AnalysisFolder
from .uploads import read_uploads

log = logging.getLogger(__name__)

TOKEN_ENV = "PCAM_API_TOKEN"
FILES_FIELD = "files"
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may hold; larger ones are refused with 413 before the model sees them."""

    max_file_mb: float = 2.0  # one image file (a PCam patch is 27 KB as TIFF)
    max_request_mb: float = 64.0  # the whole request body
    max_files: int = 1024  # files in one request
    max_batch: int = 256  # patches in one forward pass (the micro-batcher's cap)
    batch_wait_ms: float = 2.0  # how long the micro-batcher waits for more requests
    max_slide_jobs: int = 2  # whole-slide analyses running at once

    def __post_init__(self) -> None:
        for name in ("max_file_mb", "max_request_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_files", "max_batch", "max_slide_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be 0 or more, got {self.batch_wait_ms}")


class ApiError(Exception):
    """An error the client can fix: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- the micro-batcher -------------------------------------------------------------------------------

class MicroBatcher:
    """Scores (n, 96, 96, 3) patch arrays submitted by concurrent requests in shared forward passes.

    The first waiting submission opens a batch; submissions arriving within `wait_s` (or until `max_batch`
    patches are gathered) join it; `score` runs once on the concatenation in a worker thread (one at a
    time: the model is not shared between threads) and each submission gets its slice of the result."""

    def __init__(self, score: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 256, wait_s: float = 0.002) -> None:
        self.score, self.max_batch, self.wait_s = score, max_batch, wait_s
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcam-forward")
        self.passes = 0  # forward passes run (the batching's effect: fewer passes than requests)
        self.patches = 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((pixels, future))
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            size = len(items[0][0])
            deadline = loop.time() + self.wait_s
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait() if self.wait_s == 0 else await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                items.append(item)
                size += len(item[0])
            batch = np.concatenate([pixels for pixels, _ in items]) if len(items) > 1 else items[0][0]
            try:
                probs = await loop.run_in_executor(self._executor, self.score, batch)
            except Exception as err:  # each waiting request learns of it; the loop goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.passes += 1
            self.patches += len(batch)
            start = 0
            for pixels, future in items:
                if not future.done():  # a request whose client went away was cancelled
                    future.set_result(probs[start : start + len(pixels)])
                start += len(pixels)


# -- request bodies ----------------------------------------------------------------------------------

class SlideRequest(BaseModel):
    """A whole-slide analysis of a slide file in the server's slides folder."""

    path: str = Field(description="the slide file, relative to the server's --slides-dir")
    stride: int = Field(32, description="cell size in PCam-scale pixels: 32 or 96 (9x cheaper)")
    tta: bool = Field(False, description="average the 8 symmetries of the square (8x slower)")
    threshold: float = Field(DEFAULT_THRESHOLD, description="probability at which a cell counts as tumour")


def resolve_slide(slides_dir: Path, name: str) -> Path:
    """The slide file `name` names inside `slides_dir`, refusing any path that leads outside it (absolute
    paths, '..', symlinks pointing elsewhere): ApiError 400 for a bad name, 404 for a missing file."""
    root = slides_dir.resolve()
    if not name or "\x00" in name:
        raise ApiError(400, f"path {name!r}: give a slide file's path relative to the slides folder")
    candidate = Path(name)
    if candidate.is_absolute():
        raise ApiError(400, f"path {name!r} is absolute; give it relative to the slides folder")
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise ApiError(400, f"path {name!r} leads outside the slides folder; only files inside it can be analysed")
    if not resolved.exists():
        raise ApiError(404, f"slide not found: {name} (in the slides folder)")
    if not resolved.is_file():
        raise ApiError(400, f"path {name!r} is not a file; give one slide file")
    if resolved.suffix.lower() not in SLIDE_SUFFIXES:
        raise ApiError(400, f"{name}: not a slide file type; expected one of {', '.join(SLIDE_SUFFIXES)}")
    return resolved


# -- the app -----------------------------------------------------------------------------------------

def create_app(
    run: str | os.PathLike,
    *,
    token: str | None = None,
    slides_dir: str | os.PathLike | None = None,
    work_dir: str | os.PathLike = "serve-work",
    device: str = "auto",
    limits: Limits = Limits(),
    predictor: Predictor | None = None,
) -> FastAPI:
    """The API serving `run`'s model (its best checkpoint, through `api.load_predictor`).

    `token`: when given, every route but `/v1/health` (and the docs) needs `Authorization: Bearer TOKEN`.
    `slides_dir`: the only folder whose slides `POST /v1/slides` may analyse (None: slide analysis off).
    `work_dir`: where slide analyses and their job records are written."""
    predictor = predictor or load_predictor(run, device=device)
    run_name = str(run)
    calibration = load_calibration(run)  # the run's temperature (the bundled model ships one), or None
    slides_root = Path(slides_dir).resolve() if slides_dir is not None else None
    if slides_root is not None and not slides_root.is_dir():
        raise FileNotFoundError(f"slides folder not found: {slides_dir}")
    work = Path(work_dir)
    jobs_root, analyses_root = work / "jobs", work / "slides"
    batchers = {tta: MicroBatcher(lambda x, tta=tta: predictor.predict(x, tta=tta), max_batch=limits.max_batch,
                                  wait_s=limits.batch_wait_ms / 1000) for tta in (False, True)}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        for batcher in batchers.values():
            batcher.start()
        yield
        for batcher in batchers.values():
            await batcher.stop()

    app = FastAPI(title="pcam_core inference API", version=__version__, lifespan=lifespan, description=(
        "Tumour probabilities of 96x96 PatchCamelyon-like H&E patches and whole-slide analyses with a trained "
        f"`pcam_core` run ({predictor.model_name}). Research use only; not a diagnosis."))
    app.state.batchers = batchers
    bearer = HTTPBearer(auto_error=False, description="the server's --token (or $PCAM_API_TOKEN)")

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'"
                           if credentials is None else "wrong token")

    _install_error_handlers(app)
    app.add_middleware(_BodyLimit, max_bytes=int(limits.max_request_mb * MB))
    auth = [Depends(require_token)]

    @app.get("/v1/health", summary="liveness: the model is loaded (no token needed)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.model_name, "version": __version__}

    @app.get("/v1/model", dependencies=auth, summary="the model this server scores with")
    async def model_info() -> dict[str, Any]:
        return {"model": predictor.model_name, "run": run_name, "checkpoint_epoch": predictor.epoch,
                "threshold": predictor.threshold, "device": str(predictor.device),
                "slides": slides_root is not None, "limits": limits.__dict__,
                "batching": {("tta" if tta else "one_pass"): {"forward_passes": b.passes, "patches": b.patches}
                             for tta, b in batchers.items()}}

    @app.post("/v1/predict", dependencies=auth, summary="tumour probability of each uploaded 96x96 patch",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": [FILES_FIELD],
                  "properties": {FILES_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})
    async def predict(request: Request, threshold: float = DEFAULT_THRESHOLD, tta: bool = False) -> dict[str, Any]:
        """Multipart form field `files`: one or many image files. A file that cannot be scored (not an
        image, not 96x96, a repeated id) is listed in `refused` with the reason; grayscale, RGBA and
        16-bit images are converted to RGB and scored with a note. `threshold` sets the calls only."""
        if not 0.0 <= threshold <= 1.0:
            raise ApiError(400, f"threshold must be within [0, 1], got {threshold}")
        files = await _read_files(request, limits)
        accepted, refused = await run_in_threadpool(read_uploads, files)
        probs = await batchers[tta].submit(np.stack([p.pixels for p in accepted])) if accepted else np.empty(0)
        calibrated = calibration.apply(np.asarray(probs)) if calibration else None
        return {
            "model": predictor.model_name, "run": run_name, "threshold": threshold, "tta": tta,
            "temperature": calibration.temperature if calibration else None,
            "predictions": [{"name": p.name, "id": p.id, "probability": float(prob),
                             **({"probability_calibrated": float(calibrated[i])} if calibration else {}),
                             "call": call(prob, threshold), "notes": list(p.notes)}
                            for i, (p, prob) in enumerate(zip(accepted, probs))],
            "refused": [{"name": name, "reason": reason} for name, reason in refused],
        }

    @app.post("/v1/slides", dependencies=auth, status_code=202, summary="start a whole-slide analysis")
    async def start_slide(body: SlideRequest) -> dict[str, Any]:
        if slides_root is None:
            raise ApiError(400, "slide analysis is off on this server: start it with --slides-dir DIR")
        if body.stride not in (32, 96):
            raise ApiError(400, f"stride must be 32 or 96, not {body.stride}")
        if not 0 < body.threshold < 1:
            raise ApiError(400, f"threshold must be between 0 and 1 (exclusive), not {body.threshold}")
        slide = resolve_slide(slides_root, body.path)
        running = _running_jobs(jobs_root)
        if running >= limits.max_slide_jobs:
            raise ApiError(429, f"{running} slide analyses are running (the limit is {limits.max_slide_jobs}); try again later")
        job_id = uuid.uuid4().hex
        folder = AnalysisFolder(analyses_root / job_id)
        args = ["slide", "--run", run_name, "--input", str(slide), "--out", str(folder.path), "--stride", str(body.stride),
                "--threshold", repr(body.threshold), "--device", device, "--tta" if body.tta else "--no-tta"]
        status = await run_in_threadpool(start_job, jobs_root, job_id, args, outputs=[folder.summary_json])
        return {"id": job_id, "state": status.state, "slide": body.path, "url": f"/v1/slides/{job_id}"}

    @app.get("/v1/slides/{job_id}", dependencies=auth, summary="a slide analysis: its state, and its summary when done")
    async def slide_status(job_id: str) -> dict[str, Any]:
        status = job_status(jobs_root, job_id) if _JOB_ID.match(job_id) else None
        if status is None:
            raise ApiError(404, f"no slide analysis with id {job_id!r}")
        folder = AnalysisFolder(analyses_root / job_id)
        answer: dict[str, Any] = {"id": job_id, "state": status.state, "started_at": status.started_at,
                                  "finished_at": status.finished_at}
        if status.state == "running":
            answer["progress"] = read_json(folder.progress_json, default=None)
        elif status.state == "finished":
            answer["summary"] = read_json(folder.summary_json, default=None)
        else:
            answer["error"] = job_error(status)
        return answer

    return app


async def _read_files(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """The `files` of a multipart form as (file name, bytes), refusing an empty or oversized upload."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise ApiError(400, f"send the images as multipart/form-data in the field {FILES_FIELD!r} (got content type {kind or 'none'!r})")
    async with request.form(max_files=limits.max_files, max_fields=100) as form:
        parts = form.getlist(FILES_FIELD)
        if not parts:
            others = sorted(set(form.keys()))
            raise ApiError(400, f"no files: send one or more images in the multipart field {FILES_FIELD!r}"
                           + (f" (got the field(s) {', '.join(others)})" if others else ""))
        files: list[tuple[str, bytes]] = []
        for i, part in enumerate(parts):
            if not isinstance(part, UploadFile):
                raise ApiError(400, f"{FILES_FIELD}[{i}] is text, not a file; upload image files")
            name = part.filename or f"{FILES_FIELD}[{i}]"
            if part.size is not None and part.size > limits.max_file_mb * MB:
                raise ApiError(413, f"{name} is {part.size / MB:.1f} MB; the limit is {limits.max_file_mb:g} MB a file "
                               "(a PCam patch is about 27 KB)")
            files.append((name, await part.read()))
    return files


def _running_jobs(jobs_root: Path) -> int:
    if not jobs_root.is_dir():
        return 0
    count = 0
    for record in jobs_root.glob("*.json"):
        status = job_status(jobs_root, record.stem)
        count += status is not None and status.active
    return count


class _RequestTooLarge(Exception):
    pass


class _BodyLimit:
    """Refuses a request body over `max_bytes` with 413: at once when its Content-Length says so,
    else as soon as the bytes received pass the limit (a chunked upload)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _message(self, size: str) -> str:
        return f"request body is {size}; the limit is {self.max_bytes / MB:g} MB (the server's --max-request-mb)"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse({"error": self._message(f"{int(length) / MB:.1f} MB")}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _RequestTooLarge(self._message("more than that"))
            return message

        await self.app(scope, counted, send)


def _install_error_handlers(app: FastAPI) -> None:
    def answer(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        return answer(err.status, str(err), {"WWW-Authenticate": "Bearer"} if err.status == 401 else None)

    @app.exception_handler(_RequestTooLarge)
    async def too_large(_request: Request, err: _RequestTooLarge) -> JSONResponse:
        return answer(413, str(err))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException) -> JSONResponse:
        # starlette's own: an unknown route (404), a wrong method (405), a malformed multipart body (400)
        return answer(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
            problems.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return answer(400, "; ".join(problems) or "invalid request")

    @app.exception_handler(ValueError)
    async def value_error(_request: Request, err: ValueError) -> JSONResponse:
        return answer(400, str(err))

    @app.exception_handler(FileNotFoundError)
    async def not_found(_request: Request, err: FileNotFoundError) -> JSONResponse:
        return answer(404, str(err))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")  # the traceback stays in the server's log
        return answer(500, f"internal error ({type(err).__name__}); the server's log has the details")


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve `app` (from `create_app`) with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


__all__ = ["Limits", "MicroBatcher", "TOKEN_ENV", "create_app", "resolve_slide", "serve"]
