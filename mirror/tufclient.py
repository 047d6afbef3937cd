"""The mirror as a TUF client of its upstream: tuf's Updater over our Source, errors mapped."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from common.atomic import atomic_write_bytes, fsync_dir
from common.errors import (
    ConfigError,
    DownloadError,
    ExpiredMetadataError,
    NotFoundError,
    VerificationError,
)
from mirror.source import Source
from mirror.state import state_dir

log = logging.getLogger(__name__)

TUF_BASE = "upstream://repo/"
PENDING_TUF = "tuf-new"  # the first anchor, until a sync verified against it is published
_HERE = Path(__file__).resolve()
# The payload ships versions/V/share/root.json next to versions/V/lib/mirror/; a source tree
# may carry share/root.json at its top.
SHIPPED_ROOTS = (_HERE.parents[2] / "share" / "root.json", _HERE.parents[1] / "share" / "root.json")


def shipped_root() -> Path | None:
    """The trust anchor shipped with this code, if any."""
    return next((p for p in SHIPPED_ROOTS if p.is_file()), None)


class TufFetcher(FetcherInterface):
    """tuf's transport seam over a Source; remembers every metadata file it fetched."""

    def __init__(self, source: Source, max_length: int = 64 << 20) -> None:
        self.source = source
        self.max_length = max_length
        self.fetched: dict[str, bytes] = {}

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(TUF_BASE):
            raise tuf_exceptions.DownloadError(f"unexpected URL {url}")
        path = url[len(TUF_BASE) :]
        try:
            data = self.source.fetch_bytes(path, self.max_length)
        except NotFoundError as exc:
            raise tuf_exceptions.DownloadHTTPError(str(exc), 404) from exc
        except DownloadError as exc:
            raise tuf_exceptions.DownloadError(str(exc)) from exc
        self.fetched[path] = data
        return iter([data])


def prepare_trust(root: Path, trust_root: Path | None) -> Path:
    """The metadata directory a sync refreshes: the mirror's trusted one, or before the first
    successful publish a fresh one seeded with the anchor (promote_trust keeps it afterwards),
    so an anchor that fails verification is never pinned."""
    trusted = state_dir(root) / "tuf"
    if (trusted / "root.json").exists():
        if trust_root is not None:
            _warn_if_other_root(root, trust_root, trusted / "root.json")
        return trusted
    anchor = trust_root or shipped_root()
    if anchor is None or not anchor.is_file():
        raise ConfigError(
            f"no trusted root.json for the mirror at {root}",
            hint="pass --trust-root FILE (the root.json shipped with the agent payload)",
        )
    try:
        Metadata[Root].from_bytes(anchor.read_bytes())
    except Exception as exc:
        raise ConfigError(f"{anchor} is not TUF root metadata: {exc}") from exc
    pending = state_dir(root) / PENDING_TUF
    shutil.rmtree(pending, ignore_errors=True)  # an anchor a failed sync tried is not trusted
    pending.mkdir(parents=True)
    atomic_write_bytes(pending / "root.json", anchor.read_bytes())
    return pending


def promote_trust(root: Path, tuf_dir: Path) -> None:
    """After a successful publish: the anchor it verified against becomes the pinned one."""
    trusted = state_dir(root) / "tuf"
    if tuf_dir == trusted:
        return
    os.replace(tuf_dir, trusted)
    fsync_dir(trusted.parent)
    log.info("pinned the TUF root of %s", root)


def _warn_if_other_root(root: Path, trust_root: Path, trusted: Path) -> None:
    """Log that --trust-root is ignored when it is not a root of the chain already trusted."""
    try:
        given = trust_root.read_bytes()
    except OSError as exc:
        log.warning("--trust-root %s is ignored (unreadable: %s)", trust_root, exc)
        return
    if given == trusted.read_bytes():
        return
    published = [p.read_bytes() for p in (root / "metadata").glob("*.root.json") if p.is_file()]
    if given in published:  # an older root of the same chain
        return
    log.warning(
        "--trust-root %s differs from the root this mirror already trusts (%s); ignoring it"
        " (to re-anchor the mirror, remove %s and sync again)",
        trust_root,
        trusted,
        trusted.parent,
    )


def refresh_metadata(source: Source, tuf_dir: Path) -> TufFetcher:
    """Run tuf's client workflow against the upstream; errors become ours, with hints."""
    fetcher = TufFetcher(source)
    updater = Updater(
        metadata_dir=str(tuf_dir),
        metadata_base_url=TUF_BASE + "metadata/",
        target_base_url=TUF_BASE + "targets/",
        fetcher=fetcher,
        config=UpdaterConfig(prefix_targets_with_hash=True),
        bootstrap=None,
    )
    try:
        updater.refresh()
    except tuf_exceptions.ExpiredMetadataError as exc:
        raise ExpiredMetadataError(
            f"upstream metadata expired: {exc}",
            hint="the upstream must re-publish (assist-pkgbuild publish) before the mirror can sync",
        ) from exc
    except tuf_exceptions.BadVersionNumberError as exc:
        raise VerificationError(
            f"upstream metadata rolled back: {exc}",
            hint="the upstream serves older metadata than the mirror already trusts; check --upstream",
        ) from exc
    except tuf_exceptions.RepositoryError as exc:
        raise VerificationError(
            f"upstream metadata failed verification: {type(exc).__name__}: {exc}",
            hint="the upstream is not signed by the pinned root; check --upstream and --trust-root",
        ) from exc
    except tuf_exceptions.DownloadError as exc:
        raise DownloadError(
            f"cannot fetch metadata from {source.description}: {exc}",
            hint="check --upstream and the network path to it",
        ) from exc
    return fetcher
