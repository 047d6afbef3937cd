"""TUF metadata of the release repository: load the current chain, sign, write new versions.

Write order keeps readers consistent: artifacts first (by the caller), then N.targets.json and
N.snapshot.json under new version names (never overwriting what a timestamp points at), then
timestamp.json last by atomic rename. A reader following timestamp -> snapshot -> targets always
gets one complete, signed chain.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    T,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from common.atomic import atomic_write_bytes
from common.errors import ConfigError, LocalStateError, VerificationError
from pkgbuild.keys import load_tuf_public_keys, load_tuf_signers, role_thresholds
from pkgbuild.repository.layout import ROLES, RepoState

log = logging.getLogger(__name__)

SERIALIZER = JSONSerializer(compact=False)
_ROOT_NAME = re.compile(r"^(\d+)\.root\.json$")


@dataclass
class RepoMetadata:
    """The current, complete chain of top-level metadata."""

    root: Metadata[Root]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]


def metadata_dir(repo: Path) -> Path:
    """REPO/metadata."""
    return Path(repo) / "metadata"


def utcnow() -> datetime.datetime:
    """Now, in UTC, to the second (TUF expiry has second resolution)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def newest_root_version(repo: Path) -> int:
    """The highest N of metadata/N.root.json (0 when there is none)."""
    folder = metadata_dir(repo)
    if not folder.is_dir():
        return 0
    found = [_ROOT_NAME.match(entry.name) for entry in folder.iterdir()]
    return max((int(m.group(1)) for m in found if m), default=0)


def _read(path: Path, cls: type[T]) -> Metadata[T]:
    """Load one metadata file, with a clear error when it is missing or broken."""
    try:
        md = Metadata.from_file(str(path))
    except FileNotFoundError as exc:
        raise LocalStateError(
            f"release repository metadata is missing: {path}",
            hint="restore the repository from a backup or re-run init into a new directory",
        ) from exc
    except Exception as exc:  # tuf raises several deserialisation errors
        raise LocalStateError(f"cannot read {path}: {exc}") from exc
    if not isinstance(md.signed, cls):
        raise LocalStateError(f"{path} holds {md.signed.type}, expected {cls.type}")
    return md  # type: ignore[return-value]


def load_metadata(repo: Path) -> RepoMetadata:
    """Follow timestamp -> snapshot -> targets from REPO/metadata, with the newest root."""
    folder = metadata_dir(repo)
    root = _read(folder / f"{newest_root_version(repo)}.root.json", Root)
    timestamp = _read(folder / "timestamp.json", Timestamp)
    snapshot = _read(folder / f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
    targets_version = snapshot.signed.meta["targets.json"].version
    targets = _read(folder / f"{targets_version}.targets.json", Targets)
    return RepoMetadata(root, targets, snapshot, timestamp)


def sign_role(md: Metadata[T], role: str, root: Root, signers: list[Signer]) -> None:
    """Replace the signatures of `md` by those of `signers`, then check root accepts them."""
    allowed = set(root.roles[role].keyids)
    md.signatures.clear()
    for signer in signers:
        if signer.public_key.keyid not in allowed:
            raise ConfigError(
                f"key {signer.public_key.keyid[:12]}… is not a {role} key of this repository",
                hint="use the key directory the repository was initialised with",
            )
        md.sign(signer, append=True)
    try:
        root.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as exc:
        raise ConfigError(
            f"the key directory cannot meet the {role} threshold: {exc}",
            hint="use the key directory the repository was initialised with",
        ) from exc


def root_matches_keys(root: Root, keys: Path) -> bool:
    """True when `root` lists exactly KEYDIR's public keys and thresholds for every role."""
    thresholds = role_thresholds(keys)
    for role in ROLES:
        keyids = {key.keyid for key in load_tuf_public_keys(keys, role)}
        if set(root.roles[role].keyids) != keyids or root.roles[role].threshold != thresholds[role]:
            return False
    return True


def require_repository_keys(root: Root, keys: Path) -> None:
    """Refuse a key directory that does not hold exactly the keys the current root lists."""
    if not root_matches_keys(root, keys):
        raise ConfigError(
            f"{keys} does not hold this repository's current keys",
            hint="use the key directory the repository was initialised (or last rotated) with",
        )


def to_bytes(md: Metadata[T]) -> bytes:
    """Canonical on-disk form (indented JSON)."""
    return md.to_bytes(SERIALIZER)


def write_root(repo: Path, root: Metadata[Root]) -> None:
    """Write N.root.json, then the root.json convenience copy."""
    data = to_bytes(root)
    folder = metadata_dir(repo)
    atomic_write_bytes(folder / f"{root.signed.version}.root.json", data)
    atomic_write_bytes(folder / "root.json", data)


def _metafile(version: int, data: bytes) -> MetaFile:
    """A MetaFile with length and sha256, so clients check the bytes before parsing."""
    return MetaFile(version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})


def commit_chain(
    repo: Path,
    keys: Path,
    state: RepoState,
    root: Metadata[Root],
    targets: dict[str, TargetFile],
    previous: RepoMetadata | None,
) -> RepoMetadata:
    """Sign and write new targets, snapshot and timestamp versions (timestamp last)."""
    version = previous.targets.signed.version + 1 if previous is not None else 1
    targets_md = Metadata(
        Targets(version=version, expires=utcnow() + state.expires["targets"], targets=targets)
    )
    sign_role(targets_md, "targets", root.signed, load_tuf_signers(keys, "targets"))
    atomic_write_bytes(metadata_dir(repo) / f"{version}.targets.json", to_bytes(targets_md))
    return commit_snapshot(repo, keys, state, root, targets_md, previous)


def commit_snapshot(
    repo: Path,
    keys: Path,
    state: RepoState,
    root: Metadata[Root],
    targets_md: Metadata[Targets],
    previous: RepoMetadata | None,
) -> RepoMetadata:
    """Sign and write a new snapshot of `targets_md` (already written), then a timestamp."""
    version = previous.snapshot.signed.version + 1 if previous is not None else 1
    snapshot_md = Metadata(
        Snapshot(
            version=version,
            expires=utcnow() + state.expires["snapshot"],
            meta={"targets.json": _metafile(targets_md.signed.version, to_bytes(targets_md))},
        )
    )
    sign_role(snapshot_md, "snapshot", root.signed, load_tuf_signers(keys, "snapshot"))
    atomic_write_bytes(metadata_dir(repo) / f"{version}.snapshot.json", to_bytes(snapshot_md))
    return commit_timestamp(repo, keys, state, root, targets_md, snapshot_md, previous)


def commit_timestamp(
    repo: Path,
    keys: Path,
    state: RepoState,
    root: Metadata[Root],
    targets_md: Metadata[Targets],
    snapshot_md: Metadata[Snapshot],
    previous: RepoMetadata | None,
) -> RepoMetadata:
    """Sign and atomically replace timestamp.json: the moment readers switch to the new chain."""
    version = previous.timestamp.signed.version + 1 if previous is not None else 1
    timestamp_md = Metadata(
        Timestamp(
            version=version,
            expires=utcnow() + state.expires["timestamp"],
            snapshot_meta=_metafile(snapshot_md.signed.version, to_bytes(snapshot_md)),
        )
    )
    sign_role(timestamp_md, "timestamp", root.signed, load_tuf_signers(keys, "timestamp"))
    atomic_write_bytes(metadata_dir(repo) / "timestamp.json", to_bytes(timestamp_md))
    log.info(
        "published targets v%d, snapshot v%d, timestamp v%d",
        targets_md.signed.version,
        snapshot_md.signed.version,
        version,
    )
    return RepoMetadata(root, targets_md, snapshot_md, timestamp_md)


def is_stale(expires: datetime.datetime, lifetime: datetime.timedelta) -> bool:
    """True when less than half of a role's lifetime is left: time to re-sign it."""
    return expires - utcnow() < lifetime / 2


def refresh_root(repo: Path, keys: Path, state: RepoState, current: RepoMetadata) -> RepoMetadata:
    """Publish root N+1 (same keys, new expiry) when root is past half its lifetime."""
    if not is_stale(current.root.signed.expires, state.expires["root"]):
        return current
    root: Metadata[Root] = Metadata.from_bytes(to_bytes(current.root))
    root.signed.version += 1
    root.signed.expires = utcnow() + state.expires["root"]
    sign_role(root, "root", current.root.signed, load_tuf_signers(keys, "root"))
    write_root(repo, root)
    log.info("re-signed root as version %d", root.signed.version)
    return RepoMetadata(root, current.targets, current.snapshot, current.timestamp)


def refresh_chain(repo: Path, keys: Path, state: RepoState, current: RepoMetadata) -> RepoMetadata:
    """Re-sign the roles that are past half their lifetime (and those above them); else no-op."""
    if is_stale(current.targets.signed.expires, state.expires["targets"]):
        targets = dict(current.targets.signed.targets)
        return commit_chain(repo, keys, state, current.root, targets, current)
    if is_stale(current.snapshot.signed.expires, state.expires["snapshot"]):
        return commit_snapshot(repo, keys, state, current.root, current.targets, current)
    if is_stale(current.timestamp.signed.expires, state.expires["timestamp"]):
        return commit_timestamp(
            repo, keys, state, current.root, current.targets, current.snapshot, current
        )
    return current


def same_targets(a: dict[str, TargetFile], b: dict[str, TargetFile]) -> bool:
    """True when two target maps describe the same files with the same custom fields."""
    return {k: v.to_dict() for k, v in a.items()} == {k: v.to_dict() for k, v in b.items()}


def target_custom(target: TargetFile) -> dict[str, object]:
    """The custom fields of a target, refusing targets we did not write."""
    custom = target.custom
    if not isinstance(custom, dict) or "channels" not in custom:
        raise VerificationError(f"target {target.path} has no custom fields")
    return custom


def is_package_target(target: TargetFile) -> bool:
    """Whether a target is a package artifact (custom fields) and not e.g. a release key."""
    return isinstance(target.custom, dict) and "channels" in target.custom


def package_targets(targets: dict[str, TargetFile]) -> dict[str, TargetFile]:
    """The package artifacts among `targets` (keys/ targets carry no custom fields)."""
    return {path: t for path, t in targets.items() if is_package_target(t)}


def target_channels(target: TargetFile) -> list[str]:
    """The channels a target is published in."""
    channels = target_custom(target)["channels"]
    if not isinstance(channels, list):
        raise VerificationError(f"target {target.path} has malformed channels")
    return [str(c) for c in channels]


def target_sha256(target: TargetFile) -> str:
    """The sha256 of a target (every target we write has one)."""
    return target.hashes["sha256"]


def stored_target_path(repo: Path, target: TargetFile) -> Path:
    """targets/<dir>/<sha256>.<name>: the consistent-snapshot file of a target."""
    directory, _, name = target.path.rpartition("/")
    return Path(repo) / "targets" / directory / f"{target_sha256(target)}.{name}"
