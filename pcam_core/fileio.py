"""Crash-safe file writes: a reader never sees half a file, and a failed write leaves the old one intact. And
the one advisory file lock (`flock`) that processes sharing a folder take."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, IO


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`.

    If the block raises (disk full, permission denied, a bug), the temporary file is removed and
    whatever was at `path` before is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def output_file(path: str | Path, option: str, example: str) -> Path:
    """`path` as a file to write (its folder made when missing, as every write here makes it), or a ValueError naming
    `option` when it is a folder (QA: "[Errno 21] Is a directory"), with `example` as a file name inside it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name (e.g. {path / example})")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_with(path: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Atomically write a binary file through `writer(handle)` (for `torch.save`, `DataFrame.to_csv`...)."""
    with atomic_open(path, "wb") as handle:
        writer(handle)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON object as one line; a single write() so concurrent readers see whole lines."""
    line = json.dumps(record, sort_keys=True, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file written by `append_jsonl`; a torn last line (a killed writer) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_json(path: str | Path, default: Any = None) -> Any:
    """Read a JSON file; `default` when it does not exist or is unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return default


@contextlib.contextmanager
def flock(path: str | Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive `flock` on `path` (the file made if missing, its folder not) for the block; yields True when held.
    With `blocking=False` it yields False at once, holding nothing, while another process holds it. The
    kernel drops the lock when the holder's file closes, however its process ends (kill -9 included)."""
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_versions(*paths: str | Path) -> tuple[tuple[int, int, int] | None, ...]:
    """Identifies the current content of files, to key caches on and to tell when to read them again: a file replaced
    (written atomically: a new inode) or modified in place (mtime, size) gets a new version; a missing file is None."""
    versions = []
    for path in paths:
        try:
            info = Path(path).stat()
        except FileNotFoundError:
            versions.append(None)
        else:
            versions.append((info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(versions)
