"""The test HTTP server serves files and byte ranges."""

from __future__ import annotations

from typing import Any

import requests


def test_serves_file_and_range(static_server: Any) -> None:
    (static_server.httpd.root / "a.bin").write_bytes(b"0123456789")
    full = requests.get(static_server.url + "a.bin", timeout=5)
    assert full.content == b"0123456789"
    part = requests.get(static_server.url + "a.bin", headers={"Range": "bytes=4-"}, timeout=5)
    assert part.status_code == 206 and part.content == b"456789"
    assert static_server.requests == ["/a.bin", "/a.bin"]
