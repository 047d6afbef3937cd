"""Where a sync reads from: the upstream over HTTP (common.fetch) or an unpacked bundle.

One seam (`Source`) for both, plus the adapter that lets tuf's Updater read through it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from common.errors import DownloadError, NotFoundError, VerificationError


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
