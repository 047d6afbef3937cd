"""Server memory per parked long-poll (issue 17.6): a real `assist-server serve` (SQLite),
BENCH_LONGPOLL_AGENTS registered agents (default 1000), each parking one signed
`GET /luban/api/v1/notify` on its own raw socket.

Figures (kilobytes of the server's RSS, /proc/PID/status VmRSS):
- longpoll_memory: RSS growth per parked long-poll; baseline: per open keep-alive connection
  that asked /healthz once (what any connection costs in the same server, same run).
  Target: <= 10 KB per parked long-poll.
- longpoll_memory_kept: RSS still held per long-poll TRIM_WAIT s after the agents left
  (given back: ~0; the server trims freed heap, common/connguard.py MemoryTrimmer).
Each is the median of BENCH_LONGPOLL_RUNS rounds (default 3) after a warm-up round.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from bench.figures import emit, median_figure  # noqa: E402
from common.protocol import sign_request  # noqa: E402
from devkit.server import FakeAgent, ServerHandle, launch_server  # noqa: E402

AGENTS = int(os.environ.get("BENCH_LONGPOLL_AGENTS", "1000"))
RUNS = int(os.environ.get("BENCH_LONGPOLL_RUNS", "3"))
TARGET_KB = 10.0
KEPT_KB = 1.0  # "given back": at most this much per long-poll stays after the agents left
POLL = "/luban/api/v1/notify"


def rss_kb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return float(line.split()[1])
    raise RuntimeError(f"no {field}")


def waiting(server: ServerHandle) -> int:
    return int(requests.get(server.url + "/healthz", timeout=30).json()["waiting"])


TRIM_WAIT = 12.0  # seconds: the server trims freed heap 5-10 s after connections closed


def settle(server: ServerHandle, parked: int, timeout: float = 60, pause: float = 1.0) -> float:
    """RSS once `parked` long-polls wait and `pause` seconds passed."""
    deadline = time.monotonic() + timeout
    while waiting(server) != parked:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{waiting(server)} long-polls parked, wanted {parked}")
        time.sleep(0.2)
    time.sleep(pause)
    return rss_kb(server.process.pid)


def connect(server: ServerHandle) -> socket.socket:
    host, port = server.url.split("://", 1)[1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def park_polls(server: ServerHandle, agents: list[FakeAgent]) -> list[socket.socket]:
    """One signed long-poll per agent (60 s), on a raw socket each, never read."""
    socks = []
    for agent in agents:
        headers = sign_request(agent.key, agent.instance_id, "GET", POLL, "timeout=60", b"")
        lines = [f"GET {POLL}?timeout=60 HTTP/1.1", "Host: bench"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock = connect(server)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        socks.append(sock)
    return socks


def idle_connections(server: ServerHandle, count: int) -> list[socket.socket]:
    """`count` keep-alive connections that asked /healthz once and stay open."""
    socks = []
    for _ in range(count):
        sock = connect(server)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
        sock.recv(65536)
        socks.append(sock)
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def register(server: ServerHandle) -> list[FakeAgent]:
    key_id, secret = server.create_access_key("bench")
    agents: list[FakeAgent] = []
    while len(agents) < AGENTS:
        activation = server.create_activation(key_id, secret, count=min(1000, AGENTS))
        for _ in range(min(1000, AGENTS - len(agents))):
            agents.append(FakeAgent.register(server.url, *activation))
    return agents


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-longpoll-") as tmp:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a socket per poll, here too
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * AGENTS + 1024)), hard))
        # every agent's poll parks: the connection bound (default 4096) must not refuse any
        extra = ["--idle-timeout", "600", "--max-connections", str(AGENTS + 1000)]
        server = launch_server(Path(tmp), extra_args=extra)
        try:
            agents = register(server)
            per_poll: list[float] = []
            per_conn: list[float] = []
            kept: list[float] = []
            for round_no in range(RUNS + 1):  # round 0 warms the allocator up
                before = settle(server, 0, pause=TRIM_WAIT)
                socks = idle_connections(server, AGENTS)
                time.sleep(1.0)
                conn_kb = (rss_kb(server.process.pid) - before) / AGENTS
                close_all(socks)
                before = settle(server, 0, pause=TRIM_WAIT)
                anon = rss_kb(server.process.pid, "RssAnon")
                socks = park_polls(server, agents)
                poll_kb = (settle(server, AGENTS) - before) / AGENTS
                close_all(socks)
                kept_kb = (settle(server, 0, pause=TRIM_WAIT) - before) / AGENTS
                heap_kb = (rss_kb(server.process.pid, "RssAnon") - anon) / AGENTS
                print(
                    f"round {round_no}: {poll_kb:.2f} KB/poll, {conn_kb:.2f} KB/connection,"
                    f" {kept_kb:.2f} KB/poll kept after leaving (heap: {heap_kb:.2f} KB/poll)",
                    file=sys.stderr,
                )
                if round_no:
                    per_poll.append(poll_kb)
                    per_conn.append(conn_kb)
                    kept.append(kept_kb)
        finally:
            server.stop()
    import statistics

    median_figure(
        "longpoll_memory",
        per_poll,
        per_conn,
        f"<= {TARGET_KB} KB per parked long-poll",
        unit="KB",
        agents=AGENTS,
        target_met=statistics.median(per_poll) <= TARGET_KB,
    )
    emit(
        "longpoll_memory_kept",
        round(statistics.median(kept), 3),
        round(statistics.median(per_poll), 3),
        "KB",
        f"<= {KEPT_KB} KB kept after leaving, per long-poll (baseline: while parked)",
        agents=AGENTS,
        target_met=statistics.median(kept) <= KEPT_KB,
    )


if __name__ == "__main__":
    main()
