"""`pcam download`: the PCam files of Zenodo record 2546921, streamed, resumable, checked.

Each `.h5.gz` file is streamed to `<name>.gz.part` while it is decompressed on the fly into
`<name>.part`; neither file is ever held in memory. An interrupted download resumes with an HTTP Range
request: the partial archive on disk is decompressed again (locally, fast) to rebuild the decompressor's
state, then the rest is fetched. The MD5 of the compressed bytes must match the published checksum
before the decompressed file is renamed into place; the partial archive is then removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

log = logging.getLogger(__name__)

ZENODO_RECORD = "2546921"
DEFAULT_BASE_URL = f"https://zenodo.org/records/{ZENODO_RECORD}/files"
CHUNK = 1 << 18


@dataclass(frozen=True)
class RemoteFile:
    name: str  # as published (".h5.gz" archives, plain ".csv")
    md5: str  # of the published bytes
    split: str

    @property
    def gzipped(self) -> bool:
        return self.name.endswith(".gz")

    @property
    def local_name(self) -> str:
        return self.name[:-3] if self.gzipped else self.name


# The published files with their MD5 checksums (the same values torchvision checks).
FILES: tuple[RemoteFile, ...] = (
    RemoteFile("camelyonpatch_level_2_split_train_x.h5.gz", "1571f514728f59376b705fc836ff4b63", "train"),
    RemoteFile("camelyonpatch_level_2_split_train_y.h5.gz", "35c2d7259d906cfc8143347bb8e05be7", "train"),
    RemoteFile("camelyonpatch_level_2_split_valid_x.h5.gz", "d5b63470df7cfa627aeec8b9dc0c066e", "valid"),
    RemoteFile("camelyonpatch_level_2_split_valid_y.h5.gz", "2b85f58b927af9964a4c15b8f7e8f179", "valid"),
    RemoteFile("camelyonpatch_level_2_split_test_x.h5.gz", "d8c2d60d490dbd479f8199bdfa0cf6ec", "test"),
    RemoteFile("camelyonpatch_level_2_split_test_y.h5.gz", "60a7035772fbdb7f34eb86d4420cf66a", "test"),
    RemoteFile("camelyonpatch_level_2_split_train_meta.csv", "5a3dd671e465cfd74b5b822125e65b0a", "train"),
    RemoteFile("camelyonpatch_level_2_split_valid_meta.csv", "67589e00a4a37ec317f2d1932c7502ca", "valid"),
    RemoteFile("camelyonpatch_level_2_split_test_meta.csv", "3455fd69135b66734e1008f3af684566", "test"),
)


class DownloadError(RuntimeError):
    """A download that cannot complete: HTTP error, truncated stream, checksum mismatch, bad gzip."""


class CorruptDownload(DownloadError):
    """The bytes received are wrong (checksum or gzip error): resuming them would not help."""


def _file_url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/{name}?download=1"


class _Sink:
    """Takes compressed bytes: appends them to the partial archive, hashes them, and writes their
    decompressed form to the partial output."""

    def __init__(self, remote: RemoteFile, dest: Path) -> None:
        self.remote = remote
        self.archive = dest / (remote.name + ".part")
        self.output = dest / (remote.local_name + ".part")
        self._fresh_state()

    def _fresh_state(self) -> None:
        self.md5 = hashlib.md5()
        self.received = 0
        self._z = zlib.decompressobj(wbits=47) if self.remote.gzipped else None  # 47: gzip header

    def reset(self) -> None:
        """Forget everything received: delete the partial files and start the hash and gzip state anew."""
        self.archive.unlink(missing_ok=True)
        self.output.unlink(missing_ok=True)
        self._fresh_state()

    def replay_existing(self) -> int:
        """Rebuild hash and decompressor state from a partial archive left by an earlier attempt."""
        if not self.archive.exists():
            self.output.unlink(missing_ok=True)
            return 0
        with open(self.output, "wb") if self._z else _NullWriter() as out, open(self.archive, "rb") as src:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                self._consume(chunk, out)
        return self.received

    def _consume(self, chunk: bytes, out) -> None:
        self.md5.update(chunk)
        self.received += len(chunk)
        if self._z is not None:
            try:
                out.write(self._z.decompress(chunk))
            except zlib.error as err:
                raise CorruptDownload(f"{self.remote.name}: corrupt gzip data after {self.received} bytes ({err})") from err

    def stream(self, chunks, progress: Callable[[int], None] | None) -> None:
        with open(self.archive, "ab") as archive, (open(self.output, "ab") if self._z else _NullWriter()) as out:
            for chunk in chunks:
                if not chunk:
                    continue
                archive.write(chunk)
                self._consume(chunk, out)
                if progress:
                    progress(len(chunk))
            if self._z is not None:
                out.write(self._z.flush())
            archive.flush()
            os.fsync(archive.fileno())

    def discard(self) -> Path:
        """Set corrupt partial files aside, so that the next attempt starts afresh."""
        bad = self.archive.with_name(self.archive.name + ".bad")
        if self.archive.exists():
            os.replace(self.archive, bad)
        self.output.unlink(missing_ok=True)
        return bad

    def finish(self, final: Path) -> None:
        if self.md5.hexdigest() != self.remote.md5:
            raise CorruptDownload(
                f"{self.remote.name}: MD5 {self.md5.hexdigest()} does not match the published {self.remote.md5}"
            )
        if self._z is not None:
            if not self._z.eof:
                raise DownloadError(f"{self.remote.name}: the gzip stream ended early (truncated archive)")
            os.replace(self.output, final)
            self.archive.unlink()
        else:
            os.replace(self.archive, final)


class _NullWriter:
    def write(self, data: bytes) -> int:
        return len(data)

    def __enter__(self) -> _NullWriter:
        return self

    def __exit__(self, *exc) -> None:
        return None


def download_file(
    remote: RemoteFile,
    dest: str | Path,
    *,
    base_url: str = DEFAULT_BASE_URL,
    session: requests.Session | None = None,
    timeout: float = 60.0,
    progress_factory: Callable[[str, int | None, int], Callable[[int], None]] | None = None,
) -> Path:
    """Fetch one published file into `dest` (decompressed when it is a .gz), resuming a partial one."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / remote.local_name
    if final.exists():
        log.info("%s already present; skipped", final)
        return final
    sink = _Sink(remote, dest)
    try:
        _fetch(sink, remote, final, base_url, session or requests.Session(), timeout, progress_factory)
    except CorruptDownload as err:
        bad = sink.discard()
        raise CorruptDownload(f"{err}; the download is corrupt (set aside as {bad.name}); run the command again to fetch it afresh") from err
    return final


def _fetch(sink: _Sink, remote: RemoteFile, final: Path, base_url: str, session: requests.Session, timeout: float, progress_factory) -> None:
    have = sink.replay_existing()
    headers = {"Range": f"bytes={have}-"} if have else {}
    url = _file_url(base_url, remote.name)
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as err:
        raise DownloadError(f"{remote.name}: cannot reach {url} ({err}); run the command again to resume") from err
    with response:
        if response.status_code == 416 and have:  # nothing left to fetch
            sink.finish(final)
            return
        if have and response.status_code == 200:  # the server ignored the Range header: start over
            log.warning("%s: server does not support resuming; downloading from the start", remote.name)
            sink.reset()
            have = 0
        elif response.status_code not in (200, 206):
            raise DownloadError(f"{remote.name}: HTTP {response.status_code} from {url}")
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        progress = progress_factory(remote.name, total, have) if progress_factory else None
        try:
            sink.stream(response.iter_content(CHUNK), progress)
        except (requests.RequestException, ConnectionError) as err:
            raise DownloadError(
                f"{remote.name}: connection lost after {sink.received} bytes ({err}); run the command again to resume"
            ) from err
        if total is not None and sink.received < total:
            raise DownloadError(
                f"{remote.name}: the server sent {sink.received} of {total} bytes; run the command again to resume"
            )
    sink.finish(final)


def download_pcam(
    dest: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    base_url: str = DEFAULT_BASE_URL,
    files: tuple[RemoteFile, ...] = FILES,
    progress_factory: Callable[[str, int | None, int], Callable[[int], None]] | None = None,
    timeout: float = 60.0,
) -> list[Path]:
    """Download the published PCam files of `splits` into `dest` (the layout `PCamH5` reads)."""
    bad = [s for s in splits if s not in ("train", "valid", "test")]
    if bad:
        raise ValueError(f"unknown split(s) {', '.join(bad)}; valid: train, valid, test")
    with requests.Session() as session:
        return [
            download_file(f, dest, base_url=base_url, session=session, timeout=timeout, progress_factory=progress_factory)
            for f in files
            if f.split in splits
        ]
