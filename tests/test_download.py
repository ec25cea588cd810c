"""`pcam download` against a local HTTP server on 127.0.0.1: streaming, resume, truncation, corruption."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import random_patches, run_cli, write_official_h5
from pcam_core.data import PCamH5
from pcam_core.data.download import CorruptDownload, DownloadError, RemoteFile, download_file, download_pcam


class _Server:
    """Serves `files` (name -> bytes) with HTTP Range support. `mode` misbehaves on purpose:
    "cut" sends only the first `cut_at` bytes of a body then closes; "corrupt" flips bytes;
    "norange" ignores Range headers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "ok"
        self.cut_at = 0
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                name = self.path.split("?")[0].rsplit("/", 1)[-1]
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                start = 0
                rng = self.headers.get("Range")
                if rng and server.mode != "norange":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                if server.mode == "corrupt":
                    payload = bytes(b ^ 0x5A if i % 997 == 500 else b for i, b in enumerate(payload))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.mode == "cut":
                    self.wfile.write(payload[: server.cut_at])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/records/2546921/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def published(tmp_path):
    """Official-layout files, gzipped as Zenodo publishes them, with their MD5s."""
    src = tmp_path / "src"
    images = random_patches(200, seed=11)
    write_official_h5(src, "valid", images, np.arange(200) % 2)
    (src / "camelyonpatch_level_2_split_valid_meta.csv").write_text(",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n"
                                                                       + "".join(f"{i},1,2,False,False,s{i}\n" for i in range(200)))
    blobs, remotes = {}, []
    for path in sorted(src.iterdir()):
        data = path.read_bytes()
        name = path.name + ".gz" if path.suffix == ".h5" else path.name
        blob = gzip.compress(data, compresslevel=1) if name.endswith(".gz") else data
        blobs[name] = blob
        remotes.append(RemoteFile(name, hashlib.md5(blob).hexdigest(), "valid"))
    return blobs, tuple(remotes), images


def test_download_decompresses_checks_and_is_readable(published, tmp_path):
    blobs, remotes, images = published
    with _Server() as server:
        server.files = blobs
        paths = download_pcam(tmp_path / "dest", splits=("valid",), base_url=server.url, files=remotes)
    assert sorted(p.name for p in paths) == sorted(r.local_name for r in remotes)
    ds = PCamH5(tmp_path / "dest", "valid")
    assert np.array_equal(ds.read_pixels(np.arange(200)), images)
    assert ds[3]["meta"]["wsi"] == "s3"
    assert not list((tmp_path / "dest").glob("*.part"))


def test_truncated_response_resumes_with_range(published, tmp_path):
    blobs, remotes, images = published
    remote = next(r for r in remotes if r.name.endswith("_x.h5.gz"))
    dest = tmp_path / "dest"
    with _Server() as server:
        server.files = blobs
        server.mode, server.cut_at = "cut", len(blobs[remote.name]) // 3
        with pytest.raises(DownloadError, match="run the command again to resume"):
            download_file(remote, dest, base_url=server.url)
        kept = (dest / (remote.name + ".part")).stat().st_size
        assert 0 < kept <= server.cut_at  # whole chunks received before the cut are kept
        assert not (dest / remote.local_name).exists()  # nothing half-written under the final name
        server.mode = "ok"
        download_file(remote, dest, base_url=server.url)
        assert server.requests[-1] == (remote.name, f"bytes={kept}-")
    with open(dest / remote.local_name, "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == hashlib.md5(gzip.decompress(blobs[remote.name])).hexdigest()


@pytest.mark.slow
def test_corrupted_response_is_refused_and_set_aside(published, tmp_path):
    blobs, remotes, _ = published
    remote = next(r for r in remotes if r.name.endswith("_x.h5.gz"))
    dest = tmp_path / "dest"
    with _Server() as server:
        server.files = blobs
        server.mode = "corrupt"
        with pytest.raises(CorruptDownload, match="corrupt"):
            download_file(remote, dest, base_url=server.url)
        assert not (dest / remote.local_name).exists()
        assert (dest / (remote.name + ".part.bad")).exists()
        server.mode = "ok"  # the next attempt starts afresh and succeeds
        download_file(remote, dest, base_url=server.url)
        assert server.requests[-1][1] is None
    assert (dest / remote.local_name).exists()


def test_checksum_mismatch_is_refused(published, tmp_path):
    blobs, remotes, _ = published
    wrong = RemoteFile(remotes[0].name, "0" * 32, "valid")
    with _Server() as server:
        server.files = blobs
        with pytest.raises(CorruptDownload, match="does not match the published"):
            download_file(wrong, tmp_path / "dest", base_url=server.url)
    assert not (tmp_path / "dest" / wrong.local_name).exists()


def test_server_without_range_support_restarts(published, tmp_path):
    blobs, remotes, _ = published
    remote = next(r for r in remotes if r.name.endswith("_x.h5.gz"))
    dest = tmp_path / "dest"
    with _Server() as server:
        server.files = blobs
        server.mode, server.cut_at = "cut", 5000
        with pytest.raises(DownloadError):
            download_file(remote, dest, base_url=server.url)
        server.mode = "norange"
        download_file(remote, dest, base_url=server.url)
    assert (dest / remote.local_name).exists()


def test_http_error_and_unreachable_server(tmp_path):
    with _Server() as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            download_file(RemoteFile("missing.h5.gz", "0" * 32, "valid"), tmp_path, base_url=server.url)
    with pytest.raises(DownloadError, match="cannot reach"):
        download_file(RemoteFile("x.h5.gz", "0" * 32, "valid"), tmp_path, base_url="http://127.0.0.1:9", timeout=2)


@pytest.mark.slow  # a Python process of its own (`pcam download`)
def test_cli_download_reports_failure_cleanly(tmp_path):
    result = run_cli("download", "--dest", str(tmp_path), "--splits", "valid", "--base-url", "http://127.0.0.1:9", "--timeout", "2")
    assert result.returncode == 2
    assert result.stderr.startswith("error: camelyonpatch_level_2_split_valid_x.h5.gz: cannot reach")
    assert "Traceback" not in result.stderr
