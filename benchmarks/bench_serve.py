"""`pcam serve` against the bare forward pass of the same run: latency of one patch (p50/p99) and
patches/s with many concurrent clients, with the micro-batcher on and off (`--max-batch 1`).

    python benchmarks/bench_serve.py --run RUN_DIR [--clients 16] [--seconds 10] [--requests 200]

Each request carries one real PCam tif (tests/data/pcam-real-kaggle) as a multipart upload; the server is a
real `pcam serve` process on 127.0.0.1 (its CPU shared with this client process), both with
OMP_WAIT_POLICY=PASSIVE unless set otherwise. The bare forward pass is
`Predictor.predict` on the decoded pixels in this process: 1 patch for latency, batches of 256 for throughput.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Idle OpenMP threads sleep instead of spinning, here and in the server (which inherits it): on a shared, loaded
# CPU spinning threads made one bare forward pass 6x slower (105 ms against 16 ms for one patch on 2 cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pcam_core.api import load_predictor  # noqa: E402
from pcam_core.data.common import decode_image  # noqa: E402

TIFS = REPO / "tests" / "data" / "pcam-real-kaggle" / "train"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(seconds: list[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50)), float(np.percentile(seconds, 99))


class Server:
    def __init__(self, run: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "pcam_core", "serve", "--run", run, "--port", str(self.port),
                                      "--device", "cpu", *extra], cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        self.stop()
        raise SystemExit("pcam serve did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def latency(url: str, files: list[tuple[str, bytes]], n: int) -> list[float]:
    times = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(n + 5):
            name, data = files[i % len(files)]
            t0 = time.perf_counter()
            r = c.post("/v1/predict", files=[("files", (name, data, "image/tiff"))])
            if r.status_code != 200:
                raise SystemExit(r.text)
            if i >= 5:  # warm-up left out
                times.append(time.perf_counter() - t0)
    return times


def throughput(url: str, files: list[tuple[str, bytes]], clients: int, seconds: float) -> tuple[float, int, list[float]]:
    """(patches/s, errors, per-request latencies) with `clients` threads each sending one patch at a time."""
    done, errors, times = [0], [0], []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            i = k
            while time.perf_counter() < stop_at:
                name, data = files[i % len(files)]
                t0 = time.perf_counter()
                r = c.post("/v1/predict", files=[("files", (name, data, "image/tiff"))])
                with lock:
                    if r.status_code == 200:
                        done[0] += 1
                        times.append(time.perf_counter() - t0)
                    else:
                        errors[0] += 1
                i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.perf_counter() - start), errors[0], times


def bare_pass(predictor, pixels: np.ndarray, n: int) -> tuple[float, float, float]:
    """(p50, p99 seconds for one patch, patches/s in batches of 256) of `Predictor.predict` in this process."""
    one = []
    for i in range(n + 5):
        t0 = time.perf_counter()
        predictor.predict(pixels[i % len(pixels)][None])
        if i >= 5:
            one.append(time.perf_counter() - t0)
    big = np.concatenate([pixels] * 4)  # 256 patches
    predictor.predict(big)
    t0, reps = time.perf_counter(), 5
    for _ in range(reps):
        predictor.predict(big)
    return (*percentiles(one), reps * len(big) / (time.perf_counter() - t0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=200, help="sequential one-patch requests for the latency")
    args = parser.parse_args()

    paths = sorted(TIFS.glob("*.tif"))[:64]
    files = [(p.name, p.read_bytes()) for p in paths]
    pixels = np.stack([decode_image(data, name=name).pixels for name, data in files])
    predictor = load_predictor(args.run, device="cpu")
    bare = [bare_pass(predictor, pixels, args.requests)]  # again after the servers: the machine's speed drifts
    rows = []
    for label, extra in (("batched (default)", ()), ("unbatched (--max-batch 1)", ("--max-batch", "1"))):
        server = Server(args.run, *extra)
        try:
            p50, p99 = percentiles(latency(server.url, files, args.requests))
            before = httpx.get(f"{server.url}/v1/model", timeout=10).json()["batching"]["one_pass"]
            rate, errors, times = throughput(server.url, files, args.clients, args.seconds)
            after = httpx.get(f"{server.url}/v1/model", timeout=10).json()["batching"]["one_pass"]
            passes = {k: after[k] - before[k] for k in after}  # of the concurrent phase alone
        finally:
            server.stop()
        rows.append((label, p50, p99, rate, errors, times, passes))
    bare.append(bare_pass(predictor, pixels, args.requests))
    bare_p50 = float(np.mean([b[0] for b in bare]))
    bare_rate = float(np.mean([b[2] for b in bare]))
    for b in bare:
        print(f"bare forward ({predictor.model_name}, this process): one patch p50 {b[0] * 1000:.1f} ms, p99 {b[1] * 1000:.1f} ms; "
              f"batches of 256: {b[2]:.0f} patches/s")
    for label, p50, p99, rate, errors, times, passes in rows:
        c50, c99 = percentiles(times)
        print(f"pcam serve, {label}: one patch p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
              f"({p50 / bare_p50:.1f}x the bare pass); {args.clients} clients: {rate:.0f} patches/s "
              f"({rate / bare_rate:.2f} of the bare batched pass), request p50 {c50 * 1000:.0f} ms, p99 {c99 * 1000:.0f} ms, "
              f"{errors} errors; {passes['patches']} patches in {passes['forward_passes']} forward passes "
              f"({passes['patches'] / max(1, passes['forward_passes']):.1f} a pass)")


if __name__ == "__main__":
    main()
