"""Bundles for sites with no network path: export a mirror to one tar, import it verified.

A bundle is a plain tar of the published tree (through the index symlinks) plus bundle.json.
Import unpacks it beside the mirror and runs an ordinary sync from it, so the bundle is
verified exactly like an upstream: the pinned root, gpgv, every hash.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
import tempfile
from pathlib import Path

from common.atomic import atomic_open
from common.errors import UsageError, VerificationError
from common.extract import extract_tar
from mirror.options import SyncOptions, SyncReport, is_content
from mirror.plan import Filters
from mirror.source import DirSource
from mirror.state import load_state, locked, require_mirror, state_dir
from mirror.sync import sync

log = logging.getLogger(__name__)

MANIFEST = "bundle.json"


def export_bundle(root: Path, out: Path, since: Path | None = None) -> int:
    """Write the published tree to `out`; with `since` (a site's state.json) only the content
    it lacks (metadata and indexes always travel: import re-verifies them)."""
    require_mirror(root)
    with locked(root):  # no sync may change the tree while it is being copied
        return _write_bundle(root, out, since)


def _write_bundle(root: Path, out: Path, since: Path | None) -> int:
    """export_bundle under the lock."""
    state = load_state(root)
    if not state.last_sync or state.publishing:
        raise UsageError(
            f"{root} holds no completely synced mirror",
            hint="run assist-mirror sync (it finishes an interrupted publish) and export again",
        )
    have: dict[str, list[object]] = {}
    if since is not None:
        try:
            have = json.loads(since.read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot read --since {since}: {exc}", hint="pass the site's .mirror/state.json"
            ) from exc
    members = sorted(
        rel
        for rel, record in state.files.items()
        if not is_content(rel) or list(have.get(rel, []))[:2] != list(record)[:2]
    )
    manifest = {
        "timestamp_version": state.timestamp_version,
        "filters": state.filter_spec or Filters().to_dict(),
        "files": members,
        "incremental": since is not None,
    }
    with atomic_open(out) as handle, tarfile.open(fileobj=handle, mode="w") as tar:
        data = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for rel in members:
            tar.add(str(root / rel), arcname=rel, recursive=False)
    log.info("exported %d files to %s", len(members), out)
    return len(members)


def _bundle_filters(manifest: Path) -> Filters:
    """The filters the exporting mirror synced with: the bundle holds only what they select."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VerificationError(
            f"bundle has no readable {MANIFEST}: {exc}",
            hint="the bundle is damaged or not one of ours; export it again",
        ) from exc
    if not isinstance(data, dict):
        raise VerificationError(f"bundle {MANIFEST} is not an object", hint="export it again")
    if "filters" not in data:  # bundles of mirrors that predate recorded filters
        log.warning("bundle names no filters: importing it as a mirror of everything")
        return Filters()
    try:
        return Filters.from_dict(data["filters"])
    except ValueError as exc:
        raise VerificationError(
            f"bundle {MANIFEST} has bad filters: {exc}",
            hint="the bundle is damaged or not one of ours; export it again",
        ) from exc


def import_bundle(
    bundle: Path,
    root: Path,
    *,
    trust_root: Path | None = None,
    keyring: Path | None = None,
    region: str = "",
    public_url: str = "",
) -> SyncReport:
    """Unpack `bundle` next to the mirror and sync from it with full verification."""
    if not bundle.is_file():
        raise UsageError(f"bundle {bundle} not found")
    state_dir(root).mkdir(parents=True, exist_ok=True)
    state = load_state(root)
    with tempfile.TemporaryDirectory(prefix="import-", dir=state_dir(root)) as tmp:
        unpacked = Path(tmp)
        try:
            with tarfile.open(bundle) as tar:
                extract_tar(tar, unpacked)  # never follows a link it made (common/extract.py)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise VerificationError(
                f"cannot unpack bundle {bundle}: {exc}",
                hint="the bundle is damaged or not one of ours",
            ) from exc
        filters = _bundle_filters(unpacked / MANIFEST)
        (unpacked / MANIFEST).unlink(missing_ok=True)
        report = sync(
            SyncOptions(
                root=root,
                source=DirSource(unpacked),
                filters=filters,
                region=region or state.region,
                public_url=public_url or state.public_url,
                trust_root=trust_root,
                keyring=keyring,
            )
        )
        shutil.rmtree(unpacked, ignore_errors=True)
    return report
