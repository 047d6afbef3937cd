"""assist-mirror sync: bring a mirror up to date with its upstream, verified, published safely.

    is the upstream timestamp.json what we published?  -> done (one small request)
    else mirror.fullsync: tuf Updater with the pinned root -> targets / apt / yum plans ->
    parallel verified downloads into .mirror/staging -> Publication -> Storage(s)

Nothing reaches the published tree before every file of the new set is verified; a failure at
any step leaves the published tree exactly as it was. This module stays light (no tuf import)
so the no-op sync is fast.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from pathlib import Path

from common.errors import DownloadError, ExpiredMetadataError, NotFoundError
from common.imports import preload_tuf
from mirror.options import MAX_METADATA, SyncOptions, SyncReport
from mirror.state import MirrorState, load_state, locked, state_dir

log = logging.getLogger(__name__)


def sync(options: SyncOptions) -> SyncReport:
    """Bring the mirror at options.root (and options.dests) up to date with its upstream."""
    started = time.monotonic()
    root = options.root
    root.mkdir(parents=True, exist_ok=True)
    with locked(root):
        state = load_state(root)
        if is_unchanged(options, state):
            log.info("upstream timestamp unchanged: nothing to do")
            _drop_staging(root)
            return SyncReport(False, state.timestamp_version, seconds=time.monotonic() - started)
        preload_tuf()  # tuf & co. load only when there is work, without the cloud SDKs
        from mirror.fullsync import full_sync

        report = full_sync(options, state)
        report.seconds = time.monotonic() - started
        return report


def _drop_staging(root: Path) -> None:
    """Everything wanted is published: whatever a failed sync left in staging is garbage."""
    staging = state_dir(root) / "staging"
    if staging.is_dir() and any(staging.iterdir()):
        shutil.rmtree(staging, ignore_errors=True)
        log.info("dropped what an earlier failed sync left in %s", staging)


def is_unchanged(options: SyncOptions, state: MirrorState) -> bool:
    """One small request: the upstream timestamp equals what we last published, still fresh."""
    published = options.root / "metadata" / "timestamp.json"
    dests = {d.description for d in options.dests}
    if (
        not state.last_sync
        or state.publishing
        or state.filters != options.filters.fingerprint()
        or not state.filter_spec  # a mirror synced before filters were recorded: record them
        or not published.exists()
        or not dests <= set(state.dests)
    ):
        return False
    try:
        upstream = options.source.fetch_bytes("metadata/timestamp.json", MAX_METADATA)
    except NotFoundError as exc:
        raise DownloadError(
            f"upstream {options.source.description} has no metadata/timestamp.json",
            hint="check --upstream: it must be a release repository or a mirror",
        ) from exc
    if upstream != published.read_bytes():
        return False
    check_expiry(state.expires, options.now())
    return True


def check_expiry(expires: dict[str, str], now: dt.datetime) -> None:
    """Refuse metadata (TUF roles or apt Release) recorded past its expiry."""
    for role, text in sorted(expires.items()):
        if dt.datetime.fromisoformat(text) < now:
            raise ExpiredMetadataError(
                f"upstream {role} metadata expired at {text}",
                hint="the upstream must re-publish (assist-pkgbuild publish) before the mirror can sync",
            )
