"""Where a sync reads from: the upstream over HTTP (common.fetch) or an unpacked bundle.

One seam (`Source`) for both, plus the adapter that lets tuf's Updater read through it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

from common.config import PROXY_ENV
from common.errors import DownloadError, NotFoundError, VerificationError

log = logging.getLogger(__name__)

_PROXY_VARS = (PROXY_ENV, "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


class Source(Protocol):
    """Read-only access to an upstream repository tree by relative path."""

    description: str

    def fetch_bytes(self, path: str, max_length: int) -> bytes:
        """The whole file at `path`; NotFoundError if absent, DownloadError if too long."""
        ...

    def download(
        self, path: str, dest: Path, *, expected_length: int, expected_sha256: str
    ) -> None:
        """Fetch `path` to `dest` (resuming dest.part), verified by length and sha256."""
        ...


class HttpSource:
    """An upstream over HTTP through common.fetch.Fetcher, one Fetcher per worker thread."""

    def __init__(self, base_url: str, **fetcher_options: Any) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.description = self.base_url
        self._options = fetcher_options
        self._local = threading.local()

    def _fetcher(self) -> Any:
        """This thread's Fetcher (requests sessions are not shared between threads)."""
        fetcher = getattr(self._local, "fetcher", None)
        if fetcher is None:
            from common.fetch import Fetcher

            fetcher = Fetcher([self.base_url], **self._options)
            self._local.fetcher = fetcher
        return fetcher

    def fetch_bytes(self, path: str, max_length: int) -> bytes:
        if getattr(self._local, "fetcher", None) is None:  # the first request: maybe a no-op
            quick = quick_get(
                self.base_url + path,
                max_length,
                connect_timeout=self._options.get("timeout", 3.0),
                deadline=self._options.get("read_timeout", 10.0),
                proxy=self._options.get("proxy"),
            )
            if quick is not None:
                return quick
        return bytes(self._fetcher().fetch_bytes(path, max_length))

    def download(
        self, path: str, dest: Path, *, expected_length: int, expected_sha256: str
    ) -> None:
        self._fetcher().download(
            path,
            dest,
            expected_length=expected_length,
            expected_sha256=expected_sha256,
            durable=False,  # staging: FileStorage.publish syncs the filesystem once
        )


def quick_get(
    url: str, max_length: int, *, connect_timeout: float, deadline: float, proxy: str | None
) -> bytes | None:
    """A small file over plain HTTP with the standard library only, or None to say "use the
    Fetcher" (anything but a clean 200 within the cap: errors, redirects, proxies, https).

    A no-op sync is this one request: without it the CLI would import requests (~0.3 s here)
    before reaching the network (mirror/README.md, "Start-up and progress"). Never trusted
    more than the Fetcher: the caller compares the bytes with what it published and verified.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or proxy:
        return None
    if any(os.environ.get(var) for var in _PROXY_VARS):  # urllib.request would cost more
        return None
    ends = time.monotonic() + deadline
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=connect_timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"Accept-Encoding": "identity"})
        response = conn.getresponse()
        if response.status != 200:
            return None
        body = bytearray()
        while len(body) <= max_length:
            if time.monotonic() > ends:
                return None
            piece = response.read1(max_length + 1 - len(body))
            if not piece:
                return bytes(body)
            body += piece
        return None  # larger than the cap: the Fetcher says so properly
    except (OSError, http.client.HTTPException) as exc:
        log.debug("quick GET %s failed (%s): using the full fetcher", url, exc)
        return None
    finally:
        conn.close()


class DirSource:
    """An upstream tree on local disk (an unpacked export bundle)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def _path(self, path: str) -> Path:
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise VerificationError(f"path escapes the bundle: {path!r}")
        return full

    def fetch_bytes(self, path: str, max_length: int) -> bytes:
        full = self._path(path)
        if not full.is_file():
            raise NotFoundError(f"{path} is not in {self.root}")
        if full.stat().st_size > max_length:
            raise DownloadError(f"{path} is larger than {max_length} bytes")
        return full.read_bytes()

    def download(
        self, path: str, dest: Path, *, expected_length: int, expected_sha256: str
    ) -> None:
        full = self._path(path)
        if not full.is_file():
            raise NotFoundError(f"{path} is not in {self.root}")
        part = dest.with_name(dest.name + ".part")
        digest = hashlib.sha256()
        with full.open("rb") as src, part.open("wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if part.stat().st_size != expected_length or digest.hexdigest() != expected_sha256:
            part.unlink()
            raise VerificationError(f"{path} does not match its signed length/sha256")
        os.replace(part, dest)
