"""Operating-system processes: is a recorded pid still the same live process, starting one detached,
signalling one. Nothing here knows what a run folder is."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def process_start_time(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot (Linux): the stamp `pid_alive` compares to tell a
    reused pid from the process recorded earlier."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int | None, start: str | None = None) -> bool:
    """Whether `pid` is a live (not zombie) process, and the same process when `start` is known."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the kill(0) answer is all we have
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


def spawn_detached(argv: list[str], log_path: str | Path, *, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `argv` (no shell) as a detached process: its own session, so it outlives the caller (a
    dashboard rerun, a closed tab, a restarted app), stdout and stderr appended to `log_path`. A thread
    reaps it when it ends so it never lingers as a zombie; `proc.returncode` is set then."""
    console = open(log_path, "ab")
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            start_new_session=True, env=child_env, cwd=os.getcwd(),
        )
    finally:
        console.close()
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    return proc


def signal_quietly(send: Callable[[], None]) -> None:
    """Call `send` (an `os.kill`/`os.killpg`), logging instead of raising when the process is gone or not ours."""
    try:
        send()
    except (ProcessLookupError, PermissionError) as err:
        log.warning("could not signal the run's process: %s", err)
