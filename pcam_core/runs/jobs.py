"""Background jobs the dashboard starts besides training: a download, the scoring of a split.

A job is one `python -m pcam_core COMMAND ...` process, detached from the web server (see
`runs.process.spawn_detached`), so it survives page reloads, closed tabs and a restarted app. Its record
`FOLDER/<name>.json` holds the command, pid and times; its output goes to `FOLDER/<name>.log`.

State: "running" while its process lives; then "finished" or "failed" by its exit code, which the
process that started the job records. When that process is gone too (a restarted dashboard), the exit
code is unknown and the job counts as finished when every file it promised (`outputs`) exists.

This module is the one that reads and ends jobs: `list_jobs` (the jobs of a folder, by name prefix),
`active_jobs` and `stop_job` (SIGTERM to the job's process group). `pcam serve` and the slide queue use them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_json, read_json
from .folder import check_run_id
from .process import pid_alive, process_start_time, signal_quietly, spawn_detached

_LOCK = threading.Lock()


@dataclass(frozen=True)
class JobStatus:
    """What the dashboard shows about a job."""

    name: str
    state: str
    command: list[str]
    started_at: float
    finished_at: float | None = None
    returncode: int | None = None
    outputs: list[str] = field(default_factory=list)
    log_tail: str = ""

    @property
    def active(self) -> bool:
        return self.state == "running"


def _paths(folder: Path, name: str) -> tuple[Path, Path]:
    check_run_id(name)  # a plain file name: no separators, no '..'
    return folder / f"{name}.json", folder / f"{name}.log"


def start_job(folder: str | Path, name: str, args: list[str], *, outputs: list[str | Path] = ()) -> JobStatus:
    """Run `python -m pcam_core ARGS` in the background as job `name`.

    Refuses (RuntimeError) while a job of that name is still running. `outputs` are the files the
    command writes when it succeeds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record_path, log_path = _paths(folder, name)
    with _LOCK:
        current = job_status(folder, name)
        if current is not None and current.active:
            raise RuntimeError(f"job {name!r} is already running (started {time.ctime(current.started_at)})")
        argv = [sys.executable, "-m", "pcam_core", *map(str, args)]
        log_path.write_bytes(b"")
        proc = spawn_detached(argv, log_path)
        record = {
            "name": name, "command": argv, "pid": proc.pid, "pid_start": process_start_time(proc.pid),
            "started_at": time.time(), "outputs": [str(p) for p in outputs],
            # this process records the exit code; while it lives, a job without one is still finishing
            "watcher_pid": os.getpid(), "watcher_start": process_start_time(os.getpid()),
        }
        atomic_write_json(record_path, record)
    threading.Thread(target=_record_exit, args=(proc, record_path, record), name=f"job-{name}", daemon=True).start()
    status = job_status(folder, name)
    assert status is not None
    return status


def _record_exit(proc: subprocess.Popen, record_path: Path, record: dict[str, Any]) -> None:
    returncode = proc.wait()
    current = read_json(record_path, default=None)
    if current is not None and current.get("pid") == record["pid"]:  # not replaced by a newer job meanwhile
        atomic_write_json(record_path, {**current, "returncode": returncode, "finished_at": time.time()})


def job_status(folder: str | Path, name: str, *, log_lines: int = 20) -> JobStatus | None:
    """The state of job `name`, or None when it was never started in `folder`."""
    record_path, log_path = _paths(Path(folder), name)
    record = read_json(record_path, default=None)
    if not record:
        return None
    outputs = [str(p) for p in record.get("outputs", [])]
    returncode = record.get("returncode")
    if returncode is not None:
        state = "finished" if returncode == 0 else "failed"
    elif pid_alive(record.get("pid"), record.get("pid_start")) or pid_alive(record.get("watcher_pid"), record.get("watcher_start")):
        state = "running"  # alive, or ended a moment ago and its watcher is about to record the exit code
    else:
        state = "finished" if outputs and all(Path(p).exists() for p in outputs) else "failed"
    tail = ""
    if log_path.exists():
        lines = log_path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()
        tail = "\n".join(line for line in lines if line.strip())
        tail = "\n".join(tail.splitlines()[-log_lines:])
    return JobStatus(
        name=name, state=state, command=list(record.get("command", [])), started_at=float(record.get("started_at", 0.0)),
        finished_at=record.get("finished_at"), returncode=returncode, outputs=outputs, log_tail=tail,
    )


def job_error(status: JobStatus) -> str:
    """The one line a failed job's log ends with (the CLI prints `error: ...` for every user error)."""
    lines = [line for line in status.log_tail.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    if status.returncode is None:
        return "the process ended while the dashboard was not watching, without writing its results"
    return lines[-1] if lines else f"exit code {status.returncode}"


def list_jobs(folder: str | Path, prefix: str = "") -> list[JobStatus]:
    """The jobs started in `folder` whose name starts with `prefix`, by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for record in sorted(folder.glob(f"{prefix}*.json")):
        try:
            status = job_status(folder, record.stem)
        except ValueError:  # a file there that is no job record of ours (its name is not a job name)
            continue
        if status is not None:
            found.append(status)
    return found


def active_jobs(folder: str | Path, prefix: str = "") -> list[JobStatus]:
    """The jobs of `folder` (names starting with `prefix`) still running."""
    return [status for status in list_jobs(folder, prefix) if status.active]


def stop_job(folder: str | Path, name: str) -> bool:
    """End job `name`'s process group with SIGTERM (the job is the leader of its own session, so what it
    started ends with it). Returns whether a live process was signalled; its watcher records the end."""
    record_path, _ = _paths(Path(folder), name)
    record = read_json(record_path, default=None) or {}
    pid = record.get("pid")
    if not pid_alive(pid, record.get("pid_start")):
        return False
    signal_quietly(lambda: os.killpg(pid, signal.SIGTERM))
    return True
