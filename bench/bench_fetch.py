"""Fetcher throughput: Fetcher.download(..., expected_sha256=...) against
`curl -s URL | openssl dgst -sha256`.

    .venv/bin/python -m bench fetch         (or: .venv/bin/python bench/bench_fetch.py)

A random file (BENCH_FETCH_MB, default 200 MB) is served on loopback by a separate server process
that answers with sendfile, so the server is not what is measured. Each run downloads it once
with our Fetcher (stream, hash while downloading, write .part, fsync, rename) and once with the
shell pipeline (curl into OpenSSL's sha256, nothing written: the floor, as coreutils' sha256sum is
several times slower than OpenSSL's SHA-NI code), interleaved, BENCH_FETCH_RUNS times (default
5) after one warm-up each; a third download per run with durable=False (no fsync: how the
mirror stages files before its one syncfs) is the second figure, fetch_download_sha256_staged.
Prints the medians as JSON lines; target: ours/baseline <= 1.15.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.figures import median_figure  # noqa: E402
from common.fetch import Fetcher  # noqa: E402

FILE_NAME = "big.bin"
TARGET = "<= 1.15"


class _SendfileHandler(http.server.BaseHTTPRequestHandler):
    """GET /<name> from the served directory, body via socket.sendfile."""

    protocol_version = "HTTP/1.1"
    root: Path

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    def do_GET(self) -> None:
        path = self.root / self.path.lstrip("/").split("?", 1)[0]
        if "/" in self.path.lstrip("/") or not path.is_file():
            self.send_error(404)
            return
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.flush()
            self.connection.sendfile(handle)


def serve(root: str) -> None:
    """Serve `root` on an ephemeral loopback port; print the port, run until killed."""
    handler = type("Handler", (_SendfileHandler,), {"root": Path(root)})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


def make_file(path: Path, megabytes: int) -> str:
    """Write `megabytes` MB of random data; return its sha256."""
    digest = hashlib.sha256()
    block = 1 << 20
    with path.open("wb") as handle:
        remaining = megabytes * 1_000_000
        while remaining > 0:
            data = os.urandom(min(block, remaining))
            handle.write(data)
            digest.update(data)
            remaining -= len(data)
    return digest.hexdigest()


def time_ours(url: str, dest: Path, sha256: str, durable: bool = True) -> float:
    """Seconds for one verified Fetcher.download; the result is removed afterwards."""
    fetcher = Fetcher([url], progress=False)
    started = time.perf_counter()
    result = fetcher.download(FILE_NAME, dest, expected_sha256=sha256, durable=durable)
    elapsed = time.perf_counter() - started
    assert result.sha256 == sha256
    dest.unlink()
    return elapsed


def time_baseline(url: str, sha256: str) -> float:
    """Seconds for `curl -s URL | openssl dgst -sha256` (checked against the expected digest)."""
    command = f"curl -s --noproxy '*' {shlex.quote(url + FILE_NAME)} | openssl dgst -sha256"
    started = time.perf_counter()
    done = subprocess.run(command, shell=True, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    assert done.stdout.split()[-1] == sha256, done.stdout
    return elapsed


def main() -> None:
    """Measure and print one JSON line."""
    megabytes = int(os.environ.get("BENCH_FETCH_MB", "200"))
    runs = int(os.environ.get("BENCH_FETCH_RUNS", "5"))
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        root = Path(tmp) / "www"
        root.mkdir()
        sha256 = make_file(root / FILE_NAME, megabytes)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(root)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            url = f"http://127.0.0.1:{server.stdout.readline().strip()}/"
            dest = Path(tmp) / "out" / FILE_NAME
            time_ours(url, dest, sha256)  # warm-up: page cache, imports, connection set-up
            time_baseline(url, sha256)
            ours: list[float] = []
            staged: list[float] = []
            baseline: list[float] = []
            for _ in range(runs):
                ours.append(time_ours(url, dest, sha256))
                staged.append(time_ours(url, dest, sha256, durable=False))
                baseline.append(time_baseline(url, sha256))
        finally:
            server.kill()
            server.wait()
    ours_s, baseline_s = statistics.median(ours), statistics.median(baseline)
    median_figure(
        "fetch_download_sha256",
        ours,
        baseline,
        TARGET,
        size_mb=megabytes,
        ours_mb_s=round(megabytes / ours_s, 1),
        baseline_mb_s=round(megabytes / baseline_s, 1),
        baseline_cmd="curl -s URL | openssl dgst -sha256",
        ours_runs=[round(x, 4) for x in ours],
        baseline_runs=[round(x, 4) for x in baseline],
    )
    median_figure(
        "fetch_download_sha256_staged",
        staged,
        baseline,
        TARGET,
        size_mb=megabytes,
        note="durable=False: no fsync of the file (the mirror stages this way; one syncfs later)",
        baseline_cmd="curl -s URL | openssl dgst -sha256",
        ours_runs=[round(x, 4) for x in staged],
        baseline_runs=[round(x, 4) for x in baseline],
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        main()
