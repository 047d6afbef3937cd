"""The mirror's trust anchor: the pinned root.json, and its refresh through common.trust.

The first anchor (--trust-root, or the root shipped with this code) is tried in
.mirror/tuf-new/ and pinned as .mirror/tuf/ only once a sync verified against it is published.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from tuf.api.metadata import Metadata, Root

from common.atomic import atomic_write_bytes, fsync_dir
from common.errors import ConfigError
from common.trust import TufHints, TufTransport, refresh_tuf
from mirror.source import Source
from mirror.state import state_dir

log = logging.getLogger(__name__)

MIRROR_HINTS = TufHints(
    expired="the upstream must re-publish (assist-pkgbuild publish) before the mirror can sync",
    repository="the upstream is not signed by the pinned root, or serves older metadata than "
    "the mirror already trusts; check --upstream and --trust-root",
    download="check --upstream and the network path to it",
)
PENDING_TUF = "tuf-new"  # the first anchor, until a sync verified against it is published
_HERE = Path(__file__).resolve()
# The payload ships versions/V/share/root.json next to versions/V/lib/mirror/; a source tree
# may carry share/root.json at its top.
SHIPPED_ROOTS = (_HERE.parents[2] / "share" / "root.json", _HERE.parents[1] / "share" / "root.json")


def shipped_root() -> Path | None:
    """The trust anchor shipped with this code, if any."""
    return next((p for p in SHIPPED_ROOTS if p.is_file()), None)


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


def refresh_metadata(source: Source, tuf_dir: Path) -> TufTransport:
    """Run the TUF client workflow against the upstream; its transport lists what it fetched."""
    _, transport = refresh_tuf(source, tuf_dir, hints=MIRROR_HINTS)
    return transport
