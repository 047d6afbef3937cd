"""A forwarding proxy on loopback that can rewrite or replay answers: the network attacker.

It sits between agent and assist-server like a load balancer would: every request is forwarded
unchanged (headers and body); `rewrite(path, body) -> body` may change an answer in transit and
`replay(path, request_headers) -> (status, headers, body) | None` may answer from a capture
instead of forwarding; `unsign(path) -> bool` strips the signature headers of an answer;
`hold(path_and_query) -> seconds` delays a request before it is forwarded. Every request and
answer is recorded.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

Answer = tuple[int, dict[str, str], bytes]
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: MitmProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        path = urlsplit(self.path).path
        proxy = self.server
        with proxy.lock:
            proxy.requests.append((self.command, path, headers, body))
        if proxy.hold:
            time.sleep(proxy.hold(self.path))
        answer = proxy.replay(path, headers) if proxy.replay else None
        if answer is None:
            answer = self._forward(body, headers)
        status, out_headers, content = answer
        with proxy.lock:
            proxy.answers.append((path, status, dict(out_headers), content))
        if proxy.rewrite:
            content = proxy.rewrite(path, content)
        if proxy.unsign and proxy.unsign(path):
            out_headers = {
                k: v for k, v in out_headers.items() if not k.lower().startswith("x-assist-server")
            }
        self.send_response(status)
        for name, value in out_headers.items():
            if name.lower() not in _HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _forward(self, body: bytes, headers: dict[str, str]) -> Answer:
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            upstream.close()

    do_GET = _relay
    do_POST = _relay


class MitmProxy(http.server.ThreadingHTTPServer):
    """Start with `with MitmProxy(server_url) as proxy:`; `proxy.url` is the agent's server."""

    daemon_threads = True

    def __init__(self, upstream_url: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = urlsplit(upstream_url).netloc
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.answers: list[tuple[str, int, dict[str, str], bytes]] = []
        self.rewrite: Callable[[str, bytes], bytes] | None = None
        self.replay: Callable[[str, dict[str, str]], Answer | None] | None = None
        # answers to paths it is true for lose the control plane's signature headers
        self.unsign: Callable[[str], bool] | None = None
        # seconds to hold a request (its path with the query) before forwarding it
        self.hold: Callable[[str], float] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, path_end: str) -> int:
        """How many requests to a path ending in `path_end` went through."""
        with self.lock:
            return sum(1 for _, path, _, _ in self.requests if path.endswith(path_end))

    def __enter__(self) -> MitmProxy:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()
