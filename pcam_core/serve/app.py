"""The FastAPI app of `pcam serve`: its routes, each as thin as a CLI command (parse, call the engine the
dashboard calls, format JSON), and the guard on which slide files may be named."""

from __future__ import annotations

import hmac
import logging
import os
import re
import sys
import threading
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .. import __version__
from ..fileio import read_json
from ..runs.jobs import JobStatus, job_error, job_status, start_job
from ..slides.folder import AnalysisFolder
from ..slides.reader import SLIDE_SUFFIXES, open_slide, slide_files
from ..uploads import read_uploads
from .batcher import MicroBatcher
from .errors import MB, ApiError, BodyLimit, declare_errors_only, error_responses, install_error_handlers
from .schema import (
    JOB_ID_PATTERN,
    Health,
    ModelInfo,
    PredictQuery,
    Predictions,
    SlideAnalysis,
    SlideFiles,
    SlideRequest,
    SlideStarted,
    SlideSummary,
)

if TYPE_CHECKING:
    from ..api import Predictor

log = logging.getLogger(__name__)

TOKEN_ENV = "PCAM_API_TOKEN"
DOCS_ASSETS = Path(__file__).with_name("docs_assets")  # Swagger UI's page assets, served at DOCS_ASSETS_URL
DOCS_ASSETS_URL = "/docs-assets"
FILES_FIELD = "files"
# a finished analysis's outputs a client may fetch: route name -> (AnalysisFolder attribute, media type, words, schema)
_BINARY = {"type": "string", "format": "binary"}
OUTPUTS = {
    "geojson": ("regions_geojson", "application/geo+json", "GeoJSON of the tumour regions", {
        "type": "object", "required": ["type", "features"],
        "properties": {"type": {"const": "FeatureCollection"}, "features": {"type": "array", "items": {"type": "object"}}}}),
    "report": ("report_html", "text/html", "report", _BINARY),
    "heatmap": ("heatmap_png", "image/png", "heat map", _BINARY),
}

# a slide analysis's id in a route (checked by the route, which answers 404 for one it does not know)
JobId = Annotated[str, PathParam(json_schema_extra={"pattern": JOB_ID_PATTERN}, description="the id POST /v1/slides answered")]


@dataclass(frozen=True)
class Limits:
    """What one request may hold: a larger body is refused with 413 before the model sees it, a larger file
    is listed in `refused` by name."""

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


def prefer_passive_openmp() -> str | None:
    """Let OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE) unless the environment says otherwise,
    as training launches do (`runs.launch`): spinning threads made a one-patch request 6x slower on a
    loaded machine. OpenMP reads the variable once, when torch loads it, so it is set only while torch is
    not loaded yet (as in `pcam serve`, and the slide analyses it starts inherit it). Returns the policy."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY")


def resolve_slide(slides_dir: Path, name: str) -> Path:
    """The slide `name` names inside `slides_dir` (a file, or a folder holding one DICOM series), refusing any path that leads outside it (absolute
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
    try:
        exists = resolved.exists()
    except OSError:  # a name too long for the file system names no file
        exists = False
    if not exists:
        raise ApiError(404, f"slide not found: {name} (in the slides folder)")
    # a path that exists but names no slide is answered as one that does not exist: there is no slide there
    if resolved.is_dir():  # a folder is a slide when it holds one DICOM series (as scanners write them)
        if slide_files(resolved) != [resolved]:
            raise ApiError(404, f"no slide at {name!r}: a folder, not one slide; give a slide file, or a folder holding "
                                "one scan's DICOM series")
        return resolved
    if not resolved.is_file():
        raise ApiError(404, f"no slide at {name!r}: not a file; give one slide file")
    if resolved.suffix.lower() not in SLIDE_SUFFIXES:
        raise ApiError(404, f"no slide at {name!r}: not a slide file type; expected one of {', '.join(SLIDE_SUFFIXES)}")
    return resolved


def check_slide(slide: Path, name: str, mpp: float | None) -> None:
    """Open `slide` as an analysis will: ApiError 400 when it cannot be read or its resolution is neither in
    its metadata nor in `mpp`. Messages name the slide as the client did (`name`), never the server's path."""
    try:
        with open_slide(slide, mpp=mpp):
            pass
    except (ValueError, OSError) as err:
        if mpp is None and "resolution" in str(err):
            raise ApiError(400, f"{name}: the slide's resolution (microns per pixel) is not in its metadata; send it "
                                "in the field mpp (e.g. 0.25 for a 40x scan)") from err
        raise ApiError(400, str(err).replace(str(slide), name)) from err


class CurrentPredictor:
    """`predictor` with its run's calibrations and out-of-scope guard as they are on disk now. `pcam calibrate` and
    `pcam scope` rewrite those files (atomically) while a server runs: they are read again, the weights not, at the
    first call after their versions change (`loading.posthoc_version`). A predictor not of a run folder stays as given.
    A file that cannot be read then is an error of the request (500, naming it), not a silent fallback to the old fit."""

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor
        self._lock = threading.Lock()
        self._version = self._current_version()

    def _current_version(self) -> tuple | None:
        from ..loading import posthoc_version

        try:
            return posthoc_version(self._predictor.source)
        except (OSError, ValueError):  # not a run folder (a predictor a caller built), or one that is gone
            return None

    def __call__(self) -> Predictor:
        if self._version is None:
            return self._predictor
        version = self._current_version()
        if version is None or version == self._version:
            return self._predictor
        with self._lock:
            if version != self._version:
                from ..loading import load_posthoc

                try:
                    calibration, calibration_tta, scope = load_posthoc(self._predictor.source, self._predictor.model_name)
                except (OSError, ValueError) as err:
                    raise ApiError(500, f"the run's calibration or out-of-scope guard changed and cannot be read: {err}") from err
                self._predictor = replace(self._predictor, calibration=calibration, calibration_tta=calibration_tta, scope=scope)
                self._version = version
                log.info("read the run's calibration and out-of-scope guard again (refitted while serving)")
            return self._predictor


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
    `slides_dir`: the only folder whose slides `POST /v1/slides` may analyse (None: the slide routes are off).
    `work_dir`: where slide analyses and their job records are written. Before the model is loaded,
    OpenMP is asked to wait passively (`prefer_passive_openmp`)."""
    wait_policy = prefer_passive_openmp()
    if predictor is None:
        from ..api import load_predictor  # loads torch: after the wait policy is set

        predictor = load_predictor(run, device=device)
    current = CurrentPredictor(predictor)
    run_name = str(run)
    slides_root = Path(slides_dir).resolve() if slides_dir is not None else None
    if slides_root is not None and not slides_root.is_dir():
        raise FileNotFoundError(f"slides folder not found: {slides_dir}")
    work = Path(work_dir)
    jobs_root, analyses_root = work / "jobs", work / "slides"
    def score(pixels: np.ndarray, tta: bool) -> np.ndarray:
        """(n, 2): each patch's probability and out-of-scope distance (NaN without a guard), one forward pass."""
        probs, distances = current().predict_in_scope(pixels, tta=tta)
        return np.column_stack([probs, np.full(len(probs), np.nan) if distances is None else distances])

    batchers = {tta: MicroBatcher(lambda x, tta=tta: score(x, tta), max_batch=limits.max_batch,
                                  wait_s=limits.batch_wait_ms / 1000) for tta in (False, True)}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        for batcher in batchers.values():
            batcher.start()
        yield
        for batcher in batchers.values():
            await batcher.stop()

    app = FastAPI(title="pcam_core inference API", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, description=(
        "Tumour probabilities of 96x96 PatchCamelyon-like H&E patches and whole-slide analyses with a trained "
        f"`pcam_core` run ({predictor.model_name}). Every error is JSON `{{\"error\": message}}`. "
        "Research use only; not a diagnosis."))
    app.state.batchers = batchers
    bearer = HTTPBearer(auto_error=False, description="the server's --token (or $PCAM_API_TOKEN)")

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'"
                           if credentials is None else "wrong token")

    def no_query(request: Request) -> None:
        if request.query_params:
            raise ApiError(400, f"unknown query parameter(s) {', '.join(sorted(set(request.query_params)))}; this route takes none")

    # the docs page from the Swagger UI shipped in the package (swagger-ui-dist 5.36.0, Apache-2.0, docs_assets/LICENSE):
    # FastAPI's own loads it from a CDN, a blank page on a hospital network without the internet
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - docs",
                                   swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon-32x32.png")

    install_error_handlers(app)
    declare_errors_only(app)
    app.add_middleware(BodyLimit, max_bytes=int(limits.max_request_mb * MB))
    auth = [Depends(require_token)] if token is not None else []
    guarded = (401,) if token is not None else ()

    @app.get("/v1/health", dependencies=[Depends(no_query)], response_model=Health, responses=error_responses(400),
             summary="liveness: the model is loaded (no token needed)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.model_name, "version": __version__}

    @app.get("/v1/model", dependencies=[*auth, Depends(no_query)], response_model=ModelInfo,
             responses=error_responses(400, *guarded), summary="the model this server scores with")
    async def model_info() -> dict[str, Any]:
        predictor = current()
        calibration = predictor.calibration
        return {"model": predictor.model_name, "members": predictor.members, "run": run_name, "checkpoint_epoch": predictor.epoch,
                "threshold": predictor.threshold, "temperature": calibration.temperature if calibration else None,
                "bias": calibration.bias if calibration else None,
                "calibration_warning": calibration.warning if calibration else None,
                "device": str(predictor.device), "slides": slides_root is not None, "limits": asdict(limits),
                "batching": {("tta" if tta else "one_pass"): {"forward_passes": b.passes, "patches": b.patches}
                             for tta, b in batchers.items()},
                "openmp_wait_policy": wait_policy}

    files_body = {"type": "object", "required": [FILES_FIELD], "additionalProperties": False, "properties": {FILES_FIELD: {
        "type": "array", "minItems": 1, "maxItems": limits.max_files, "items": {"type": "string", "format": "binary"},
        "description": f"96x96 image files (TIFF, PNG, JPEG...); a file over {limits.max_file_mb:g} MB is refused by name"}}}

    @app.post("/v1/predict", dependencies=auth, response_model=Predictions, responses=error_responses(400, *guarded, 413),
              summary="tumour probability of each uploaded 96x96 patch",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": files_body}}}})
    async def predict(request: Request, query: Annotated[PredictQuery, Query()]) -> dict[str, Any]:
        """Multipart form field `files`: one or many image files. A file that cannot be scored (not an
        image, not 96x96, over the size limit, a repeated id) is listed in `refused` with the reason;
        grayscale, RGBA and 16-bit images are converted to RGB and scored with a note. `threshold` (default:
        the run's own) sets the calls only."""
        predictor = current()  # this request's calibration and guard (the batch reads the same unless refitted meanwhile)
        threshold = predictor.threshold if query.threshold is None else query.threshold
        files, oversized = await _read_files(request, limits)
        accepted, refused = await run_in_threadpool(read_uploads, files)
        scored = await batchers[query.tta].submit(np.stack([p.pixels for p in accepted])) if accepted else np.empty((0, 2))
        probs, distances = scored[:, 0], (scored[:, 1] if predictor.scope is not None else None)
        calibration = predictor.calibration_for(tta=query.tta)  # of the scoring mode applied
        calibrated = predictor.calibrated(probs, tta=query.tta) if calibration else None
        calls = predictor.call(probs, distances, threshold=threshold)
        inside = predictor.in_scope(distances)
        return {
            "model": predictor.model_name, "run": run_name, "threshold": threshold, "tta": query.tta,
            "temperature": calibration.temperature if calibration else None,
            "bias": calibration.bias if calibration else None,
            "calibration_warning": calibration.warning if calibration else None,
            "predictions": [{"name": p.name, "id": p.id, "probability": float(prob),
                             "probability_calibrated": None if calibrated is None else float(calibrated[i]),
                             "call": str(calls[i]), "notes": list(p.notes),
                             "ood_score": None if distances is None else float(distances[i]),
                             "in_scope": None if inside is None else bool(inside[i])}
                            for i, (p, prob) in enumerate(zip(accepted, probs))],
            "refused": [{"name": name, "reason": reason} for name, reason in [*oversized, *refused]],
        }

    if slides_root is None:
        @app.api_route("/v1/slides{rest:path}", methods=["GET", "POST"], include_in_schema=False)
        async def slides_off(rest: str) -> None:
            raise ApiError(404, "slide analysis is off on this server: start it with --slides-dir DIR")

        return app

    def slide_name(status: JobStatus) -> str:
        """The analysed slide as a client names it: relative to the slides folder."""
        command = status.command
        slide = Path(command[command.index("--input") + 1]) if "--input" in command[:-1] else Path("?")
        return str(slide.relative_to(slides_root)) if slide.is_relative_to(slides_root) else slide.name

    def job(job_id: str) -> JobStatus:
        status = job_status(jobs_root, job_id) if re.fullmatch(JOB_ID_PATTERN, job_id) else None
        if status is None:
            raise ApiError(404, f"no slide analysis with id {job_id!r}")
        return status

    def analysis(job_id: str) -> dict[str, Any]:
        status = job(job_id)
        folder, slide = AnalysisFolder(analyses_root / job_id), slide_name(status)
        answer: dict[str, Any] = {
            "id": job_id, "slide": slide, "state": status.state, "started_at": _utc(status.started_at),
            "finished_at": _utc(status.finished_at), "summary": None, "files": None, "error": None}
        record = read_json(folder.summary_json, default=None) if status.state == "finished" else None
        if record is not None:
            try:
                summary = SlideSummary.from_record(record, slide)
            except ValidationError as err:  # our own file, not the client's fault
                raise RuntimeError(f"{folder.summary_json} does not hold a summary: {err}") from err
            return {**answer, "fraction": 1.0, "windows_done": summary.windows_scored, "windows_total": summary.windows_scored,
                    "seconds_left": 0.0, "summary": summary, "files": SlideFiles(**{
                        name: f"/v1/slides/{job_id}/{name}" for name in OUTPUTS})}
        progress = folder.progress()
        answer.update(fraction=progress.fraction, windows_done=progress.windows_done, windows_total=progress.windows_total,
                      seconds_left=progress.seconds_left if status.state == "running" else None)
        if status.state != "running":
            answer.update(state="failed", error=job_error(status) if status.state == "failed" else "finished without a summary")
        return answer

    slide_errors = error_responses(400, *guarded, 404)

    @app.post("/v1/slides", dependencies=[*auth, Depends(no_query)], status_code=202, response_model=SlideStarted,
              responses=error_responses(400, *guarded, 404, 413, 429), summary="start a whole-slide analysis")
    async def start_slide(body: SlideRequest) -> dict[str, Any]:
        """Checks the request and opens the slide before answering 202, then scores it in the background:
        follow it at the answer's `url`."""
        slide = resolve_slide(slides_root, body.path)
        await run_in_threadpool(check_slide, slide, body.path, body.mpp)
        running = _running_jobs(jobs_root)
        if running >= limits.max_slide_jobs:
            raise ApiError(429, f"{running} slide analyses are running (the limit is {limits.max_slide_jobs}); try again later")
        job_id = uuid.uuid4().hex
        folder = AnalysisFolder(analyses_root / job_id)
        threshold = predictor.threshold if body.threshold is None else body.threshold
        args = ["slide", "--run", run_name, "--input", str(slide), "--out", str(folder.path), "--stride", str(body.stride),
                "--threshold", repr(threshold), "--device", device, "--tta" if body.tta else "--no-tta",
                *(["--mode", body.mode] if body.mode is not None else []),
                *(["--mpp", repr(body.mpp)] if body.mpp is not None else [])]
        status = await run_in_threadpool(start_job, jobs_root, job_id, args, outputs=[folder.summary_json])
        return {"id": job_id, "state": status.state, "slide": body.path, "url": f"/v1/slides/{job_id}"}

    @app.get("/v1/slides/{job_id}", dependencies=[*auth, Depends(no_query)], response_model=SlideAnalysis,
             responses=slide_errors, summary="a slide analysis: how far it is, and its results when finished")
    async def slide_status(job_id: JobId) -> dict[str, Any]:
        return await run_in_threadpool(analysis, job_id)

    def output_route(name: str, attribute: str, media_type: str, words: str, schema: dict[str, Any]) -> None:
        @app.get(f"/v1/slides/{{job_id}}/{name}", dependencies=[*auth, Depends(no_query)], response_class=FileResponse,
                 responses={200: {"description": f"the {words}", "content": {media_type: {"schema": schema}}},
                            **slide_errors},
                 summary=f"a finished analysis's {words}", name=f"slide_{name}")
        async def output(job_id: JobId) -> FileResponse:
            state = await run_in_threadpool(analysis, job_id)
            if state["state"] == "running":
                raise ApiError(404, f"analysis {job_id} is still running ({state['fraction']:.0%} done); its {words} "
                                    "is written when it finishes")
            if state["state"] == "failed":
                raise ApiError(404, f"analysis {job_id} failed, so it has no {words}: {state['error']}")
            path = getattr(AnalysisFolder(analyses_root / job_id), attribute)
            if not path.is_file():
                raise ApiError(404, f"analysis {job_id} finished without its {words}")
            return FileResponse(path, media_type=media_type, filename=f"{Path(state['slide']).stem}-{path.name}",
                                content_disposition_type="inline")

    for name, spec in OUTPUTS.items():
        output_route(name, *spec)
    return app


async def _read_files(request: Request, limits: Limits) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """The `files` of a multipart form as (file name, bytes), and (file name, why) for each one over the size
    limit; an upload without files, or with other fields, is refused."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise ApiError(400, f"send the images as multipart/form-data in the field {FILES_FIELD!r} (got content type {kind or 'none'!r})")
    async with request.form(max_files=limits.max_files, max_fields=100) as form:
        others = sorted(set(form.keys()) - {FILES_FIELD})
        if others:
            raise ApiError(400, f"unknown field(s) {', '.join(others)}: send the images in the multipart field {FILES_FIELD!r} only")
        parts = form.getlist(FILES_FIELD)
        if not parts:
            raise ApiError(400, f"no files: send one or more images in the multipart field {FILES_FIELD!r}")
        files: list[tuple[str, bytes]] = []
        oversized: list[tuple[str, str]] = []
        for i, part in enumerate(parts):
            if not isinstance(part, UploadFile):
                raise ApiError(400, f"{FILES_FIELD}[{i}] is text, not a file; upload image files")
            name = part.filename or f"{FILES_FIELD}[{i}]"
            if part.size is not None and part.size > limits.max_file_mb * MB:
                oversized.append((name, f"the file is {part.size / MB:.1f} MB; the limit is {limits.max_file_mb:g} MB a file "
                                        "(a PCam patch is about 27 KB)"))
                continue
            files.append((name, await part.read()))
    return files, oversized


def _running_jobs(jobs_root: Path) -> int:
    if not jobs_root.is_dir():
        return 0
    count = 0
    for record in jobs_root.glob("*.json"):
        status = job_status(jobs_root, record.stem)
        count += status is not None and status.active
    return count


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc)


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve `app` (from `create_app`) with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


__all__ = ["FILES_FIELD", "Limits", "OUTPUTS", "TOKEN_ENV", "check_slide", "create_app", "prefer_passive_openmp", "resolve_slide", "serve"]
