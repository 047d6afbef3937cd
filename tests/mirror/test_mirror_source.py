"""HttpSource's light first request (quick_get): used only for a clean 200 within the cap over
plain HTTP without a proxy; everything else goes to the full Fetcher, with its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import DownloadError, NotFoundError
from devkit.httpserver import StaticServer
from mirror.source import HttpSource, quick_get


def serve_file(tmp_path: Path, data: bytes) -> StaticServer:
    www = tmp_path / "www"
    (www / "metadata").mkdir(parents=True)
    (www / "metadata" / "timestamp.json").write_bytes(data)
    return StaticServer(www)


def test_quick_get_reads_a_small_file_with_one_request(tmp_path: Path) -> None:
    with serve_file(tmp_path, b'{"signed": 1}') as server:
        got = quick_get(
            server.url + "metadata/timestamp.json", 100, connect_timeout=3, deadline=5, proxy=None
        )
        assert got == b'{"signed": 1}' and server.requests == ["/metadata/timestamp.json"]


def test_quick_get_leaves_proxies_to_the_fetcher(tmp_path: Path, monkeypatch) -> None:
    with serve_file(tmp_path, b"{}") as server:
        url = server.url + "metadata/timestamp.json"
        assert (
            quick_get(url, 100, connect_timeout=3, deadline=5, proxy="http://127.0.0.1:9") is None
        )
        for var in ("ALIYUN_ASSIST_PROXY", "http_proxy"):
            with monkeypatch.context() as env:
                env.setenv(var, "http://127.0.0.1:9")
                assert quick_get(url, 100, connect_timeout=3, deadline=5, proxy=None) is None
        assert server.requests == []


def test_missing_file_still_raises_not_found(tmp_path: Path) -> None:
    with serve_file(tmp_path, b"{}") as server:
        source = HttpSource(server.url, retries=0, backoff=0.0, progress=False)
        with pytest.raises(NotFoundError):
            source.fetch_bytes("metadata/nothing.json", 100)


def test_file_over_the_cap_is_refused_by_the_fetcher(tmp_path: Path) -> None:
    with serve_file(tmp_path, b"x" * 200) as server:
        url = server.url + "metadata/timestamp.json"
        assert quick_get(url, 100, connect_timeout=3, deadline=5, proxy=None) is None
        source = HttpSource(server.url, retries=0, backoff=0.0, progress=False)
        with pytest.raises(DownloadError):
            source.fetch_bytes("metadata/timestamp.json", 100)
