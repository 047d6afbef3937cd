"""HTTP downloads from ranked mirrors: streamed, capped, hashed on the fly, resumable, failing over.

    fetcher = Fetcher(["http://mirror-a/assist/", "http://mirror-b/assist/"])
    result = fetcher.download("targets/x/1.0/abc.x.deb", dest, expected_length=n, expected_sha256=h)

The `requests.Session` is the one seam (injected through the constructor). A transfer reads the
body in large chunks, never accepts more bytes than the caller's cap, and moves to the next mirror
with `Range` when one fails mid-body (connection error, 5xx, nothing received for `read_timeout`).
Every mirror gets `1 + retries` attempts; a full round with no progress sleeps with exponential
backoff and jitter before the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

from common.atomic import fsync_dir, start_writeback
from common.errors import (
    AssistError,
    ConfigError,
    DownloadError,
    LocalStateError,
    NotFoundError,
    VerificationError,
)
from common.hashing import PieceGate
from common.httpbounds import (
    DOWNLOAD_HINT,
    Pace,
    get_with_deadline,
    read_chunk,
    resolve_proxies,
)
from common.progress import open_progress, progress_enabled

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read: large enough for sha256 and the disk to keep up with the wire
WRITEBACK = 8 << 20  # bytes written between two starts of their write-back to disk
MAX_BACKOFF = 30.0  # seconds, the longest sleep between rounds
MIN_SPEED = 1024  # bytes/s: a mirror slower than this over a whole read_timeout window is left
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)$")
_RETRY_STATUS = {408, 425, 429}  # plus every 5xx
_DOWNLOAD_HINT = DOWNLOAD_HINT


class EndlessDataError(DownloadError):
    """A server sent more bytes than the file may have (the "endless data" attack)."""

    reference = "endless-data"


@dataclass
class FetchResult:
    """A completed, verified download."""

    path: Path
    length: int  # bytes
    sha256: str  # hex
    mirror: str  # base URL that served the last byte ("" if nothing had to be fetched)


class _MirrorFailed(Exception):
    """One attempt at one mirror failed; the message says why."""


class _Transient(_MirrorFailed):
    """Worth another attempt later: connection error, timeout, 5xx, body cut short."""


class _Refused(_MirrorFailed):
    """This mirror cannot serve this file: bad status or bad Content-Range."""


class _NotFound(_MirrorFailed):
    """HTTP 404/410."""


class _TooMuch(_MirrorFailed):
    """More bytes than the cap."""


class _WrongLength(_MirrorFailed):
    """The mirror's copy has a different length than expected."""


@dataclass
class _Transfer:
    """The state of one file's transfer across mirrors."""

    path: str  # relative to a mirror's base URL
    offset: int = 0  # bytes the consumer already holds
    cap: int | None = None  # bytes: never accept more than this in total
    exact: int | None = None  # bytes: the expected total length, when known
    restart: Callable[[], None] | None = None  # drops the held bytes; None = skip re-sent ones
    mirror: str = ""  # base URL that served the last bytes
    served: set[str] = field(default_factory=set)  # mirrors that contributed bytes


class _PartFile:
    """The `.part` file of a download and the sha256 of its content so far.

    Writing and hashing a chunk happen on a worker thread while the caller reads the next one
    from the socket (hashlib and file writes release the GIL); at most one chunk is in flight,
    so order is kept and memory stays at two chunks. The worker is the Fetcher's, reused from
    file to file: a thread started per file costs a mirror of many small files more than its
    writes (a new thread waits for the GIL behind the busy ones). Every WRITEBACK bytes the worker also
    starts the disk write of what it wrote (common.atomic.start_writeback), so the fsync at
    the end, or the mirror's one syncfs, waits for the tail only, not for the whole file.
    """

    def __init__(
        self, path: Path, cap: int | None, gate: PieceGate | None, worker: ThreadPoolExecutor
    ) -> None:
        self.path = path
        self.handle: IO[bytes] = open(path, "a+b")  # noqa: SIM115 - closed in close()
        self.hasher = hashlib.sha256()
        self.gate = gate  # checks signed pieces and hands them on while the rest downloads
        self.size = 0
        self._flushed = 0  # bytes of the file whose write-back has been started
        self._worker = worker
        self._pending: Future[None] | None = None
        if cap is not None and os.fstat(self.handle.fileno()).st_size > cap:
            self.handle.truncate(0)
        self._rehash()

    def _rehash(self) -> None:
        """Hash what an earlier run left, so the final digest covers the whole file."""
        self.handle.seek(0)
        while chunk := self.handle.read(CHUNK):
            self.hasher.update(chunk)
            if self.gate is not None:
                self.gate.feed(chunk)
            self.size += len(chunk)
        if self.size:
            log.info("resuming %s at %d bytes", self.path.name, self.size)

    def write(self, chunk: bytes) -> None:
        """Append and hash one chunk (in the background; errors surface on the next call)."""
        self.wait()
        self._pending = self._worker.submit(self._append, chunk)
        self.size += len(chunk)

    def _append(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        self.hasher.update(chunk)
        if self.gate is not None:
            self.gate.feed(chunk)
        end = self.handle.tell()
        if end - self._flushed >= WRITEBACK:
            self.handle.flush()
            start_writeback(self.handle.fileno(), self._flushed, end - self._flushed)
            self._flushed = end

    def wait(self) -> None:
        """Let the chunk in flight land; re-raise its error (disk full…)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def digest(self) -> str:
        """sha256 hex of everything written."""
        self.wait()
        return self.hasher.hexdigest()

    def restart(self) -> None:
        """Forget everything held so far."""
        self.wait()
        self.handle.seek(0)
        self.handle.truncate(0)
        self._flushed = 0
        self.hasher = hashlib.sha256()
        if self.gate is not None:
            self.gate.restart()
        self.size = 0

    def finish(self, durable: bool = True) -> None:
        """Flush (to disk, if durable) and close."""
        self.wait()
        self.handle.flush()
        if durable:
            os.fsync(self.handle.fileno())
        self.close()

    def close(self) -> None:
        """Close without syncing (the .part stays for a later resume)."""
        with contextlib.suppress(Exception):
            self.wait()
        self.handle.close()


class Fetcher:
    """Downloads files from a ranked list of mirrors (base URLs)."""

    def __init__(
        self,
        mirrors: Sequence[str],
        *,
        timeout: float = 3.0,
        read_timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        min_speed: int = MIN_SPEED,
        proxy: str | None = None,
        progress: bool | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if not mirrors:
            raise ConfigError(
                "no mirror to download from",
                hint="pass --mirror URL or set mirrors in the [mirror] table of assist.toml",
            )
        self.mirrors = [m if m.endswith("/") else m + "/" for m in mirrors]
        self.timeout = timeout  # seconds to connect
        self.read_timeout = read_timeout  # seconds without a byte before leaving a mirror
        self.retries = max(0, retries)  # extra attempts per mirror, per file
        self.backoff = backoff  # seconds, first sleep between rounds
        self.min_speed = min_speed  # bytes/s averaged over read_timeout (curl's low-speed limit)
        self.progress = progress
        self.session = session if session is not None else requests.Session()
        self.proxies = resolve_proxies(proxy)
        self._writer: ThreadPoolExecutor | None = None  # _PartFile's worker, made on first use

    def _write_worker(self) -> ThreadPoolExecutor:
        """The one thread that writes and hashes this Fetcher's downloads (one at a time, as a
        Fetcher, like its requests.Session, serves one thread)."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetch-write")
        return self._writer

    def fetch_bytes(self, path: str, max_length: int) -> bytes:
        """GET base+path from the first mirror that serves it; more than max_length bytes fails."""
        buffer = bytearray()
        transfer = _Transfer(path, cap=max_length, restart=buffer.clear)
        for chunk in self._stream(transfer):
            buffer += chunk
        return bytes(buffer)

    def stream(self, path: str, max_length: int | None = None) -> Iterator[bytes]:
        """Yield the body of base+path in chunks, failing over between mirrors mid-body."""
        return self._stream(_Transfer(path, cap=max_length))

    def download(
        self,
        path: str,
        dest: Path,
        *,
        expected_length: int | None = None,
        max_length: int | None = None,
        expected_sha256: str | None = None,
        gate: PieceGate | None = None,
        durable: bool = True,
    ) -> FetchResult:
        """Stream base+path into dest (via dest.part, resumed if present) and verify it.

        With a `gate` (signed piece digests), checked pieces are also handed on as they arrive;
        a file whose whole digest matches but whose pieces did not is refused. `durable=False`
        skips the fsyncs, for a cache whose files are verified again before every use.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        cap = expected_length if expected_length is not None else max_length
        sink = _PartFile(part, cap, gate, self._write_worker())
        try:
            mirror = self._download_into(path, sink, cap, expected_length, expected_sha256)
        except (EndlessDataError, NotFoundError, VerificationError):
            sink.close()
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        except OSError as exc:  # transport errors never get here: this is the local disk
            sink.close()
            raise LocalStateError(
                f"cannot write {part}: {exc}", hint="check free space and permissions"
            ) from exc
        except BaseException:
            sink.close()
            raise
        digest = sink.digest()
        length = sink.size
        if gate is not None and not gate.complete:
            sink.close()
            part.unlink()
            raise VerificationError(
                f"{path}: the file matches its signed sha256 but not its signed pieces",
                hint="the repository's metadata contradicts itself: republish the artifact",
            )
        sink.finish(durable)
        os.replace(part, dest)
        if durable:
            fsync_dir(dest.parent)
        log.info("downloaded %s (%d bytes) from %s", path, length, mirror or "the .part file")
        return FetchResult(dest, length, digest, mirror)

    def _download_into(
        self,
        path: str,
        sink: _PartFile,
        cap: int | None,
        expected_length: int | None,
        expected_sha256: str | None,
    ) -> str:
        """Fill `sink` until it verifies; return the mirror that served the last bytes."""
        excluded: set[str] = set()
        stale_part = sink.size > 0
        bar = open_progress(
            path.rsplit("/", 1)[-1], expected_length, sink.size, progress_enabled(self.progress)
        )

        def restart() -> None:
            sink.restart()
            bar.reset(total=expected_length)

        with bar:
            while True:
                transfer = _Transfer(
                    path, offset=sink.size, cap=cap, exact=expected_length, restart=restart
                )
                for chunk in self._stream(transfer, excluded):
                    sink.write(chunk)
                    bar.update(len(chunk))
                problem = check_content(sink.size, sink.digest(), expected_length, expected_sha256)
                if problem is None:
                    return transfer.mirror
                log.warning("%s: %s (from %s)", path, problem, ", ".join(sorted(transfer.served)))
                restart()
                if stale_part:  # the old .part is the first suspect: start over everywhere
                    stale_part = False
                    continue
                blamed = transfer.served - excluded
                excluded |= transfer.served
                if not blamed or not [m for m in self.mirrors if m not in excluded]:
                    raise VerificationError(
                        f"{path}: {problem} on every mirror",
                        hint="the mirrors serve content that does not match the signed metadata: "
                        "sync the mirror (assist-mirror sync) or use another one",
                    )

    def _stream(self, transfer: _Transfer, excluded: set[str] | None = None) -> Iterator[bytes]:
        """Yield the body from transfer.offset on: failover, retries and backoff live here."""
        failures = dict.fromkeys(self.mirrors, 0)
        out = set(excluded or ())
        errors: dict[str, _MirrorFailed] = {}
        round_no = 0
        while True:
            progressed = False
            for mirror in self.mirrors:
                if mirror in out:
                    continue
                before = transfer.offset
                try:
                    yield from self._stream_from(mirror, transfer)
                    transfer.mirror = transfer.mirror or mirror
                    transfer.served.add(mirror)  # even an empty body came from somewhere
                    return
                except _MirrorFailed as exc:
                    errors[mirror] = exc
                    log.info("%s%s: %s", mirror, transfer.path, exc)
                    gained = transfer.offset - before
                    if isinstance(exc, _Transient) and gained >= CHUNK:
                        progressed = True  # a flaky mirror that moves forward is not failing
                    elif isinstance(exc, _Transient) and failures[mirror] < self.retries:
                        failures[mirror] += 1
                    else:
                        out.add(mirror)
                    if isinstance(exc, _TooMuch) and gained > 0:
                        self._drop_held(transfer, exc)
            if len(out) == len(self.mirrors):
                raise build_error(transfer.path, errors)
            if not progressed:
                self._sleep(round_no)
                round_no += 1

    def _drop_held(self, transfer: _Transfer, exc: _MirrorFailed) -> None:
        """Throw away bytes a lying mirror sent, or give up if the consumer cannot."""
        if transfer.restart is None:
            raise EndlessDataError(f"{transfer.path}: {exc}", hint=_DOWNLOAD_HINT)
        transfer.restart()
        transfer.offset = 0

    def _sleep(self, round_no: int) -> None:
        """Exponential backoff with jitter between rounds over the mirrors."""
        delay = min(MAX_BACKOFF, self.backoff * (2**round_no)) * random.uniform(0.5, 1.5)
        log.debug("all mirrors failed this round; retrying in %.2fs", delay)
        time.sleep(delay)

    def _stream_from(self, mirror: str, transfer: _Transfer) -> Iterator[bytes]:
        """One attempt at one mirror: yield what it sends from transfer.offset on."""
        headers = {"Accept-Encoding": "identity"}
        if transfer.offset > 0:
            headers["Range"] = f"bytes={transfer.offset}-"
        response = self._open(mirror + transfer.path, headers)
        with contextlib.closing(response):
            skip = self._accept_response(response, transfer)
            if skip is None:
                transfer.mirror = mirror
                return
            yield from self._read_body(response, transfer, skip, mirror)

    def _open(self, url: str, headers: dict[str, str]) -> requests.Response:
        """GET `url` up to the end of its headers within connect + read timeout in total."""
        try:
            return get_with_deadline(
                self.session,
                url,
                self.timeout + self.read_timeout,
                headers=headers,
                stream=True,
                timeout=(self.timeout, self.read_timeout),
                proxies=self.proxies,
            )
        except requests.RequestException as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc

    def _accept_response(self, response: requests.Response, transfer: _Transfer) -> int | None:
        """Check status and lengths; return how many re-sent bytes to skip, None if complete."""
        status = response.status_code
        if status in (404, 410):
            raise _NotFound(f"HTTP {status}")
        if status == 416 and transfer.offset > 0:
            return self._accept_unsatisfiable(response, transfer)
        if status >= 500 or status in _RETRY_STATUS:
            raise _Transient(f"HTTP {status}")
        if status == 206 and transfer.offset > 0:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != transfer.offset:
                raise _Refused(f"bad Content-Range {response.headers.get('Content-Range')!r}")
            total = None if match.group(3) == "*" else int(match.group(3))
            check_total(total, transfer)
            check_cap(transfer.offset + (body_length(response) or 0), transfer)
            return 0
        if status == 200:
            check_total(body_length(response), transfer)
            if transfer.offset == 0:
                return 0
            if transfer.restart is None:  # a stream cannot take bytes back: skip them
                return transfer.offset
            log.info("%s ignored Range: starting over", response.url)
            transfer.restart()
            transfer.offset = 0
            return 0
        raise _Refused(f"HTTP {status}")

    def _accept_unsatisfiable(self, response: requests.Response, transfer: _Transfer) -> int | None:
        """HTTP 416 on a resume: complete if the file is exactly what we hold, else start over."""
        match = _UNSATISFIED_RANGE.match(response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == transfer.offset:
            check_total(transfer.offset, transfer)
            return None
        if transfer.restart is not None:
            transfer.restart()
            transfer.offset = 0
        raise _Transient("HTTP 416: the held bytes do not fit the mirror's file")

    def _read_body(
        self, response: requests.Response, transfer: _Transfer, skip: int, mirror: str
    ) -> Iterator[bytes]:
        """Yield body chunks, never beyond the cap; a stall past read_timeout raises _Transient."""
        limit = None if transfer.cap is None else transfer.cap - transfer.offset + skip
        pace = Pace(self.read_timeout, self.min_speed)
        while True:
            amount = CHUNK if limit is None else min(CHUNK, limit)
            if amount == 0:
                if read_chunk(response, 1, pace)[0]:
                    raise _TooMuch(f"endless data: more than {transfer.cap} bytes")
                break
            chunk, error = read_chunk(response, amount, pace)
            ended = len(chunk) < amount
            if limit is not None:
                limit -= len(chunk)
            if skip:
                dropped = min(skip, len(chunk))
                skip -= dropped
                chunk = chunk[dropped:]
            if chunk:
                transfer.offset += len(chunk)
                transfer.mirror = mirror
                transfer.served.add(mirror)
                yield chunk
            if error is not None:
                raise _Transient(f"{error} after {transfer.offset} bytes")
            if ended:
                break
        if transfer.exact is not None and transfer.offset < transfer.exact:
            raise _Transient(f"body ended at {transfer.offset} of {transfer.exact} bytes")


def body_length(response: requests.Response) -> int | None:
    """The Content-Length of a response, or None if absent or unreadable."""
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def check_total(total: int | None, transfer: _Transfer) -> None:
    """Refuse a mirror whose file is longer than the cap or not the expected length."""
    if total is None:
        return
    if transfer.exact is not None and total != transfer.exact:
        raise _WrongLength(f"the mirror's file has {total} bytes, expected {transfer.exact}")
    check_cap(total, transfer)


def check_cap(total: int, transfer: _Transfer) -> None:
    """Refuse a mirror that announces more bytes than the cap."""
    if transfer.cap is not None and total > transfer.cap:
        raise _TooMuch(f"endless data: the mirror offers {total} bytes, at most {transfer.cap}")


def check_content(
    length: int, digest: str, expected_length: int | None, expected_sha256: str | None
) -> str | None:
    """Say what is wrong with a finished download, or None if it matches."""
    if expected_length is not None and length != expected_length:
        return f"length {length} != expected {expected_length}"
    if expected_sha256 is not None and digest != expected_sha256.lower():
        return f"sha256 {digest} != expected {expected_sha256.lower()}"
    return None


def build_error(path: str, errors: dict[str, _MirrorFailed]) -> AssistError:
    """One error for a file that no mirror would serve, of the type the failures call for."""
    summary = "; ".join(f"{mirror}: {exc}" for mirror, exc in errors.items())
    kinds = {type(exc) for exc in errors.values()}
    if kinds == {_NotFound}:
        return NotFoundError(
            f"{path} is not on any mirror ({len(errors)} tried)",
            hint="check the name and version, or sync the mirror (assist-mirror sync)",
        )
    if _TooMuch in kinds:
        return EndlessDataError(f"{path}: {summary}", hint=_DOWNLOAD_HINT)
    if _WrongLength in kinds:
        return VerificationError(
            f"{path}: {summary}",
            hint="the mirror's copy does not match the signed metadata: sync it or use another",
        )
    return DownloadError(f"could not download {path}: {summary}", hint=_DOWNLOAD_HINT)
