"""The agent's HTTP seam against misbehaving loopback servers: endless or deeply nested answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.client import MAX_ANSWER, AgentClient, KickGuard, ServerUnavailableError
from agent.identity import Identity, generate_key
from common.protocol import ResponseRefusedError


class Flood(BaseHTTPRequestHandler):
    """Answers every request with 200 and a body far larger than any real answer."""

    sent = 0
    answers = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Flood.answers += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        block = b"[" * 65536
        try:
            for _ in range(4 * MAX_ANSWER // len(block)):
                self.wfile.write(block)
                Flood.sent += len(block)
        except OSError:
            pass  # the client hung up, as it should

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Nested(Flood):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"[" * 100_000 + b"]" * 100_000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def flood() -> Iterator[str]:
    yield from serve(Flood)


@pytest.fixture
def nested() -> Iterator[str]:
    yield from serve(Nested)


def test_an_endless_answer_is_cut_at_the_cap(flood: str) -> None:
    client = AgentClient(flood, Identity("mi-1", generate_key()), timeout=10)
    with pytest.raises(ServerUnavailableError, match="more than"):
        client.list_tasks("poll")
    # the session handshake met the flood first, then the request itself: each was cut
    assert Flood.answers == 2
    assert Flood.sent < 2 * MAX_ANSWER * Flood.answers  # stopped reading, not all 4 x cap


def test_a_deeply_nested_answer_is_an_unavailable_server_not_a_crash(nested: str) -> None:
    client = AgentClient(nested, Identity("mi-1", generate_key()), timeout=10)
    # an unsigned answer is refused before it is parsed; the decoder itself must not crash either
    with pytest.raises(ResponseRefusedError):
        client.list_tasks("poll")
    with pytest.raises(ServerUnavailableError, match="not JSON"):
        client.call("POST", "/v1/task/list", {"reason": "poll"}, verify=False)


def test_kick_guard_takes_each_kick_once_and_none_older_than_the_agent() -> None:
    guard = KickGuard()
    assert not guard.fresh("k1", 1000)  # nothing signed for this process yet: list instead
    guard.answered(1000)  # the first answer signed for one of its requests
    guard.answered(2000)  # later ones do not move the floor
    assert not guard.fresh("k0", 999) and not guard.fresh("k0", 1000)  # before it started
    assert guard.fresh("k1", 1001)
    assert not guard.fresh("k1", 1001)  # played back
    assert guard.fresh("k2", 1002)
    assert guard.fresh("k3", 1003 + 10 * 300)  # much later: old ids are forgotten...
    assert list(guard._seen) == ["k3"]
    assert not guard.fresh("k3", 1003 + 10 * 300)  # ...but not the recent ones
