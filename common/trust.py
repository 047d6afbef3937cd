"""The one TUF client: python-tuf's ngclient behind our transport, used by installer, updater
and mirror.

    repo = TrustedRepository(fetcher, prefix / "state/tuf", trust_root=payload / "share/root.json")
    repo.refresh()
    target = repo.find("aliyun-assist", os="linux", arch="x86_64", format="deb")
    artifact = repo.download(target, cache_dir)
    verify_native(artifact, target.format, keys_dir)      # common.native_sig

The mirror refreshes through the same `refresh_tuf` over its upstream `Source`. Every byte used
is covered by signed TUF metadata (length + sha256 of each artifact); every failure is an error
of common.errors with a hint (docs/SECURITY.md); nothing here trusts a location.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.atomic import atomic_symlink, atomic_write_bytes
from common.errors import (
    AssistError,
    ConfigError,
    DownloadError,
    ExpiredMetadataError,
    LocalStateError,
    NotFoundError,
    VerificationError,
)
from common.fetch import EndlessDataError, Fetcher
from common.hashing import PieceGate, valid_pieces
from common.imports import optional_sdks_hidden
from common.targets import KEY_TARGETS, TargetInfo, parse_targets
from common.version import version_sort_key

with optional_sdks_hidden():  # tuf's signer registry would load unused cloud SDKs on every start
    from tuf.api import exceptions as tuf_errors
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

log = logging.getLogger(__name__)

__all__ = ["TargetInfo", "TrustedRepository", "TufHints", "refresh_tuf"]

TUF_BASE = "tuf://repository/"  # a URL python-tuf joins paths to; the reader resolves them
MAX_METADATA = 16 << 20  # bytes: the most any one metadata file may be


@dataclass(frozen=True)
class TufHints:
    """What to tell the user when a refresh fails, by kind of failure."""

    expired: str
    repository: str
    download: str


CLIENT_HINTS = TufHints(
    expired="the mirror's metadata expired: sync the mirror (assist-mirror sync) or use "
    "another mirror",
    repository="the repository's signed metadata failed verification: the mirror may be "
    "tampered with or half-synced; sync it (assist-mirror sync) or use another mirror",
    download="check the mirror URL and the network path to it",
)


class RepositoryReader(Protocol):
    """Reads one file of a repository tree by relative path (common.fetch.Fetcher, a mirror's
    Source)."""

    def fetch_bytes(self, path: str, max_length: int) -> bytes:
        """The whole file; NotFoundError if absent, DownloadError if longer than max_length."""
        ...


class TufTransport(FetcherInterface):
    """python-tuf's transport seam over a RepositoryReader; remembers what it fetched."""

    def __init__(self, reader: RepositoryReader) -> None:
        self.reader = reader
        self.fetched: dict[str, bytes] = {}  # relative path -> bytes, e.g. metadata/2.root.json

    def _relative(self, url: str) -> str:
        """The repository path of a URL python-tuf built from TUF_BASE."""
        if not url.startswith(TUF_BASE):
            raise tuf_errors.DownloadError(f"unexpected URL {url}")
        return url[len(TUF_BASE) :]

    def _fetch(self, url: str) -> Iterator[bytes]:
        return iter([self.download_bytes(url, MAX_METADATA)])

    def download_bytes(self, url: str, max_length: int) -> bytes:
        """Fetch at most max_length bytes (refused beyond, without reading them)."""
        path = self._relative(url)
        with translate_errors():
            data = bytes(self.reader.fetch_bytes(path, max_length))
        self.fetched[path] = data
        return data


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Our fetch errors -> tuf's (a 404 everywhere must read as DownloadHTTPError 404)."""
    try:
        yield
    except NotFoundError as exc:
        raise tuf_errors.DownloadHTTPError(str(exc), 404) from exc
    except EndlessDataError as exc:
        raise tuf_errors.DownloadLengthMismatchError(str(exc)) from exc
    except (DownloadError, VerificationError) as exc:
        raise tuf_errors.DownloadError(str(exc)) from exc


@contextlib.contextmanager
def map_tuf_errors(hints: TufHints = CLIENT_HINTS) -> Iterator[None]:
    """python-tuf's errors -> ours, keeping our own transport errors when they are the cause."""
    try:
        yield
    except tuf_errors.ExpiredMetadataError as exc:
        raise ExpiredMetadataError(f"TUF metadata expired: {exc}", hint=hints.expired) from exc
    except tuf_errors.BadVersionNumberError as exc:
        raise VerificationError(
            f"TUF metadata rolled back ({type(exc).__name__}): {exc}", hint=hints.repository
        ) from exc
    except tuf_errors.RepositoryError as exc:
        raise VerificationError(
            f"TUF metadata failed verification ({type(exc).__name__}): {exc}",
            hint=hints.repository,
        ) from exc
    except tuf_errors.DownloadError as exc:
        cause = exc.__cause__
        if isinstance(cause, AssistError):
            if cause.hint is None:
                cause.hint = hints.download
            raise cause from exc
        raise DownloadError(f"TUF metadata download failed: {exc}", hint=hints.download) from exc
    except OSError as exc:
        raise LocalStateError(
            f"cannot use the TUF metadata directory: {exc}",
            hint="check permissions and free space of the state directory",
        ) from exc


def refresh_tuf(
    reader: RepositoryReader,
    metadata_dir: Path,
    *,
    bootstrap: bytes | None = None,
    hints: TufHints = CLIENT_HINTS,
) -> tuple[Updater, TufTransport]:
    """Fetch and verify root -> timestamp -> snapshot -> targets into metadata_dir.

    python-tuf persists each role as soon as it verifies (a new timestamp and snapshot stay on
    disk even when the targets metadata they name then fails, e.g. mix-and-match). It runs on a
    copy of the directory, copied back only when the whole refresh succeeded, so a failed
    refresh leaves the trusted metadata exactly as it was.
    """
    metadata_dir = Path(metadata_dir)
    metadata_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{metadata_dir.name}-refresh-", dir=metadata_dir.parent))
    transport = TufTransport(reader)
    try:
        shutil.copytree(metadata_dir, stage, symlinks=True, dirs_exist_ok=True)
        with map_tuf_errors(hints):
            updater = Updater(
                str(stage),
                TUF_BASE + "metadata/",
                None,
                TUF_BASE + "targets/",
                fetcher=transport,
                config=UpdaterConfig(),
                bootstrap=bootstrap,
            )
            updater.refresh()
            commit_metadata(stage, metadata_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return updater, transport


def trusted_targets(updater: Updater) -> dict[str, TargetFile]:
    """The verified top-level targets (ngclient has no public listing, so its trusted set)."""
    return dict(updater._trusted_set.targets.targets)


class TrustedRepository:
    """A release repository read through TUF: refresh, list, find and download targets."""

    def __init__(
        self,
        fetcher: Fetcher,
        metadata_dir: Path,
        *,
        trust_root: Path | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.metadata_dir = Path(metadata_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._bootstrap = load_bootstrap(self.metadata_dir, trust_root)
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """Fetch and verify root -> timestamp -> snapshot -> targets (refresh_tuf)."""
        self._updater = None
        updater, _ = refresh_tuf(self.fetcher, self.metadata_dir, bootstrap=self._bootstrap)
        self._bootstrap = None  # the trusted root (possibly rotated) is on disk now
        self._updater = updater
        log.info("TUF metadata refreshed from %s", self.fetcher.mirrors[0])

    def targets(self) -> list[TargetInfo]:
        """All package artifacts of the top-level targets role, by target path (the keys and
        other targets without package custom fields are not packages: fetch_file reads them)."""
        return [t for t in self.all_targets() if t.is_package]

    def all_targets(self) -> list[TargetInfo]:
        """Every signed target, packages or not, by target path."""
        files = self._trusted_targets()
        return parse_targets({path: files[path].to_dict() for path in files})

    def find(
        self,
        package: str,
        *,
        version: str | None = None,
        channel: str = "stable",
        os: str | None = None,
        arch: str | None = None,
        format: str | None = None,  # noqa: A002 - the TUF custom field's name
    ) -> TargetInfo:
        """The newest matching target (ties broken by target path)."""
        found = [
            t
            for t in self._matching(package, channel, os, arch, format)
            if version is None or t.version == version
        ]
        if not found:
            raise NotFoundError(
                f"no {describe_query(package, version, channel, os, arch, format)} in the "
                f"repository; available: {self._summary(package)}",
                hint="check the name, version, channel and platform (assist-install list)",
            )
        newest = max(version_sort_key(t.version) for t in found)
        return min(
            (t for t in found if version_sort_key(t.version) == newest), key=lambda t: t.path
        )

    def versions(
        self,
        package: str,
        *,
        channel: str = "stable",
        os: str | None = None,
        arch: str | None = None,
        format: str | None = None,  # noqa: A002 - the TUF custom field's name
    ) -> list[str]:
        """Distinct versions of a package, oldest first."""
        found = {t.version for t in self._matching(package, channel, os, arch, format)}
        return sorted(found, key=version_sort_key)

    def download(
        self, target: TargetInfo, dest_dir: Path, deliver: Callable[[bytes], None] | None = None
    ) -> Path:
        """Download (or reuse) a target into dest_dir, verified against the signed metadata.

        `deliver`, when the metadata signs the target's pieces, receives the file's bytes in
        order as each piece is checked, while the rest downloads (nothing for a reused file).
        """
        updater = self._refreshed()
        trusted = self._trusted_targets().get(target.path)
        if trusted is None:
            raise NotFoundError(f"{target.path} is not in the signed targets metadata")
        dest = Path(dest_dir) / target.filename
        if updater.find_cached_target(trusted, str(dest)):
            log.info("%s already downloaded and verified", dest)
            return dest
        sha256 = trusted.hashes.get("sha256")
        if sha256 is None:
            raise VerificationError(f"{target.path} has no sha256 in the signed metadata")
        pieces = valid_pieces(trusted.custom, trusted.length) if deliver is not None else None
        self.fetcher.download(
            self._target_url_path(trusted),
            dest,
            expected_length=trusted.length,
            expected_sha256=sha256,
            gate=PieceGate(*pieces, trusted.length, deliver) if pieces and deliver else None,
            durable=False,  # a cached target is verified again before any use (above)
        )
        if len(trusted.hashes) > 1:
            self._verify_other_hashes(trusted, dest)
        return dest

    def fetch_release_keys(self, dest_dir: Path) -> Path:
        """The release's public keys (TUF targets keys/<name>) into dest_dir, verified through
        the pinned root: a keys directory for common.native_sig. NotFoundError if the
        repository publishes none (a repository from before keys were targets)."""
        keys = [t for t in self.all_targets() if t.path in KEY_TARGETS]
        if not keys:
            raise NotFoundError(
                "the repository publishes no release keys as TUF targets (keys/…)",
                hint="re-publish the repository (assist-pkgbuild publish) or pass the keys "
                "directory explicitly",
            )
        for target in keys:
            self.download(target, dest_dir)
        return Path(dest_dir)

    def _verify_other_hashes(self, trusted: TargetFile, dest: Path) -> None:
        """Check every hash the metadata lists, not only the sha256 checked while streaming."""
        try:
            with dest.open("rb") as handle:
                trusted.verify_length_and_hashes(handle)
        except tuf_errors.LengthOrHashMismatchError as exc:
            dest.unlink()
            raise VerificationError(f"{trusted.path}: {exc}", hint=CLIENT_HINTS.repository) from exc

    def _target_url_path(self, trusted: TargetFile) -> str:
        """targets/<dir>/<hash>.<name> under consistent snapshots (python-tuf's rule), else plain."""
        updater = self._refreshed()
        path = trusted.path
        if updater._trusted_set.root.consistent_snapshot:
            dirname, sep, basename = path.rpartition("/")
            path = f"{dirname}{sep}{next(iter(trusted.hashes.values()))}.{basename}"
        return "targets/" + path

    def _refreshed(self) -> Updater:
        """The updater of the last refresh, refreshing first if there was none."""
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def _trusted_targets(self) -> dict[str, TargetFile]:
        """The verified top-level targets of the last refresh."""
        return trusted_targets(self._refreshed())

    def _matching(
        self, package: str, channel: str | None, os: str | None, arch: str | None, fmt: str | None
    ) -> list[TargetInfo]:
        """Targets of `package` passing the given filters (None = any)."""
        return [
            t
            for t in self.targets()
            if t.package == package
            and (channel is None or channel in t.channels)
            and (os is None or t.os == os)
            and (arch is None or t.arch == arch)
            and (fmt is None or t.format == fmt)
        ]

    def _summary(self, package: str) -> str:
        """A short list of what the repository has for a package, for error messages."""
        items = [
            f"{t.version} {t.os}/{t.arch} {t.format} [{','.join(t.channels)}]"
            for t in self.targets()
            if t.package == package
        ]
        if not items:
            return "nothing for this package"
        return "; ".join(items[:12]) + (f"; … {len(items) - 12} more" if len(items) > 12 else "")


def commit_metadata(stage: Path, metadata_dir: Path) -> None:
    """Copy what a refresh changed into the trusted directory, atomically per file.

    Root history first and timestamp last, so an interruption leaves metadata that python-tuf
    either accepts or refetches.
    """
    order = {"root.json": 1, "targets.json": 2, "snapshot.json": 3, "timestamp.json": 4}
    paths = sorted(stage.rglob("*"), key=lambda p: (order.get(p.name, 0), str(p)))
    for source in paths:
        dest = metadata_dir / source.relative_to(stage)
        if source.is_symlink():
            link = os.readlink(source)
            if not (dest.is_symlink() and os.readlink(dest) == link):
                atomic_symlink(link, dest)
        elif source.is_dir():
            dest.mkdir(exist_ok=True)
        elif source.is_file():
            data = source.read_bytes()
            if dest.is_symlink() or not dest.is_file() or dest.read_bytes() != data:
                atomic_write_bytes(dest, data, mode=0o644)


def load_bootstrap(metadata_dir: Path, trust_root: Path | None) -> bytes | None:
    """None when metadata_dir holds a trusted root already; else the trust root's bytes."""
    if (metadata_dir / "root.json").exists():
        return None
    if trust_root is None or not Path(trust_root).is_file():
        raise ConfigError(
            f"no trusted root: {metadata_dir / 'root.json'} does not exist"
            + (f" and {trust_root} is missing" if trust_root is not None else ""),
            hint="reinstall the agent (its payload carries share/root.json) or pass the "
            "repository's root.json as the trust root",
        )
    return Path(trust_root).read_bytes()


def describe_query(
    package: str,
    version: str | None,
    channel: str | None,
    os: str | None,
    arch: str | None,
    fmt: str | None,
) -> str:
    """`aliyun-assist 2.2.5 for linux/x86_64 (deb) in channel stable`, leaving out what is None."""
    text = package + (f" {version}" if version else "")
    if os or arch:
        text += f" for {os or '*'}/{arch or '*'}"
    if fmt:
        text += f" ({fmt})"
    return text + (f" in channel {channel}" if channel else "")
