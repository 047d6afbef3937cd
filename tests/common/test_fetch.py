"""common.fetch against real loopback servers that behave, hang, stall, lie and send endless data."""

from __future__ import annotations

import hashlib
import http.server
import itertools
import os
import random
import socket
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import common.atomic
import common.fetch
from common.errors import ConfigError, DownloadError, NotFoundError, VerificationError
from common.fetch import CHUNK, EndlessDataError, Fetcher
from common.httpbounds import get_with_deadline
from devkit.httpserver import StaticServer
from devkit.terminal import run_on_a_terminal

NAME = "pkg/1.0/file.bin"
PAYLOAD = random.Random(7).randbytes(3 * CHUNK + 12345)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
Hook = Callable[[Any], bool]


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A served tree with one 3 MiB file at NAME."""
    root = tmp_path / "www"
    (root / "pkg/1.0").mkdir(parents=True)
    (root / NAME).write_bytes(PAYLOAD)
    return root


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown so handlers told to hang let go of their threads."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def servers(www: Path) -> Iterator[list[StaticServer]]:
    """Two mirrors serving the same tree."""
    pair = [StaticServer(www).start(), StaticServer(www).start()]
    yield pair
    stoppers = [threading.Thread(target=server.stop) for server in pair]  # each waits a poll
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()


def fetcher_for(*urls: str, **kwargs: Any) -> Fetcher:
    """A fetcher with test-sized timeouts and no progress bar."""
    options: dict[str, Any] = {"read_timeout": 1.0, "backoff": 0.01, "progress": False}
    options.update(kwargs)
    return Fetcher(list(urls), **options)


def record_headers(seen: list[dict[str, str]]) -> Hook:
    """A hook that records each request's headers and lets the files answer."""

    def hook(handler: Any) -> bool:
        seen.append(dict(handler.headers))
        return False

    return hook


def stall_after(count: int, release: threading.Event) -> Hook:
    """Send a full-length 200 header and `count` body bytes, then hang."""

    def hook(handler: Any) -> bool:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(PAYLOAD)))
        handler.end_headers()
        handler.wfile.write(PAYLOAD[:count])
        handler.wfile.flush()
        release.wait(30)
        return True

    return hook


def hang_before_headers(release: threading.Event) -> Hook:
    """Accept the request and never answer."""

    def hook(handler: Any) -> bool:
        release.wait(30)
        return True

    return hook


def endless(with_length: bool) -> Hook:
    """Send random bytes until the client goes away (optionally announcing a huge length)."""

    def hook(handler: Any) -> bool:
        handler.send_response(200)
        if with_length:
            handler.send_header("Content-Length", str(1 << 40))
        handler.end_headers()
        block = os.urandom(1 << 16)
        try:
            for _ in range(1 << 14):  # 1 GiB at most, in case the client never hangs up
                handler.wfile.write(block)
        except OSError:
            pass
        handler.close_connection = True
        return True

    return hook


def serve_bytes(body: bytes, status: int = 200) -> Hook:
    """Answer every request with `body` (ignoring Range)."""

    def hook(handler: Any) -> bool:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            handler.wfile.write(body)
        except OSError:  # the client hung up once it had enough
            pass
        return True

    return hook


def fail_first(count: int, status: int = 503) -> Hook:
    """Answer the first `count` requests with `status`, then serve files."""
    calls = [0]

    def hook(handler: Any) -> bool:
        calls[0] += 1
        if calls[0] > count:
            return False
        handler.send_error(status)
        return True

    return hook


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def assert_nothing_left(dest: Path) -> None:
    """No file, no .part: a failed download leaves no trace."""
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()


def test_download_streams_verifies_and_renames(servers: list[StaticServer], tmp_path: Path) -> None:
    dest = tmp_path / "out" / "file.bin"
    result = fetcher_for(servers[0].url).download(
        NAME, dest, expected_length=len(PAYLOAD), expected_sha256=SHA
    )
    assert (result.path, result.length, result.sha256) == (dest, len(PAYLOAD), SHA)
    assert result.mirror == servers[0].url
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]


def test_writeback_is_started_while_receiving_and_the_file_is_fsynced_last(
    servers: list[StaticServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Write-back of each window starts as it lands (the final fsync waits for the tail only),
    covers the file from its first byte, starts over with the file, and never replaces the
    fsync of a durable download, which comes after the last byte."""
    calls: list[tuple[str, int, int]] = []
    real_fsync = os.fsync

    def writeback(fd: int, offset: int, length: int) -> None:
        calls.append(("writeback", offset, length))
        common.atomic.start_writeback(fd, offset, length)  # the real sync_file_range

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.fstat(fd).st_size, 0))
        real_fsync(fd)

    monkeypatch.setattr(common.fetch, "WRITEBACK", CHUNK)
    monkeypatch.setattr(common.fetch, "start_writeback", writeback)
    monkeypatch.setattr(os, "fsync", fsync)
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(b"X" * 5000)  # wrong: the file starts over
    fetcher_for(servers[0].url).download(NAME, dest, expected_sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    last_start = max(i for i, call in enumerate(calls) if call == ("writeback", 0, CHUNK))
    after_restart = calls[last_start:]
    assert after_restart[:4] == [("writeback", n * CHUNK, CHUNK) for n in range(3)] + [
        ("fsync", len(PAYLOAD), 0)
    ]


def test_mirror_urls_get_a_trailing_slash(servers: list[StaticServer], tmp_path: Path) -> None:
    fetcher = fetcher_for(servers[0].url.rstrip("/"))
    assert fetcher.mirrors == [servers[0].url]
    assert fetcher.fetch_bytes(NAME, len(PAYLOAD)) == PAYLOAD


def test_injected_session_is_the_transport(servers: list[StaticServer]) -> None:
    session = requests.Session()
    session.headers["User-Agent"] = "assist-test/1"
    seen: list[dict[str, str]] = []
    servers[0].hook = record_headers(seen)
    fetcher = fetcher_for(servers[0].url, session=session)
    assert fetcher.session is session
    assert fetcher.fetch_bytes(NAME, len(PAYLOAD)) == PAYLOAD
    assert seen[0]["User-Agent"] == "assist-test/1"


def test_no_mirrors_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        Fetcher([])
    assert info.value.hint


def test_fetch_bytes_refuses_more_than_max_length(servers: list[StaticServer]) -> None:
    with pytest.raises(DownloadError, match="endless data"):
        fetcher_for(servers[0].url).fetch_bytes(NAME, len(PAYLOAD) - 1)
    assert servers[0].requests == ["/" + NAME]  # refused on the announced length, not retried


def test_download_refuses_more_than_max_length(servers: list[StaticServer], tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    with pytest.raises(EndlessDataError):
        fetcher_for(servers[0].url).download(NAME, dest, max_length=1000)
    assert_nothing_left(dest)


@pytest.mark.parametrize("with_length", [False, True], ids=["no-length", "huge-length"])
def test_endless_data_is_cut_at_the_cap(
    static_server: StaticServer, tmp_path: Path, with_length: bool
) -> None:
    static_server.hook = endless(with_length)
    dest = tmp_path / "file.bin"
    written: list[int] = []
    fetcher = fetcher_for(static_server.url)
    with pytest.raises(EndlessDataError, match="endless data"):
        for chunk in fetcher.stream(NAME, max_length=CHUNK + 5):
            written.append(len(chunk))
    assert sum(written) <= CHUNK + 5
    with pytest.raises(EndlessDataError):
        fetcher.download(NAME, dest, max_length=CHUNK + 5)
    assert_nothing_left(dest)
    with pytest.raises(EndlessDataError):
        fetcher.fetch_bytes("metadata/timestamp.json", 16384)
    assert len(static_server.requests) == 3  # one attempt each: a liar is not retried


def test_endless_mirror_is_dropped_for_an_honest_one(
    servers: list[StaticServer], tmp_path: Path
) -> None:
    servers[0].hook = endless(False)
    dest = tmp_path / "file.bin"
    result = fetcher_for(*(s.url for s in servers)).download(
        NAME, dest, expected_length=len(PAYLOAD), expected_sha256=SHA
    )
    assert result.mirror == servers[1].url
    assert dest.read_bytes() == PAYLOAD


def test_existing_part_is_resumed_with_range(servers: list[StaticServer], tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    held = CHUNK + 777
    dest.with_name("file.bin.part").write_bytes(PAYLOAD[:held])
    seen: list[dict[str, str]] = []
    servers[0].hook = record_headers(seen)
    result = fetcher_for(servers[0].url).download(
        NAME, dest, expected_length=len(PAYLOAD), expected_sha256=SHA
    )
    assert [h.get("Range") for h in seen] == [f"bytes={held}-"]
    assert result.sha256 == SHA and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("file.bin.part").exists()


def test_complete_part_is_confirmed_by_416(servers: list[StaticServer], tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD)
    result = fetcher_for(servers[0].url).download(NAME, dest, expected_sha256=SHA)
    assert result.mirror == servers[0].url and dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(
    static_server: StaticServer, tmp_path: Path
) -> None:
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(b"X" * 5000)  # wrong bytes: must not survive
    static_server.hook = serve_bytes(PAYLOAD)  # a 200 with the whole body, whatever the Range
    result = fetcher_for(static_server.url).download(
        NAME, dest, expected_length=len(PAYLOAD), expected_sha256=SHA
    )
    assert result.sha256 == SHA and dest.read_bytes() == PAYLOAD
    assert len(static_server.requests) == 1


def test_corrupt_part_is_discarded_and_downloaded_again(
    servers: list[StaticServer], tmp_path: Path
) -> None:
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(b"X" * 5000)
    seen: list[dict[str, str]] = []
    servers[0].hook = record_headers(seen)
    result = fetcher_for(servers[0].url).download(NAME, dest, expected_sha256=SHA)
    assert [h.get("Range") for h in seen] == ["bytes=5000-", None]
    assert result.sha256 == SHA and dest.read_bytes() == PAYLOAD


def test_mirror_stalling_mid_body_fails_over_with_range(
    servers: list[StaticServer], tmp_path: Path, release: threading.Event
) -> None:
    sent = 256 * 1024
    servers[0].hook = stall_after(sent, release)
    seen: list[dict[str, str]] = []
    servers[1].hook = record_headers(seen)
    dest = tmp_path / "file.bin"
    result = fetcher_for(servers[0].url, servers[1].url, read_timeout=0.5).download(
        NAME, dest, expected_length=len(PAYLOAD), expected_sha256=SHA
    )
    assert result.mirror == servers[1].url
    assert [h.get("Range") for h in seen] == [f"bytes={sent}-"]
    assert len(servers[0].requests) == 1
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("api", ["stream", "fetch_bytes"])
def test_failover_to_a_mirror_ignoring_range_keeps_the_body_whole(
    servers: list[StaticServer], release: threading.Event, api: str
) -> None:
    servers[0].hook = stall_after(256 * 1024, release)
    servers[1].hook = serve_bytes(PAYLOAD)  # 200 with the whole body despite Range
    fetcher = fetcher_for(servers[0].url, servers[1].url, read_timeout=0.5)
    if api == "stream":
        body = b"".join(fetcher.stream(NAME, max_length=len(PAYLOAD)))
    else:
        body = fetcher.fetch_bytes(NAME, len(PAYLOAD))
    assert body == PAYLOAD


def test_refused_connection_fails_over(servers: list[StaticServer], tmp_path: Path) -> None:
    dead = closed_port_url()
    result = fetcher_for(dead, servers[0].url).download(NAME, tmp_path / "f", expected_sha256=SHA)
    assert result.mirror == servers[0].url


def test_hanging_mirror_gives_download_error_and_keeps_part(
    static_server: StaticServer, tmp_path: Path, release: threading.Event
) -> None:
    static_server.hook = hang_before_headers(release)
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="could not download") as info:
        fetcher_for(static_server.url, read_timeout=0.3, retries=1).download(NAME, dest)
    assert not isinstance(info.value, NotFoundError) and info.value.hint
    assert len(static_server.requests) == 2  # one attempt + one retry
    assert not dest.exists()


def test_5xx_is_retried_with_backoff(servers: list[StaticServer]) -> None:
    servers[0].hook = fail_first(2, 503)
    body = fetcher_for(servers[0].url, retries=3).fetch_bytes(NAME, len(PAYLOAD))
    assert body == PAYLOAD
    assert len(servers[0].requests) == 3


def test_retries_run_out(static_server: StaticServer) -> None:
    static_server.hook = fail_first(100, 500)
    with pytest.raises(DownloadError, match="HTTP 500"):
        fetcher_for(static_server.url, retries=2).fetch_bytes(NAME, 100)
    assert len(static_server.requests) == 3


def test_404_on_every_mirror_is_not_found(tmp_path: Path) -> None:
    with StaticServer(tmp_path) as first, StaticServer(tmp_path) as second:
        dest = tmp_path / "x.bin"
        with pytest.raises(NotFoundError) as info:
            fetcher_for(first.url, second.url).download("nope/x.bin", dest)
        assert "2 tried" in str(info.value)
        assert first.requests == ["/nope/x.bin"] and second.requests == ["/nope/x.bin"]
        assert_nothing_left(dest)


def test_404_on_one_mirror_fails_over(servers: list[StaticServer], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with StaticServer(tmp_path / "empty") as empty:
        result = fetcher_for(empty.url, servers[0].url).download(NAME, tmp_path / "f")
    assert result.mirror == servers[0].url and result.sha256 == SHA


def test_wrong_content_is_refused_and_removed(static_server: StaticServer, tmp_path: Path) -> None:
    static_server.hook = serve_bytes(b"Y" * len(PAYLOAD))
    dest = tmp_path / "file.bin"
    with pytest.raises(VerificationError, match="sha256"):
        fetcher_for(static_server.url).download(
            NAME, dest, expected_length=len(PAYLOAD), expected_sha256=SHA
        )
    assert_nothing_left(dest)


def test_empty_file_with_wrong_hash_fails_once_per_mirror(
    servers: list[StaticServer], www: Path, tmp_path: Path
) -> None:
    (www / "empty.bin").write_bytes(b"")
    dest = tmp_path / "empty.bin"
    with pytest.raises(VerificationError):
        fetcher_for(*(s.url for s in servers)).download("empty.bin", dest, expected_sha256=SHA)
    assert servers[0].requests == ["/empty.bin"] and servers[1].requests == ["/empty.bin"]
    assert_nothing_left(dest)


def test_lying_mirror_is_left_for_an_honest_one(
    servers: list[StaticServer], tmp_path: Path
) -> None:
    servers[0].hook = serve_bytes(b"Y" * len(PAYLOAD))
    dest = tmp_path / "file.bin"
    result = fetcher_for(servers[0].url, servers[1].url).download(
        NAME, dest, expected_length=len(PAYLOAD), expected_sha256=SHA
    )
    assert result.mirror == servers[1].url and dest.read_bytes() == PAYLOAD


def test_wrong_length_is_a_verification_error(servers: list[StaticServer], tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    with pytest.raises(VerificationError, match="expected"):
        fetcher_for(servers[0].url).download(NAME, dest, expected_length=len(PAYLOAD) + 1)
    assert_nothing_left(dest)


class _ForwardProxy(http.server.BaseHTTPRequestHandler):
    """A minimal HTTP forward proxy: GET absolute-URI, relayed to loopback."""

    seen: list[str]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:
        self.seen.append(self.path)
        request = urllib.request.Request(
            self.path, headers={"Range": self.headers.get("Range", "")}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=5) as upstream:
            body = upstream.read()
            self.send_response(upstream.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.fixture
def proxy() -> Iterator[tuple[str, list[str]]]:
    """A loopback forward proxy; yields its URL and the URLs it was asked for."""
    seen: list[str] = []
    handler = type("Proxy", (_ForwardProxy,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("how", ["argument", "ALIYUN_ASSIST_PROXY", "HTTP_PROXY"])
def test_proxy_is_used(
    servers: list[StaticServer],
    proxy: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    url, seen = proxy
    monkeypatch.delenv("ALIYUN_ASSIST_PROXY", raising=False)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    if how != "argument":
        monkeypatch.setenv(how, url)
    fetcher = fetcher_for(servers[0].url, proxy=url if how == "argument" else None)
    assert fetcher.fetch_bytes(NAME, len(PAYLOAD)) == PAYLOAD
    assert seen == [servers[0].url + NAME]


def test_progress_bar_only_when_asked_or_on_a_tty(
    servers: list[StaticServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fetcher_for(servers[0].url, progress=None).download(NAME, tmp_path / "a")
    assert capsys.readouterr() == ("", "")  # stdout is not a terminal here
    fetcher_for(servers[0].url, progress=True).download(NAME, tmp_path / "b")
    assert "file.bin" in capsys.readouterr().err


def test_progress_bar_appears_on_a_real_terminal(
    servers: list[StaticServer], tmp_path: Path
) -> None:
    code = (
        "import sys; from pathlib import Path; from common.fetch import Fetcher; "
        f"Fetcher([{servers[0].url!r}]).download({NAME!r}, Path(sys.argv[1]))"
    )
    status, output = run_on_a_terminal(
        [sys.executable, "-c", code, str(tmp_path / "tty.bin")], timeout=30
    )
    assert status == 0
    assert "file.bin" in output and "B/s" in output
    assert (tmp_path / "tty.bin").read_bytes() == PAYLOAD


def drip(head: bytes, drops: Iterable[bytes], every: float, release: threading.Event) -> Hook:
    """A hook that writes `head` at once, then one of `drops` every `every` s until they run out,
    `release` is set or the client leaves."""

    def hook(handler: Any) -> bool:
        try:
            handler.wfile.write(head)
            for drop in drops:
                handler.wfile.write(drop)
                handler.wfile.flush()
                if release.wait(every):
                    break
        except OSError:
            pass  # the client left: what we want
        return True

    return hook


def trickle(data: bytes, every: float, release: threading.Event) -> Hook:
    """A hook that sends the whole Content-Length at once but the body a byte every `every` s."""
    head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    return drip(head, [data[i : i + 1] for i in range(len(data))], every, release)


def test_trickling_mirror_is_left_by_the_low_speed_rule_and_the_body_resumes_elsewhere(
    servers: list[StaticServer], tmp_path: Path, release: threading.Event
) -> None:
    """A mirror sending a byte every 0.1 s never trips a 1 s read timeout; the low-speed rule
    (fewer than min_speed bytes/s over read_timeout) leaves it, and the rest comes with Range
    from the other mirror (issue 10.8). Before the rule the whole file came from the trickle."""
    small = PAYLOAD[:40]
    servers[0].hook = trickle(small, 0.1, release)
    seen: list[dict[str, str]] = []
    servers[1].hook = record_headers(seen)
    name = "pkg/1.0/small.bin"
    (servers[1].httpd.root / name).write_bytes(small)
    result = fetcher_for(servers[0].url, servers[1].url, read_timeout=1.0).download(
        name, tmp_path / "small.bin", expected_sha256=hashlib.sha256(small).hexdigest()
    )
    assert result.mirror == servers[1].url
    assert seen and seen[0].get("Range", "").startswith("bytes=")
    assert (tmp_path / "small.bin").read_bytes() == small
    assert not (tmp_path / "small.bin.part").exists()


def test_fetch_bytes_from_a_trickling_only_mirror_ends_with_a_download_error(
    static_server: StaticServer, release: threading.Event
) -> None:
    """Small metadata fetches have the same bound: a lone trickling mirror is an error (after
    its retries), not a wait of len(body) × 2 s."""
    static_server.hook = trickle(PAYLOAD[:1000], 0.2, release)
    with pytest.raises(DownloadError, match="slower than"):
        fetcher_for(static_server.url, read_timeout=0.5, retries=0).fetch_bytes(NAME, 1000)


def trickle_headers(every: float, release: threading.Event) -> Hook:
    """A hook that sends the status line, then one header byte every `every` s, never ending."""
    return drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", itertools.repeat(b"a"), every, release)


def test_a_mirror_trickling_its_headers_is_left_and_the_file_comes_from_the_next(
    servers: list[StaticServer], tmp_path: Path, release: threading.Event
) -> None:
    """A byte of header every 0.2 s never trips the 0.5 s read timeout, and the low-speed rule
    only watches the body: the download waited in header parsing for as long as the mirror
    liked (64 KiB × 100 header lines). The headers get the same bound as the body."""
    servers[0].hook = trickle_headers(0.2, release)
    done: list[object] = []
    worker = threading.Thread(
        target=lambda: done.append(
            fetcher_for(servers[0].url, servers[1].url, read_timeout=0.5, retries=0).download(
                NAME, tmp_path / "file.bin", expected_sha256=SHA
            )
        ),
        daemon=True,
    )
    worker.start()
    worker.join(60)  # a bound on the test, not a timing claim: it hung for hours before
    release.set()
    assert done, "the download is still waiting for the trickled headers"
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD
    assert not (tmp_path / "file.bin.part").exists()


class _ThreadRecordingSession(requests.Session):
    """A real session that notes which thread sent each request."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []  # the objects: an ident can be reused

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.threads.append(threading.current_thread())
        return super().get(url, **kwargs)


def test_header_threads_are_reused_but_never_one_still_waiting_on_a_hung_mirror(
    servers: list[StaticServer], release: threading.Event
) -> None:
    """The thread a request ran on serves the next one (no thread start per file), while the
    thread stuck in a trickling mirror's headers is left alone and the next request gets
    another."""
    servers[0].hook = trickle_headers(0.2, release)
    session = _ThreadRecordingSession()
    with pytest.raises(requests.Timeout):
        get_with_deadline(session, servers[0].url + NAME, 0.5, stream=True, timeout=(3, 10))
    for _ in range(3):
        with get_with_deadline(session, servers[1].url + NAME, 10, stream=True) as response:
            assert response.content == PAYLOAD
    hung, *served = session.threads
    assert len(set(map(id, served))) == 1 and served[0] is not hung


def test_idle_header_threads_leave_after_their_idle_time() -> None:
    """The pool's threads wait for another job a while, then end (a long-lived agent must
    not keep a sync's threads for good); a job handed over at the last moment still runs."""
    from common.httpbounds import _DaemonThreads
    from devkit.polling import wait_until

    pool = _DaemonThreads()
    pool.IDLE_SECONDS = 0.3
    done: list[int] = []
    pool.run(lambda: done.append(1))
    assert wait_until(lambda: done == [1] and len(pool._idle) == 1, timeout=5)
    pool.run(lambda: done.append(2))  # reuses the idle thread
    assert wait_until(lambda: done == [1, 2] and len(pool._idle) == 1, timeout=5)
    assert wait_until(lambda: pool._idle == [], timeout=5)  # the idle thread left
    pool.run(lambda: done.append(3))  # a new thread once the old one left
    assert wait_until(lambda: done == [1, 2, 3], timeout=5)
