"""The slow-loris guard's cost (common/connguard.py): requests per second through uvicorn with
GuardedHttpProtocol against plain uvicorn httptools, same trivial ASGI app, same run.

Figures: connguard_keepalive (BENCH_GUARD_REQUESTS sequential requests on one keep-alive
connection) and connguard_connect (one new connection per request). Each runs both servers
interleaved, BENCH_GUARD_RUNS times after a warm-up; medians and their ratio.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import median_figure  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_GUARD_REQUESTS", "2000"))
CONNECTS = int(os.environ.get("BENCH_GUARD_CONNECTS", "300"))
RUNS = int(os.environ.get("BENCH_GUARD_RUNS", "9"))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The smallest ASGI app: 200 "ok"."""
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def serve(kind: str, port: int) -> None:
    """Child: serve `app` with the guard or with plain httptools."""
    import uvicorn

    from common.connguard import serve_asgi
    from common.listen import ConnLimits

    if kind == "guarded":
        serve_asgi(app, "127.0.0.1", port, ConnLimits(), log_level="warning")
    else:
        uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", log_level="warning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(kind: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", kind, str(port)], stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{kind} server did not start")


def keepalive(port: int, count: int) -> float:
    """Seconds for `count` requests on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    started = time.perf_counter()
    for _ in range(count):
        conn.request("GET", "/")
        conn.getresponse().read()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def connects(port: int, count: int) -> float:
    """Seconds for `count` requests, each on a new connection."""
    started = time.perf_counter()
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/", headers={"Connection": "close"})
        conn.getresponse().read()
        conn.close()
    return time.perf_counter() - started


def main() -> None:
    guarded, guarded_port = start("guarded")
    plain, plain_port = start("plain")
    try:
        keepalive(guarded_port, 200), keepalive(plain_port, 200)  # warm-up
        times: dict[str, list[float]] = {"ka_g": [], "ka_p": [], "c_g": [], "c_p": []}
        for _ in range(RUNS):
            times["ka_g"].append(keepalive(guarded_port, REQUESTS))
            times["ka_p"].append(keepalive(plain_port, REQUESTS))
            times["c_g"].append(connects(guarded_port, CONNECTS))
            times["c_p"].append(connects(plain_port, CONNECTS))
        median_figure(
            "connguard_keepalive", times["ka_g"], times["ka_p"], "<= 1.15", requests=REQUESTS
        )
        median_figure("connguard_connect", times["c_g"], times["c_p"], "<= 1.15", requests=CONNECTS)
    finally:
        for proc in (guarded, plain):
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
