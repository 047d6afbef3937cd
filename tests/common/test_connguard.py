"""Slow-loris guard (common/connguard.py) of assist-server serve and assist-mirror serve: the
pure rules, then real servers under a real flood of raw sockets while a real client asks."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from common.connguard import (
    FD_RESERVE,
    HeadWithBody,
    MemoryTrimmer,
    Phase,
    connection_cap,
    pick_victim,
)
from devkit.server import (
    REPO_ROOT,
    FakeAgent,
    _env,
    free_port,
    launch_server,
    stop_group,
    wait_http,
)

NOFILE = 256  # the servers' open-files limit in the flood tests
FLOOD = 300  # stalled sockets: more than the server could hold open under NOFILE
PARTIAL = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "


# --- pure rules ---------------------------------------------------------------------------


def test_connection_cap_stays_below_the_open_files_limit() -> None:
    assert connection_cap(4096, 1024) == 1024 - FD_RESERVE
    assert connection_cap(100, 1024) == 100
    assert connection_cap(4096, 100) == 50  # tiny limits: half of it
    assert connection_cap(4096, 1) == 1


def test_pick_victim_takes_the_longest_waiting_client_paced_connection() -> None:
    conns = [("serving", Phase.APP, 1.0), ("idle", Phase.IDLE, 5.0), ("loris", Phase.WAIT, 2.0)]
    assert pick_victim(conns) == "loris"
    assert pick_victim([("body", Phase.BODY, 9.0), ("idle", Phase.IDLE, 10.0)]) == "body"


def test_pick_victim_never_takes_a_connection_being_served() -> None:
    assert pick_victim([("poll", Phase.APP, 0.0), ("poll2", Phase.APP, 1.0)]) is None
    assert pick_victim([]) is None


def test_memory_is_trimmed_once_after_many_connections_closed() -> None:
    """A wave of closes (256 below the high-water mark) schedules one trim, `delay` seconds
    later; a few closes do not; trims are at least `every` seconds apart."""
    import asyncio

    calls: list[int] = []
    trimmer = MemoryTrimmer(drop=10, every=2.0, delay=0.2)
    trimmer._trim = calls.append  # glibc's malloc_trim stands in for a recorder here

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        trimmer.opened(30)
        for open_now in range(29, 24, -1):  # 5 closes: below the drop
            trimmer.closed(loop, open_now)
        await asyncio.sleep(0.5)
        assert calls == []
        for open_now in range(24, -1, -1):  # the wave
            trimmer.closed(loop, open_now)
        assert calls == []  # `delay` later, not at once
        await asyncio.sleep(0.8)
        assert calls == [0]
        trimmer.opened(40)
        for open_now in range(39, -1, -1):
            trimmer.closed(loop, open_now)
        await asyncio.sleep(0.3)
        assert calls == [0]  # not yet: `every` since the last trim
        await asyncio.sleep(2.5)
        assert calls == [0, 0]

    asyncio.run(scenario())


# --- real servers ---------------------------------------------------------------------------


def limit_open_files() -> None:
    """preexec_fn: the child may open NOFILE files at most (soft and hard)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@contextlib.contextmanager
def running(args: list[str], url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A serve command under the open-files limit, until the block ends."""
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        env=_env(),
        preexec_fn=limit_open_files,
        start_new_session=True,
    )
    log.close()
    try:
        wait_http(url, proc, 60)
        yield proc
    finally:
        stop_group(proc)


def server_args(tmp_path: Path, port: int, *extra: str) -> list[str]:
    db = f"sqlite:///{tmp_path / 'assist.db'}"
    return ["server.cli", "serve", "--listen", f"127.0.0.1:{port}", "--db", db, *extra]


def mirror_args(tmp_path: Path, port: int, *extra: str) -> list[str]:
    root = tmp_path / "mirror"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "timestamp.json").write_text('{"signed": {}}')
    return ["mirror.cli", "serve", "--root", str(root), "--listen", f"127.0.0.1:{port}", *extra]


SERVERS = {
    "server": (server_args, "/healthz"),
    "mirror": (mirror_args, "/metadata/timestamp.json"),
}


def open_flood(port: int, count: int) -> list[socket.socket]:
    """`count` connections that start a request and never finish its headers."""
    flood: list[socket.socket] = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(PARTIAL)
        except OSError:  # refused or reset while the server makes room: still part of the flood
            continue
        flood.append(sock)
    return flood


def closed_by_server(sock: socket.socket, within: float = 30) -> bool:
    """Whether the server closes `sock` (EOF or reset) before `within` seconds pass."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_flood_of_stalled_connections_does_not_stop_real_clients(kind: str, tmp_path: Path) -> None:
    """More stalled sockets than the server has file descriptors; a real client is answered."""
    make_args, path = SERVERS[kind]
    port = free_port()
    url = f"http://127.0.0.1:{port}{path}"
    # long header timeout: the flood stays for the whole test; the bound must do the work
    args = make_args(tmp_path, port, "--header-timeout", "600")
    with running(args, url, tmp_path) as proc:
        flood = open_flood(port, FLOOD)
        try:
            answers = [requests.get(url, timeout=20).status_code for _ in range(5)]
            more = open_flood(port, 50)  # the flood keeps coming: still answered
            flood += more
            answers.append(requests.get(url, timeout=20).status_code)
        finally:
            for sock in flood:
                sock.close()
        assert answers == [200] * 6
        assert proc.poll() is None
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Too many open files" not in log
    assert "Traceback" not in log


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_stalled_headers_body_and_idle_connections_are_closed(kind: str, tmp_path: Path) -> None:
    make_args, path = SERVERS[kind]
    port = free_port()
    url = f"http://127.0.0.1:{port}{path}"
    timeouts = ["--header-timeout", "1", "--body-timeout", "1", "--idle-timeout", "1"]
    with running(make_args(tmp_path, port, *timeouts), url, tmp_path):
        silent = socket.create_connection(("127.0.0.1", port))  # connects, sends nothing
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(PARTIAL)
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
        keep = socket.create_connection(("127.0.0.1", port))
        keep.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        keep.settimeout(20)
        assert keep.recv(12).startswith(b"HTTP/1.1 ")
        for sock in (silent, partial, body, keep):
            with sock:
                assert closed_by_server(sock)
        assert requests.get(url, timeout=20).status_code == 200
    assert "Traceback" not in (tmp_path / "serve.log").read_text(errors="replace")


def open_sockets(pid: int) -> int:
    """How many sockets process `pid` holds."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_a_client_that_never_reads_its_response_is_cut_off(tmp_path: Path) -> None:
    """Slow read: a large file asked for and never read must not hold a connection forever."""
    port = free_port()
    args = mirror_args(tmp_path, port, "--body-timeout", "2")
    (tmp_path / "mirror" / "big.bin").write_bytes(os.urandom(32 << 20))
    url = f"http://127.0.0.1:{port}/metadata/timestamp.json"
    with running(args, url, tmp_path) as proc:
        baseline = open_sockets(proc.pid)
        readers = []
        for _ in range(3):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            readers.append(sock)
        deadline = time.monotonic() + 30
        while open_sockets(proc.pid) > baseline and time.monotonic() < deadline:
            time.sleep(0.25)
        held = open_sockets(proc.pid) - baseline
        for sock in readers:
            sock.close()
        assert held <= 0, f"{held} connections of clients that never read are still held"
        assert requests.get(url, timeout=20).status_code == 200


def test_long_poll_outlives_the_header_timeout(tmp_path: Path) -> None:
    """A notify long-poll (headers sent at once, then the server waits) is not cut."""
    handle = launch_server(tmp_path, extra_args=["--header-timeout", "1", "--body-timeout", "1"])
    try:
        key_id, secret = handle.create_access_key("loris")
        agent = FakeAgent.register(handle.url, *handle.create_activation(key_id, secret))
        assert agent.poll(timeout=3) == []  # cut at 1 s, this would raise a ConnectionError
    finally:
        handle.stop()


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_endless_request_headers_are_refused_with_431(kind: str, tmp_path: Path) -> None:
    """Headers beyond the size bound: 431 and closed (the header deadline is far off, so the
    size bound did it; the 431 may be lost to the reset that closing unread data causes)."""
    make_args, path = SERVERS[kind]
    port = free_port()
    url = f"http://127.0.0.1:{port}{path}"
    with running(make_args(tmp_path, port, "--header-timeout", "600"), url, tmp_path):
        sock = socket.create_connection(("127.0.0.1", port))
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            pad = b"X-Pad: " + b"a" * 1000 + b"\r\n"
            try:
                for _ in range(1024):  # 1 MiB of headers, never ended
                    sock.sendall(pad)
            except OSError:  # the server closed it while we were still sending
                pass
            sock.settimeout(30)
            try:
                answer = sock.recv(64)
            except ConnectionResetError:
                answer = b"reset"
            except TimeoutError:
                answer = b"still open"
        assert answer.startswith(b"HTTP/1.1 431") or answer == b"reset", answer
        assert requests.get(url, timeout=20).status_code == 200


class _Recorder:
    """The transport side of HeadWithBody: what reached the socket, one entry per write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True


class _Cycle:
    response_started = False


def test_the_response_head_goes_out_with_the_body_in_one_write() -> None:
    sink, cycle = _Recorder(), _Cycle()
    view = HeadWithBody(sink, cycle)  # type: ignore[arg-type]
    view.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response starts: at once
    cycle.response_started = True
    view.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert sink.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    view.write(b"body")
    view.write(b"more")
    assert sink.writes[1:] == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]


def test_a_held_head_is_written_before_the_connection_closes() -> None:
    sink, cycle = _Recorder(), _Cycle()
    view = HeadWithBody(sink, cycle)  # type: ignore[arg-type]
    cycle.response_started = True
    view.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    view.close()
    assert sink.writes == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"] and sink.closed


def test_head_and_expect_continue_requests_are_answered(tmp_path: Path) -> None:
    """HEAD (no body write) and a 100-continue body go through the real server."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(server_args(tmp_path, port), url + "/healthz", tmp_path):
        assert requests.head(url + "/healthz", timeout=10).status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /luban/api/heart-beat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(b"{}")
            assert sock.recv(4096).startswith(b"HTTP/1.1 401 ")
