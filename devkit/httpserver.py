"""A real loopback HTTP server for tests: static files with Range, and hooks for misbehaviour.

    with StaticServer(root) as server:
        requests.get(server.url + "metadata/timestamp.json")

`server.hook` may be set to a callable(handler) -> bool that handles a request itself (serve
garbage, hang, stall mid-body…) and returns True, or returns False to fall through to the files.
`server.requests` records every request path, for tests that count requests.
"""

from __future__ import annotations

import http.server
import os
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def __init__(self, request: Any, client_address: Any, server: _Server) -> None:
        super().__init__(request, client_address, server, directory=str(server.root))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        return

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        hook = self.server.hook
        if hook is not None and hook(self):
            return
        path = Path(self.translate_path(self.path))
        match = _RANGE.match(self.headers.get("Range", ""))
        if match and path.is_file():
            self._send_range(path, int(match.group(1)), match.group(2))
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        self.server.requests.append(self.path)
        super().do_HEAD()

    def _send_range(self, path: Path, start: int, end_text: str) -> None:
        size = path.stat().st_size
        end = min(int(end_text), size - 1) if end_text else size - 1
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        with path.open("rb") as handle:
            handle.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = handle.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    hook: Callable[[_Handler], bool] | None
    requests: list[str]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-body (failover tests do) is expected, not a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class StaticServer:
    """Serve `root` on 127.0.0.1 on an ephemeral port in a background thread."""

    def __init__(self, root: str | os.PathLike[str], port: int = 0) -> None:
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.httpd.root = Path(root)
        self.httpd.hook = None
        self.httpd.requests = []
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}/"

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    @property
    def hook(self) -> Callable[[Any], bool] | None:
        return self.httpd.hook

    @hook.setter
    def hook(self, value: Callable[[Any], bool] | None) -> None:
        self.httpd.hook = value

    def start(self) -> StaticServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def endless_body(suffix: str, chunk: bytes, times: int) -> Callable[[Any], bool]:
    """A StaticServer hook: a request for a path ending in `suffix` gets 200 and `chunk` written
    `times` times with no Content-Length (a body that seems to have no end); others pass."""

    def hook(handler: Any) -> bool:
        if not handler.path.endswith(suffix):
            return False
        handler.send_response(200)
        handler.end_headers()
        try:
            for _ in range(times):
                handler.wfile.write(chunk)
        except OSError:
            pass
        return True

    return hook
