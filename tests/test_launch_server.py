"""launch_server() hands back a server only when the one answering on its port is its own: a
port from free_port() can be taken by another test's server first (CI once ran a module's
tests against another module's server, on a database nobody had migrated)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import devkit.server
from devkit.server import free_port, launch_server, listens_on


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def impostor() -> Iterator[int]:
    """Another process's stand-in: something on a loopback port that answers /healthz 200."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_taken_port_chosen_by_the_caller_is_an_error(tmp_path: Path, impostor: int) -> None:
    assert requests.get(f"http://127.0.0.1:{impostor}/healthz", timeout=5).ok
    with pytest.raises(RuntimeError, match="taken by another process"):
        launch_server(tmp_path, port=impostor)


def test_a_taken_free_port_is_replaced_by_another(
    tmp_path: Path, impostor: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    offered = [impostor]
    monkeypatch.setattr(
        devkit.server, "free_port", lambda: offered.pop() if offered else free_port()
    )
    handle = launch_server(tmp_path)
    try:
        port = int(handle.url.rsplit(":", 1)[1])
        assert port != impostor and not offered
        assert listens_on(handle.process.pid, port)
        assert not listens_on(handle.process.pid, impostor)
        assert requests.get(handle.url + "/healthz", timeout=5).json()["ok"] is True
    finally:
        handle.stop()


def test_free_ports_come_from_this_workers_range_below_the_kernels_and_never_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(11_500 <= port < 13_000 for port in ports)
    assert max(ports) < ephemeral_low
