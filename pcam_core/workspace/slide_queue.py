"""The workspace's queue of slide analyses: one background job at a time, and where each analysis stands.

    WORKSPACE/slides/
      analyses/<slide id>/<run key>/   one analysis folder (`pcam_core.slides.folder`) per slide and run
      queue.json                       the analyses waiting, in order
      jobs/                            the job record and log of each analysis (`pcam_core.runs.jobs`), queue.log
      runner.lock, queue.lock          the locks described below; runner.json: the pid of the last runner started

At most one analysis runs at a time (a 2-core machine is full with one). `enqueue` appends to queue.json and
makes sure a queue runner lives: one detached process (`python -m pcam_core slide-queue`) that holds
runner.lock (`fileio.flock`, released by the kernel when the process dies, however it dies) for its whole
life, takes the first queued item, runs it as a job (`pcam slide ... --resume`, its own detached process),
waits for it to end, and goes on until the queue is empty. So the queue moves on with no page open, survives
a closed tab and a restarted app; should the runner itself be killed, the next `enqueue`, `ensure_runner`
(the library calls it when it lists slides or reads an analysis) starts another, which first waits for a job
still running. queue.lock makes "the queue is empty, the runner leaves" and "an item is queued, a runner is
needed" exclusive, so no item is ever left behind by a runner on its way out.

Stop: takes a queued item off the queue, or marks the analysis folder stopped (`AnalysisFolder.mark_stopped`)
and ends the job (`runs.jobs.stop_job`); the runner goes on with the next item. The map stays resumable: a
later start continues it.

An analysis is found by its slide id and run key (`run_key`), whichever model made it: `analyses` lists them
all, so a slide analysed with the bundled model shows so whatever run the dashboard has selected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..bundled import BUNDLED
from ..decision import check_threshold
from ..fileio import atomic_write_json, flock, read_json
from ..runs.jobs import JobStatus, active_jobs, job_error, job_status, list_jobs, start_job, stop_job
from ..runs.process import pid_alive, process_start_time, spawn_detached
from ..runs.resolve import resolve_run
from ..slides.folder import AnalysisFolder

log = logging.getLogger(__name__)

STATES = ("none", "queued", "running", "done", "failed", "stopped")
STRIDES = (32, 96)
JOB_PREFIX = "analysis-"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}-s(32|96)")


def run_key(run: str | Path, stride: int) -> str:
    """The folder name of a run's analyses: the run's name (`bundled` for the bundled model) and the stride."""
    name = resolve_run(run, must_exist=False).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return f"{name[:80]}-s{int(stride)}"


def is_run_key(key: str) -> bool:
    """Whether `key` looks like what `run_key` makes (no separator, no leading dot)."""
    return bool(_KEY.fullmatch(key))


def run_label(run: str) -> str:
    """How a person is shown the run of an analysis: "bundled model (...)" or the run folder's name."""
    return resolve_run(run, must_exist=False).label if run else "an unknown model"


@dataclass(frozen=True)
class AnalysisState:
    """An analysis of one slide with one run: its folder and where it stands. `state` is one of STATES.
    While running: windows done, their total, windows/s and seconds left (None before the first tile).
    `run` is the run as a `--run` argument ("bundled" or a run folder), "" when no record says which."""

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

    @property
    def run_label(self) -> str:
        return run_label(self.run)

    @property
    def stride(self) -> int:
        return int(self.key.rsplit("-s", 1)[1])

    @property
    def version(self) -> str:
        """Changes whenever the analysis is written again (`AnalysisFolder.version`)."""
        return self.folder.version()


class SlideQueue:
    """The analyses of a slide library under `root` (WORKSPACE/slides), and the queue that makes them."""

    def __init__(self, root: str | Path, workspace: str | Path) -> None:
        self.root = Path(root)
        self.workspace = Path(workspace)

    analyses_root = property(lambda self: self.root / "analyses")
    jobs = property(lambda self: self.root / "jobs")
    queue_json = property(lambda self: self.root / "queue.json")
    runner_json = property(lambda self: self.root / "runner.json")
    _runner_lock = property(lambda self: self.root / "runner.lock")
    _queue_lock = property(lambda self: self.root / "queue.lock")

    def folder(self, slide: str, key: str) -> AnalysisFolder:
        return AnalysisFolder(self.analyses_root / slide / key)

    def analysis_folder(self, slide: str, run: str | Path = BUNDLED, *, stride: int = 32) -> AnalysisFolder:
        return self.folder(slide, run_key(run, stride))

    @staticmethod
    def job_name(slide: str, key: str) -> str:
        return f"{JOB_PREFIX}{slide}-{key}"

    def _queue(self) -> list[dict[str, Any]]:
        return list(read_json(self.queue_json, default=None) or [])

    def _lock(self, path: Path, *, blocking: bool = True):
        self.root.mkdir(parents=True, exist_ok=True)
        return flock(path, blocking=blocking)

    # -- states ------------------------------------------------------------------------------------
    def state(self, slide: str, run: str | Path, stride: int) -> AnalysisState:
        """Where the analysis of `slide` with `run` at `stride` stands."""
        return self._state(slide, run_key(run, stride), resolve_run(run, must_exist=False).arg)

    def _state(self, slide: str, key: str, run: str = "", queue: list[dict[str, Any]] | None = None) -> AnalysisState:
        folder = self.folder(slide, key)
        base = {"slide_id": slide, "run": run, "key": key, "folder": folder}
        if folder.is_complete():
            summary = read_json(folder.summary_json, default=None)
            if summary and summary.get("run"):
                base["run"] = str(summary["run"])
            return AnalysisState(**base, state="done", summary=summary,
                                 report=folder.report_html if folder.report_html.exists() else None)
        for position, item in enumerate(self._queue() if queue is None else queue, 1):
            if item["slide_id"] == slide and item["key"] == key:
                return AnalysisState(**{**base, "run": item["run"]}, state="queued", position=position, options=item)
        job = job_status(self.jobs, self.job_name(slide, key))
        if job is not None and not base["run"]:
            base["run"] = _run_argument(job.command)
        if job is not None and job.active:
            return AnalysisState(**base, state="running", **_progress(folder))
        if folder.stopped:
            return AnalysisState(**base, state="stopped", **_progress(folder))
        if job is not None:
            return AnalysisState(**base, state="failed", error=job_error(job))
        return AnalysisState(**base, state="none")

    def analyses(self, slides: Iterable[str]) -> list[AnalysisState]:
        """Every analysis of the slides `slides` (ids of the same slide's copies), by any run and stride: done,
        queued, running, stopped or failed; done ones first, newest first."""
        ids = list(dict.fromkeys(slides))
        queue = self._queue()
        keys: dict[tuple[str, str], str] = {}
        for slide in ids:
            root = self.analyses_root / slide
            for path in sorted(root.iterdir()) if root.is_dir() else []:
                if path.is_dir() and is_run_key(path.name):
                    keys.setdefault((slide, path.name), "")
            for job in list_jobs(self.jobs, self.job_name(slide, "")):
                keys.setdefault((slide, job.name[len(self.job_name(slide, "")):]), _run_argument(job.command))
        for item in queue:
            if item["slide_id"] in ids:
                keys[(item["slide_id"], item["key"])] = item["run"]
        states = [self._state(slide, key, run, queue) for (slide, key), run in keys.items() if is_run_key(key)]
        states = [s for s in states if s.state != "none"]

        def order(state: AnalysisState) -> tuple[int, float]:
            stamp = state.folder.summary_json.stat().st_mtime if state.state == "done" else 0.0
            return (0 if state.state == "done" else 1, -stamp)

        return sorted(states, key=order)

    # -- start and stop ---------------------------------------------------------------------------------
    def enqueue(self, slides: list[tuple[str, str] | tuple[str, str, float | None]], run: str | Path = BUNDLED, *,
                stride: int = 32, threshold: float | None = None) -> list[AnalysisState]:
        """Queue the analysis of each (slide id, slide file[, given microns per pixel]) with `run`; one already
        queued, running or done is left as it is, a stopped or failed one starts again, resuming its map.
        `threshold` None: the run's own."""
        if stride not in STRIDES:
            raise ValueError(f"stride must be 32 or 96, not {stride}")
        if threshold is not None:
            threshold = check_threshold(threshold)
        ref = resolve_run(run)
        key = run_key(ref.arg, stride)
        if not slides:
            return []
        with self._lock(self._queue_lock):
            queue = self._queue()
            for slide, path, *given in slides:
                if self._state(slide, key, ref.arg, queue).state in ("queued", "running", "done"):
                    continue
                self.folder(slide, key).clear_stopped()
                queue.append({"slide_id": slide, "slide": str(path), "run": ref.arg, "key": key, "stride": stride,
                              "threshold": threshold, "mpp": given[0] if given else None, "queued_at": time.time()})
            atomic_write_json(self.queue_json, queue)
            self._spawn_runner_if_none()
        return [self._state(slide, key, ref.arg) for slide, *_ in slides]

    def stop(self, slide: str, run: str | Path | None = None, *, stride: int | None = None) -> None:
        """Stop the analyses of `slide` (with `run`, and `stride` when given): take them off the queue, or end
        the running job. What was scored is kept; a later start resumes it."""
        def match(key: str) -> bool:
            if run is None:
                return True
            if stride is not None:
                return key == run_key(run, stride)
            return key in {run_key(run, s) for s in STRIDES}

        with self._lock(self._queue_lock):
            queue = self._queue()
            kept = [item for item in queue if not (item["slide_id"] == slide and match(item["key"]))]
            for item in queue:
                if item not in kept:
                    self.folder(slide, item["key"]).mark_stopped()
            atomic_write_json(self.queue_json, kept)
        prefix = self.job_name(slide, "")
        for job in active_jobs(self.jobs, prefix):
            key = job.name[len(prefix):]
            if match(key):
                self.folder(slide, key).mark_stopped()
                stop_job(self.jobs, job.name)

    def forget(self, slide: str) -> None:
        """Stop every analysis of `slide` and delete its analysis folders (its file is gone)."""
        import shutil

        self.stop(slide)
        shutil.rmtree(self.analyses_root / slide, ignore_errors=True)

    # -- the queue runner ------------------------------------------------------------------------------
    def runner_alive(self) -> bool:
        """Whether a queue runner holds the runner lock, or was started and is still on its way to it."""
        record = read_json(self.runner_json, default=None) or {}
        if pid_alive(record.get("pid"), record.get("pid_start")):
            return True
        with self._lock(self._runner_lock, blocking=False) as free:
            return not free

    def _spawn_runner_if_none(self) -> None:
        """Start a queue runner unless one lives. Call with queue.lock held."""
        if self.runner_alive():
            return
        self.jobs.mkdir(parents=True, exist_ok=True)
        proc = spawn_detached([sys.executable, "-m", "pcam_core", "slide-queue", "--workspace", str(self.workspace)],
                              self.jobs / "queue.log")
        atomic_write_json(self.runner_json, {"pid": proc.pid, "pid_start": process_start_time(proc.pid), "started_at": time.time()})

    def ensure_runner(self) -> None:
        """Start a queue runner when items wait and none runs (it was killed, or the machine restarted)."""
        if not self.queue_json.exists():
            return
        with self._lock(self._queue_lock):
            if self._queue():
                self._spawn_runner_if_none()

    def _active_job(self) -> JobStatus | None:
        running = active_jobs(self.jobs, JOB_PREFIX)
        return running[0] if running else None

    def run(self, *, poll: float = 0.5, lock_wait: float = 5.0) -> int:
        """The queue runner's loop (`pcam slide-queue`): run the queued analyses one at a time until the queue
        is empty; returns how many it started. Leaves at once when another runner holds the lock."""
        deadline = time.time() + lock_wait
        while True:  # the lock may be held for a moment by a process checking whether a runner lives
            runner = contextlib.ExitStack()
            if runner.enter_context(self._lock(self._runner_lock, blocking=False)):
                break
            runner.close()
            if time.time() > deadline:
                log.info("another queue runner is running in %s", self.root)
                return 0
            time.sleep(0.1)
        with runner:
            return self._run_holding_lock(runner, poll)

    def _run_holding_lock(self, runner: contextlib.ExitStack, poll: float) -> int:
        started = 0
        while True:
            while self._active_job() is not None:  # one left running by a runner that died
                time.sleep(poll)
            with self._lock(self._queue_lock):
                queue = self._queue()
                if not queue:
                    # inside queue.lock: forget this runner and drop its lock, so that an `enqueue` after this
                    # sees none and spawns a new one (no item is left behind by a runner on its way out)
                    record = read_json(self.runner_json, default=None) or {}
                    if record.get("pid") == os.getpid():
                        self.runner_json.unlink(missing_ok=True)
                    runner.close()
                    return started
                item = queue[0]
                name = self.job_name(item["slide_id"], item["key"])
                folder = self.folder(item["slide_id"], item["key"])
                folder.path.mkdir(parents=True, exist_ok=True)
                args = ["slide", "--run", item["run"], "--input", item["slide"], "--out", str(folder.path),
                        "--stride", str(item["stride"]), "--no-tta", "--resume"]  # one pass, as the page always analysed
                # no --mode: `pcam slide`'s default (the cascade at stride 32: the reference's regions, faster)
                if item.get("threshold") is not None:
                    args += ["--threshold", repr(float(item["threshold"]))]
                if item.get("mpp") is not None:
                    args += ["--mpp", repr(float(item["mpp"]))]  # given by a person: the file does not say it
                try:
                    start_job(self.jobs, name, args, outputs=[folder.summary_json])
                except RuntimeError:
                    pass  # already running (a runner died between starting it and taking it off the queue)
                atomic_write_json(self.queue_json, queue[1:])
            started += 1
            while (status := job_status(self.jobs, name)) is not None and status.active:
                time.sleep(poll)


def _run_argument(command: list[str]) -> str:
    """The `--run` of a job's command line, "" when it has none."""
    for i, arg in enumerate(command[:-1]):
        if arg == "--run":
            return command[i + 1]
    return ""


def _progress(folder: AnalysisFolder) -> dict[str, Any]:
    """windows_done, windows_total, windows_per_s and seconds_left from the analysis's progress.json."""
    progress = read_json(folder.progress_json, default=None) or {}
    done, total, seconds = int(progress.get("windows", 0)), progress.get("windows_total"), float(progress.get("seconds", 0.0))
    rate = done / seconds if done and seconds > 0 else None
    left = (total - done) / rate if rate and total is not None else None
    return {"windows_done": done, "windows_total": total, "windows_per_s": rate, "seconds_left": left}


__all__ = ["AnalysisState", "JOB_PREFIX", "STATES", "STRIDES", "SlideQueue", "is_run_key", "run_key", "run_label"]
