"""Read-side commands over a published mirror: verify, status, prune."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Targets

from common.errors import AssistError, LocalStateError
from common.hashing import file_sha256
from common.targets import parse_targets
from common.version import version_sort_key
from mirror import apt, yum
from mirror.anchor import refresh_metadata
from mirror.gpg import verify_clearsigned, verify_detached
from mirror.plan import FileEntry, keep_newest, target_entry
from mirror.source import DirSource
from mirror.state import MirrorState, load_state, locked, require_mirror, save_state, state_dir

log = logging.getLogger(__name__)

WARN_DAYS = 2.0


def _check_entry(root: Path, entry: FileEntry, problems: list[str]) -> None:
    """Note a problem if a present file does not have the listed length and sha256."""
    path = root / entry.relpath
    if not path.is_file():
        return
    if path.stat().st_size != entry.length or file_sha256(path) != entry.sha256:
        problems.append(f"{entry.relpath}: does not match its signed hash")


def _require_published(root: Path) -> MirrorState:
    state = load_state(root)
    if not state.last_sync or not (root / "metadata" / "timestamp.json").is_file():
        raise LocalStateError(f"{root} holds no synced mirror", hint="run assist-mirror sync first")
    return state


def verify_tree(root: Path) -> list[str]:
    """Problems found checking every published file against signed metadata (empty: all good)."""
    state = _require_published(root)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="assist-verify-") as tmp:
        trusted = state_dir(root) / "tuf" / "root.json"
        (Path(tmp) / "root.json").write_bytes(trusted.read_bytes())
        try:
            refresh_metadata(DirSource(root), Path(tmp))
        except AssistError as exc:
            return [f"TUF metadata: {exc.message}"]
        targets = Metadata[Targets].from_bytes((Path(tmp) / "targets.json").read_bytes())
    signed = {
        t.relpath: target_entry(t)
        for t in parse_targets({p: t.to_dict() for p, t in targets.signed.targets.items()})
    }
    for path in sorted((root / "targets").rglob("*")) if (root / "targets").is_dir() else []:
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            if rel not in signed:
                problems.append(f"{rel}: not a target of the signed metadata")
    for entry in signed.values():
        _check_entry(root, entry, problems)
    for rel, record in sorted(state.files.items()):
        if not (root / rel).is_file():
            problems.append(f"{rel}: missing")
        elif not rel.startswith("targets/"):
            _check_entry(root, FileEntry(rel, int(record[1]), str(record[0])), problems)
    keyring = state_dir(root) / "keyring.gpg"
    problems += _verify_apt(root, keyring) + _verify_yum(root, keyring)
    return problems


def _verify_apt(root: Path, keyring: Path) -> list[str]:
    """Check each channel's InRelease signature, its indexes, and the .debs they list."""
    problems: list[str] = []
    dists = root / "apt" / "dists"
    for inrelease in sorted(dists.glob("*/InRelease")) if dists.is_dir() else []:
        channel = inrelease.parent.name
        try:
            release = apt.parse_release(
                verify_clearsigned(inrelease.read_bytes(), keyring, f"apt {channel}").decode()
            )
        except AssistError as exc:
            problems.append(f"apt/dists/{channel}/InRelease: {exc.message}")
            continue
        for entry in apt.index_entries(release, channel, None):
            before = len(problems)
            _check_entry(root, entry, problems)
            path = root / entry.relpath
            intact = len(problems) == before
            if intact and path.is_file() and entry.relpath.endswith("/Packages"):
                for package in apt.parse_packages(path.read_text(encoding="utf-8")):
                    _check_entry(root, apt.pool_entry(package), problems)
    return problems


def _verify_yum(root: Path, keyring: Path) -> list[str]:
    """Check each channel's repomd.xml signature, its data files, and the rpms they list."""
    problems: list[str] = []
    for repomd in (
        sorted((root / "yum").glob("*/repodata/repomd.xml")) if (root / "yum").is_dir() else []
    ):
        prefix = repomd.parent.parent.relative_to(root).as_posix()
        asc = repomd.with_name("repomd.xml.asc")
        try:
            verify_detached(
                repomd.read_bytes(),
                asc.read_bytes() if asc.is_file() else b"",
                keyring,
                f"{prefix}/repodata/repomd.xml",
            )
            entries = yum.parse_repomd(repomd.read_bytes(), prefix)
            primary = yum.primary_entry(entries)
        except AssistError as exc:
            problems.append(f"{prefix}/repodata/repomd.xml: {exc.message}")
            continue
        before = len(problems)
        for entry in entries:
            _check_entry(root, entry, problems)
        if len(problems) == before and (root / primary.relpath).is_file():
            data = yum.decompress(primary.relpath, (root / primary.relpath).read_bytes())
            for package in yum.parse_primary(data):
                _check_entry(root, yum.rpm_entry(package, prefix), problems)
    return problems


def mirror_status(root: Path, now: dt.datetime | None = None) -> dict[str, Any]:
    """Versions per package, bytes, last sync and metadata expiry countdowns, as plain data."""
    state = _require_published(root)
    now = now or dt.datetime.now(dt.timezone.utc)
    packages: dict[str, set[str]] = {}
    for rel, record in state.files.items():
        if rel.startswith("targets/") and len(record) >= 4 and record[2]:
            packages.setdefault(str(record[2]), set()).add(str(record[3]))
    expiry = {}
    warnings = []
    for role, text in sorted(state.expires.items()):
        days = (dt.datetime.fromisoformat(text) - now).total_seconds() / 86400
        expiry[role] = {"expires": text, "days_left": round(days, 2)}
        if days < 0:
            warnings.append(
                f"{role} metadata expired {-days:.1f} days ago: clients refuse this mirror; sync it now"
            )
        elif days < WARN_DAYS:
            warnings.append(
                f"{role} metadata expires in {days:.1f} days: sync the mirror (assist-mirror sync) before then"
            )
    return {
        "root": str(root),
        "upstream": state.upstream,
        "region": state.region,
        "public_url": state.public_url,
        "last_sync": state.last_sync,
        "versions": {
            "timestamp": state.timestamp_version,
            "snapshot": state.snapshot_version,
            "targets": state.targets_version,
            "root": state.root_version,
        },
        "packages": {
            name: sorted(found, key=version_sort_key) for name, found in sorted(packages.items())
        },
        "files": len(state.files),
        "bytes": sum(int(r[1]) for r in state.files.values()),
        "expiry": expiry,
        "warnings": warnings,
    }


def format_status(status: dict[str, Any]) -> str:
    """The status as a few human-readable lines."""
    lines = [
        f"mirror     {status['root']} (region {status['region'] or '-'}, {status['public_url'] or '-'})",
        f"upstream   {status['upstream']}",
        f"last sync  {status['last_sync']}",
        f"content    {status['files']} files, {status['bytes']} bytes",
        "metadata   " + ", ".join(f"{k} v{v}" for k, v in status["versions"].items()),
    ]
    for name, versions in status["packages"].items():
        lines.append(f"package    {name}: {', '.join(versions)}")
    for role, info in status["expiry"].items():
        lines.append(f"expires    {role}: {info['expires']} ({info['days_left']} days)")
    lines += [f"WARNING    {w}" for w in status["warnings"]]
    return "\n".join(lines)


def prune(root: Path, keep: int, remove: Callable[[Path], None] = Path.unlink) -> list[str]:
    """Delete content of all but the newest `keep` versions of each package; returns paths."""
    require_mirror(root)
    with locked(root):
        state = _require_published(root)
        content = [(rel, r) for rel, r in state.files.items() if len(r) >= 4 and r[2]]
        kept = {
            rel
            for rel, _ in keep_newest(
                content, lambda c: f"{c[0].split('/')[0]}:{c[1][2]}", lambda c: str(c[1][3]), keep
            )
        }
        removed = sorted(rel for rel, _ in content if rel not in kept)
        for rel in removed:
            path = root / rel
            if path.exists():
                remove(path)
            del state.files[rel]
        save_state(root, state)
    log.info("pruned %d files", len(removed))
    return removed
