"""The mirror as a TUF client of its upstream: tuf's Updater over our Source, errors mapped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from common.atomic import atomic_write_bytes
from common.errors import (
    ConfigError,
    DownloadError,
    ExpiredMetadataError,
    NotFoundError,
    VerificationError,
)
from mirror.source import Source
from mirror.state import state_dir

TUF_BASE = "upstream://repo/"
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
    """The mirror's trusted metadata directory, seeded with the pinned root on first use."""
    tuf_dir = state_dir(root) / "tuf"
    if (tuf_dir / "root.json").exists():
        return tuf_dir
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
    tuf_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(tuf_dir / "root.json", anchor.read_bytes())
    return tuf_dir


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
