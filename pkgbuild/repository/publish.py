"""init, publish and yank: the operations that change a release repository.

Each runs under the repository lock and writes in reader-safe order: artifacts, then TUF
metadata (timestamp last), then the apt and yum trees of the touched channels (swapped whole).
"""

from __future__ import annotations

import datetime
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from tuf.api.metadata import Metadata, Root, TargetFile

from common.atomic import atomic_open
from common.errors import LocalStateError, NotFoundError, UsageError
from common.hashing import PIECE, file_sha256, piece_sha256s
from pkgbuild.keys import write_root as write_keydir_root
from pkgbuild.naming import ArtifactInfo
from pkgbuild.repository.apt import (
    apt_channel_is_current,
    build_apt_channel,
    deb_entry,
)
from pkgbuild.repository.identity import identify_artifact
from pkgbuild.repository.layout import (
    RepoState,
    check_channel,
    load_state,
    repo_lock,
    resolve_expires,
    save_state,
    state_path,
)
from pkgbuild.repository.metadata import (
    RepoMetadata,
    commit_chain,
    load_metadata,
    metadata_dir,
    newest_root_version,
    package_targets,
    refresh_chain,
    refresh_root,
    require_repository_keys,
    root_matches_keys,
    same_targets,
    stored_target_path,
    target_channels,
    target_custom,
    target_sha256,
    utcnow,
    write_root,
)
from pkgbuild.repository.public import key_targets, write_bootstrap, write_public_keys
from pkgbuild.repository.yum import RpmEntry, build_yum_channel, yum_channel_is_current

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "stable"
# A KEYDIR root.json is reused by init when its expiry is this close to the one asked for.
ROOT_EXPIRY_TOLERANCE = datetime.timedelta(days=1)


def init_repository(repo: Path, keys: Path, expires: dict[str, datetime.timedelta]) -> None:
    """Create an empty release repository (idempotent for identical settings)."""
    repo, keys = Path(repo), Path(keys)
    state = RepoState(resolve_expires(expires))
    with repo_lock(repo, create=True):
        if state_path(repo).exists():
            refuse_different_init(repo, keys, state)
            log.info("%s is already initialised with these settings", repo)
            return
        if metadata_dir(repo).exists() and not is_interrupted_init(repo, keys):
            raise LocalStateError(
                f"{repo}/metadata exists but the repository has no state file",
                hint="init into a new, empty directory",
            )
        root = initial_root(keys, state.expires["root"])
        write_root(repo, root)
        current = commit_chain(repo, keys, state, root, key_targets(repo, keys), None)
        sync_channels(repo, keys, current, [DEFAULT_CHANNEL])
        write_public_keys(repo, keys)
        write_bootstrap(repo, keys)
        save_state(repo, state)
    log.info("initialised release repository %s", repo)


def is_interrupted_init(repo: Path, keys: Path) -> bool:
    """True when REPO holds only what an init that died before its state file wrote."""
    try:
        current = load_metadata(repo)
    except LocalStateError:
        return newest_root_version(repo) <= 1
    return (
        current.root.signed.version == 1
        and current.targets.signed.version == 1
        and not package_targets(current.targets.signed.targets)
        and root_matches_keys(current.root.signed, keys)
    )


def refuse_different_init(repo: Path, keys: Path, state: RepoState) -> None:
    """An existing repository is accepted only if it has the same expiries and keys."""
    existing = load_state(repo)
    if existing.expires != state.expires:
        raise LocalStateError(
            f"{repo} is already initialised with other expiries",
            hint="publish into it as it is, or init a new directory",
        )
    root = load_metadata(repo).root
    if not root_matches_keys(root.signed, keys):
        raise LocalStateError(
            f"{repo} is already initialised with other keys",
            hint="use the key directory it was created with",
        )


def initial_root(keys: Path, expiry: datetime.timedelta) -> Metadata[Root]:
    """KEYDIR/root.json when it fits (v1, same keys, expiry as asked), else a fresh v1 root."""
    path = keys / "root.json"
    if path.is_file():
        root: Metadata[Root] = Metadata.from_file(str(path))
        wanted = utcnow() + expiry
        if (
            root.signed.version == 1
            and root.signed.consistent_snapshot
            and root_matches_keys(root.signed, keys)
            and abs(root.signed.expires - wanted) <= ROOT_EXPIRY_TOLERANCE
        ):
            return root
    log.info("signing a new version-1 root (expires in %s) into %s", expiry, path)
    return Metadata.from_file(str(write_keydir_root(keys, expiry)))


def publish_artifacts(
    repo: Path, keys: Path, artifacts: Sequence[Path], channel: str = DEFAULT_CHANNEL
) -> list[str]:
    """Add artifacts to `channel`: TUF targets, apt/yum trees, keys/ and bootstrap/.

    With no artifacts it only re-signs what is past half its lifetime (a cron job keeps a
    repository's 7-day timestamp alive this way).
    """
    repo, keys = Path(repo), Path(keys)
    check_channel(channel)
    if not artifacts:
        refresh_repository(repo, keys)
        return []
    identified = [(identify_artifact(Path(p), keys), Path(p)) for p in artifacts]
    with repo_lock(repo):
        state = load_state(repo)
        current = load_metadata(repo)
        require_repository_keys(current.root.signed, keys)
        targets = dict(current.targets.signed.targets)
        for info, path in identified:
            targets[info.target_path] = merge_target(
                targets.get(info.target_path), info, path, channel
            )
        for info, path in identified:
            store_artifact(repo, targets[info.target_path], path)
        targets.update(key_targets(repo, keys))
        current = refresh_root(repo, keys, state, current)
        if not same_targets(targets, current.targets.signed.targets):
            current = commit_chain(repo, keys, state, current.root, targets, current)
        else:
            log.info("targets unchanged: no new targets version")
            current = refresh_chain(repo, keys, state, current)
        sync_channels(repo, keys, current, [channel])
        write_public_keys(repo, keys)
        write_bootstrap(repo, keys)
    return [info.target_path for info, _ in identified]


def refresh_repository(repo: Path, keys: Path) -> None:
    """Re-sign roles past half their lifetime and the apt/yum indexes that follow them."""
    with repo_lock(repo):
        state = load_state(repo)
        current = load_metadata(repo)
        require_repository_keys(current.root.signed, keys)
        current = refresh_root(repo, keys, state, current)
        targets = {**current.targets.signed.targets, **key_targets(repo, keys)}
        if not same_targets(targets, current.targets.signed.targets):
            log.info("the release keys changed: a new targets version signs them")
            current = commit_chain(repo, keys, state, current.root, targets, current)
        else:
            current = refresh_chain(repo, keys, state, current)
        sync_channels(repo, keys, current, known_channels(repo, current, []))
        write_public_keys(repo, keys)


def merge_target(
    existing: TargetFile | None, info: ArtifactInfo, path: Path, channel: str
) -> TargetFile:
    """The target for `path` with `channel` added; a different file under a known path is refused."""
    target = TargetFile.from_file(info.target_path, str(path), ["sha256"])
    channels = {channel}
    if existing is not None:
        if existing.length != target.length or existing.hashes != target.hashes:
            raise UsageError(
                f"{info.target_path} is already published with different content",
                hint="releases are immutable: build and publish a new version",
            )
        channels |= set(target_channels(existing))
    custom = info.custom(sorted(channels))
    if info.format == "tar.gz":  # clients unpack it while it downloads, piece by checked piece
        custom["pieces"] = {"size": PIECE, "sha256": piece_sha256s(path)}
    target.unrecognized_fields["custom"] = custom
    return target


def store_artifact(repo: Path, target: TargetFile, source: Path) -> None:
    """Copy an artifact to its consistent-snapshot name under targets/ (once)."""
    dest = stored_target_path(repo, target)
    if dest.is_file() and file_sha256(dest) == target_sha256(target):
        return
    with atomic_open(dest) as out, source.open("rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)


def yank_version(
    repo: Path, keys: Path, package: str, version: str, channel: str = DEFAULT_CHANNEL
) -> list[str]:
    """Take every artifact of package `version` out of `channel` (targets, apt, yum)."""
    repo, keys = Path(repo), Path(keys)
    check_channel(channel)
    with repo_lock(repo):
        state = load_state(repo)
        current = load_metadata(repo)
        require_repository_keys(current.root.signed, keys)
        targets = dict(current.targets.signed.targets)
        yanked = []
        for path, target in sorted(package_targets(targets).items()):
            custom = target_custom(target)
            channels = target_channels(target)
            if custom.get("package") != package or custom.get("version") != version:
                continue
            if channel not in channels:
                continue
            channels.remove(channel)
            yanked.append(path)
            if channels:
                updated = TargetFile(
                    target.length, target.hashes, path, dict(target.unrecognized_fields)
                )
                updated.unrecognized_fields["custom"] = {**custom, "channels": sorted(channels)}
                targets[path] = updated
            else:
                del targets[path]
        if not yanked:
            raise NotFoundError(
                f"{package} {version} is not published in channel {channel}",
                hint=describe_versions(current, package, channel),
            )
        current = commit_chain(repo, keys, state, current.root, targets, current)
        sync_channels(repo, keys, current, [channel])
    log.info("yanked %s %s from %s: %s", package, version, channel, ", ".join(yanked))
    return yanked


def describe_versions(current: RepoMetadata, package: str, channel: str) -> str:
    """A hint listing what does exist, for NotFoundError."""
    versions = sorted(
        {
            str(target_custom(t)["version"])
            for t in package_targets(current.targets.signed.targets).values()
            if target_custom(t).get("package") == package and channel in target_channels(t)
        }
    )
    if not versions:
        return f"{package} has nothing in channel {channel}"
    return f"{channel} has {package} {', '.join(versions)}"


def known_channels(repo: Path, current: RepoMetadata, extra: list[str]) -> list[str]:
    """Every channel with a target or an existing apt/yum tree, plus `extra`."""
    channels = set(extra)
    for target in package_targets(current.targets.signed.targets).values():
        channels.update(target_channels(target))
    for folder in (repo / "apt" / "dists", repo / "yum"):
        if folder.is_dir():
            channels.update(p.name for p in folder.iterdir() if p.is_symlink() or p.is_dir())
    return sorted(c for c in channels if not c.startswith("."))


def sync_channels(repo: Path, keys: Path, current: RepoMetadata, channels: list[str]) -> None:
    """Rebuild the apt and yum trees that do not match the signed targets.

    Every known channel is checked, not only `channels`: Release's Valid-Until follows the
    targets expiry, so a new targets version re-signs the apt trees of all channels.
    """
    valid_until = current.targets.signed.expires
    for channel in known_channels(repo, current, channels):
        debs, rpms = [], []
        for target in package_targets(current.targets.signed.targets).values():
            custom = target_custom(target)
            if channel not in target_channels(target):
                continue
            source = stored_target_path(repo, target)
            filename = target.path.rpartition("/")[2]
            if custom["format"] == "deb":
                debs.append(
                    deb_entry(str(custom["package"]), filename, str(custom["arch"]), source)
                )
            elif custom["format"] == "rpm":
                rpms.append(RpmEntry(filename, source))
        if not apt_channel_is_current(repo, channel, debs, valid_until):
            build_apt_channel(repo, keys, channel, debs, valid_until)
        if not yum_channel_is_current(repo, channel, rpms):
            build_yum_channel(repo, keys, channel, rpms)
