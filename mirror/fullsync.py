"""The work of a sync with something new: verify, download, stage, publish, record.

Called by mirror.sync.sync under the mirror's lock once the upstream timestamp has changed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import posixpath
import shutil
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from common.atomic import atomic_write_bytes
from common.errors import ConfigError, NoSpaceError, NotFoundError, VerificationError
from common.hashing import file_sha256
from common.platform import DEB_ARCH
from common.targets import KEY_TARGETS, KEYRING_TARGET, TargetInfo, parse_targets
from common.trust import TufTransport
from mirror import apt, yum
from mirror.anchor import prepare_trust, promote_trust, refresh_metadata
from mirror.bootstrap import render_bootstraps
from mirror.gpg import keyring_fingerprints, verify_clearsigned, verify_detached
from mirror.options import MAX_METADATA, SyncOptions, SyncReport, is_content
from mirror.plan import (
    FileEntry,
    channels_of,
    keep_newest,
    plan_fetch,
    select_targets,
    target_entry,
)
from mirror.progress import SyncProgress
from mirror.source import Source
from mirror.state import MirrorState, save_state, state_dir
from mirror.storage import FileStorage, Publication

log = logging.getLogger(__name__)

SPACE_MARGIN = 64 << 20  # bytes kept free beyond the download
KEY_FILES = ("archive-keyring.gpg", "RPM-GPG-KEY-assist")


@dataclass
class _Stage:
    """The new repository being assembled in .mirror/staging."""

    dir: Path
    content: list[FileEntry] = field(default_factory=list)
    trees: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    indexed: dict[str, list[object]] = field(default_factory=dict)  # non-content rel -> hash
    fetched: list[FileEntry] = field(default_factory=list)  # content fetched outside Downloads

    def write(self, rel: str, data: bytes) -> None:
        """Stage a small verified file and remember its hash.

        No fsync per file: staging is scratch (cleared at the next run) and FileStorage.publish
        flushes everything once before any of it becomes visible."""
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.indexed[rel] = [hashlib.sha256(data).hexdigest(), len(data)]


@dataclass
class _Trusted:
    """The upstream metadata tuf just verified: raw bytes (published as-is) and parsed."""

    raw: dict[str, bytes]  # role -> bytes
    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]

    @property
    def expires(self) -> dict[str, str]:
        """Expiry of each role, ISO 8601."""
        roles = (self.root, self.timestamp, self.snapshot, self.targets)
        return {md.signed.type: md.signed.expires.isoformat() for md in roles}


def load_trusted(tuf_dir: Path) -> _Trusted:
    """Read the metadata tuf persisted after a successful refresh."""
    raw = {
        r: (tuf_dir / f"{r}.json").read_bytes()
        for r in ("root", "timestamp", "snapshot", "targets")
    }
    return _Trusted(
        raw,
        Metadata[Root].from_bytes(raw["root"]),
        Metadata[Timestamp].from_bytes(raw["timestamp"]),
        Metadata[Snapshot].from_bytes(raw["snapshot"]),
        Metadata[Targets].from_bytes(raw["targets"]),
    )


def full_sync(options: SyncOptions, state: MirrorState) -> SyncReport:
    """Verify everything new, download it, publish it, record it."""
    root = options.root
    tuf_dir = prepare_trust(root, options.trust_root)
    initial_root = (tuf_dir / "root.json").read_bytes()
    fetcher = refresh_metadata(options.source, tuf_dir)
    trusted = load_trusted(tuf_dir)
    expires = trusted.expires
    now = options.now()
    signed = trusted.targets.signed.targets
    all_targets = parse_targets({p: t.to_dict() for p, t in signed.items()})
    stage = _Stage(state_dir(root) / "staging")
    stage.dir.mkdir(parents=True, exist_ok=True)
    _clear_staged_indexes(stage.dir)
    stage.content = [target_entry(t) for t in select_targets(all_targets, options.filters)]

    def have(entry: FileEntry) -> bool:
        return _have(root, stage.dir, state, entry)

    release_keys = _fetch_release_keys(options, stage, all_targets)
    keyring = _choose_keyring(options, release_keys)
    with Downloads(options.source, stage.dir, options.workers, options.progress) as downloads:
        # targets are known now: download them while the apt/yum indexes are verified
        downloads.submit(plan_fetch(stage.content, have).fetch)
        if options.filters.wants_os("linux"):
            for channel in channels_of(all_targets, options.filters):
                _stage_apt(options, stage, channel, keyring, expires, now)
                _stage_yum(options, stage, channel, keyring)
        plan = plan_fetch(stage.content, have)
        downloads.submit(plan.fetch)
        _stage_metadata(options, stage, fetcher, initial_root, trusted.raw, keyring, release_keys)
        downloads.wait()
    log.info("fetched %d files, %d bytes", len(downloads.submitted), downloads.bytes)

    wanted = {e.relpath: e.record() for e in plan.wanted}
    _drop_unwanted_staging(stage, wanted)
    publication = Publication(
        content=list(wanted),
        trees=stage.trees,
        metadata=stage.metadata,
        remove=sorted(
            r
            for r in {*state.files, *state.pending_remove}
            if r not in wanted and r not in stage.indexed and is_content(r)
        ),
    )
    # the new file set first: a sync after a kill mid-publish re-fetches and forgets nothing
    state.files = {**wanted, **_kept_indexes(state, stage)}
    state.publishing, state.pending_remove = True, publication.remove
    save_state(root, state)
    keyring_bytes = keyring.read_bytes() if keyring is not None else None  # staged: moves now
    FileStorage(root).publish(publication, stage.dir)
    promote_trust(root, tuf_dir)  # pinned only now that what they verified is published
    _pin_keyring(root, keyring_bytes)
    _record_published(state, options, trusted, expires, now)
    save_state(root, state)
    for dest in options.dests:
        dest.publish(publication, root)
        state.dests.append(dest.description)
        save_state(root, state)
    return SyncReport(
        changed=True,
        timestamp_version=trusted.timestamp.signed.version,
        fetched_files=len(downloads.submitted) + len(stage.fetched),
        fetched_bytes=downloads.bytes + sum(e.length for e in stage.fetched),
        total_files=len(plan.wanted),
        total_bytes=sum(e.length for e in plan.wanted),
    )


def _record_published(
    state: MirrorState,
    options: SyncOptions,
    trusted: _Trusted,
    expires: dict[str, str],
    now: dt.datetime,
) -> None:
    """What the state file says after a complete local publish."""
    state.publishing, state.pending_remove = False, []
    state.upstream = options.source.description
    state.region, state.public_url = options.region, options.public_url
    state.filters = options.filters.fingerprint()
    state.filter_spec = options.filters.to_dict()
    state.timestamp_version = trusted.timestamp.signed.version
    state.snapshot_version = trusted.snapshot.signed.version
    state.targets_version = trusted.targets.signed.version
    state.root_version = trusted.root.signed.version
    state.expires = expires
    state.last_sync = now.isoformat()
    state.dests = []


def _kept_indexes(state: MirrorState, stage: _Stage) -> dict[str, list[object]]:
    """Hashes of the indexes and metadata now published (new ones replace old)."""
    kept: dict[str, list[object]] = {}
    swapped = tuple(f"{t}/" for t in stage.trees)
    for rel, value in state.files.items():
        if (
            not is_content(rel)
            and not rel.startswith(swapped)
            and (rel.startswith("metadata/") or rel.startswith(("keys/", "bootstrap/")))
        ):
            kept[rel] = value
    kept.update(stage.indexed)
    return kept


def _clear_staged_indexes(staging: Path) -> None:
    """Drop index trees and metadata left by an interrupted sync; keep downloaded content."""
    for name in ("metadata", "keys", "bootstrap"):
        shutil.rmtree(staging / name, ignore_errors=True)
    shutil.rmtree(staging / "apt" / "dists", ignore_errors=True)
    for repodata in (staging / "yum").glob("*/repodata"):
        shutil.rmtree(repodata, ignore_errors=True)


def _drop_unwanted_staging(stage: _Stage, wanted: dict[str, list[object]]) -> None:
    """Delete what earlier failed syncs left in staging and this one does not publish
    (content no longer wanted, its partial downloads, temporary files)."""
    trees = tuple(f"{t}/" for t in stage.trees)
    for path in sorted(stage.dir.rglob("*"), reverse=True):  # children before their dirs
        rel = path.relative_to(stage.dir).as_posix()
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty
            continue
        if rel in wanted or rel in stage.indexed or rel.startswith(trees):
            continue
        path.unlink(missing_ok=True)
        log.info("dropped staging leftover %s", rel)


def _have(root: Path, staging: Path, state: MirrorState, entry: FileEntry) -> bool:
    """Whether a verified copy is already published or staged."""
    staged = staging / entry.relpath
    if staged.is_file() and staged.stat().st_size == entry.length:
        return True
    published = root / entry.relpath
    return (
        state.files.get(entry.relpath, [])[:2] == [entry.sha256, entry.length]
        and published.is_file()
        and published.stat().st_size == entry.length
    )


def _fetch_release_keys(
    options: SyncOptions, stage: _Stage, targets: list[TargetInfo]
) -> dict[str, Path]:
    """The release's public keys (TUF targets keys/<name>), checked against the signed targets
    before any apt/yum index is read: where each verified copy is, by file name. A copy
    already published is reused; a new one is fetched and staged as content."""
    found: dict[str, Path] = {}
    for target in targets:
        if target.path not in KEY_TARGETS:
            continue
        entry = target_entry(target)
        staged, published = stage.dir / entry.relpath, options.root / entry.relpath
        for copy in (staged, published):
            if copy.is_file() and file_sha256(copy) == entry.sha256:
                found[target.filename] = copy
                break
        else:
            staged.parent.mkdir(parents=True, exist_ok=True)
            part = staged.with_name(staged.name + ".part")
            part.write_bytes(_fetch_verified(options.source, entry))
            os.replace(part, staged)  # scratch: made durable with the rest before publish
            stage.fetched.append(entry)
            found[target.filename] = staged
    return found


def _choose_keyring(options: SyncOptions, release_keys: dict[str, Path]) -> Path | None:
    """The OpenPGP keyring indexes must be signed with: --keyring (an override), else the
    release's keyring as the signed TUF target keys/archive-keyring.gpg (so a rotation
    reaches the mirror through the pinned root), else the one an earlier sync pinned."""
    if options.keyring is not None:
        if not options.keyring.is_file():
            raise ConfigError(f"keyring {options.keyring} not found", hint="check --keyring")
        return options.keyring
    signed = release_keys.get(KEYRING_TARGET.rsplit("/", 1)[1])
    if signed is not None:
        return signed
    pinned = state_dir(options.root) / "keyring.gpg"
    return pinned if pinned.is_file() else None


def _pin_keyring(root: Path, keyring: bytes | None) -> None:
    """After a successful publish: keep the keyring it verified with as .mirror/keyring.gpg
    (what `verify` checks the published indexes with)."""
    pinned = state_dir(root) / "keyring.gpg"
    if keyring is None:
        return
    if not pinned.is_file() or pinned.read_bytes() != keyring:
        atomic_write_bytes(pinned, keyring)
        log.info("pinned the OpenPGP keyring in %s", pinned)


def _require_keyring(keyring: Path | None, what: str) -> Path:
    """The pinned keyring, or a refusal to mirror signed indexes without one."""
    if keyring is None:
        raise VerificationError(
            f"upstream has {what} but no pinned OpenPGP keyring to check it with",
            hint="the upstream publishes no keys/archive-keyring.gpg target: pass --keyring "
            "archive-keyring.gpg (from the release keys), or mirror with --os windows",
        )
    return keyring


def _signed_index(
    source: Source, rel: str, what: str, channel: str, keyring: Path | None
) -> tuple[bytes, Path] | None:
    """A channel's signed index (apt InRelease, yum repomd.xml) and the keyring to check it
    with; None when the upstream has no such tree for the channel."""
    data = _fetch_optional(source, rel)
    if data is None:
        log.info("upstream has no %s (channel %s)", rel, channel)
        return None
    return data, _require_keyring(keyring, what)


def _fetch_optional(source: Source, rel: str, limit: int = MAX_METADATA) -> bytes | None:
    """A small upstream file, or None if the upstream does not have it."""
    try:
        return source.fetch_bytes(rel, limit)
    except NotFoundError:
        return None


def _fetch_verified(source: Source, entry: FileEntry) -> bytes:
    """A small file fetched whole and checked against the hash an index lists for it."""
    data = source.fetch_bytes(entry.relpath, entry.length)
    if len(data) != entry.length or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise VerificationError(
            f"{entry.relpath} does not match the hash its signed index lists",
            hint="the upstream tree is inconsistent or tampered with; retry later or check --upstream",
        )
    return data


def _stage_apt(
    options: SyncOptions,
    stage: _Stage,
    channel: str,
    keyring: Path | None,
    expires: dict[str, str],
    now: dt.datetime,
) -> None:
    """Verify one channel's apt tree and stage dists/<channel>; add its .debs to the content."""
    base = f"apt/dists/{channel}"
    found = _signed_index(options.source, f"{base}/InRelease", "an apt tree", channel, keyring)
    if found is None:
        return
    inrelease, keys = found
    text = verify_clearsigned(inrelease, keys, f"{base}/InRelease").decode("utf-8")
    release = apt.parse_release(text)
    apt.check_release_fresh(release, channel, now)
    if release.valid_until is not None:
        expires[f"apt:{channel}"] = release.valid_until.astimezone(dt.timezone.utc).isoformat()
    stage.write(f"{base}/InRelease", inrelease)
    plain = _fetch_optional(options.source, f"{base}/Release")
    detached = _fetch_optional(options.source, f"{base}/Release.gpg")
    if plain is not None and detached is not None:
        verify_detached(plain, detached, keys, f"{base}/Release")
        if apt.parse_release(plain.decode("utf-8")).sha256 != release.sha256:
            raise VerificationError(f"{base}/Release and InRelease disagree")
        stage.write(f"{base}/Release", plain)
        stage.write(f"{base}/Release.gpg", detached)
    archs = (
        [DEB_ARCH.get(a, a) for a in options.filters.archs] + ["all"]
        if options.filters.archs
        else None
    )
    packages: list[apt.DebPackage] = []
    for entry in apt.index_entries(release, channel, archs):
        data = _fetch_verified(options.source, entry)
        stage.write(entry.relpath, data)
        inner = entry.relpath[len(base) + 1 :]
        for by_hash in apt.by_hash_paths(release, inner, data):
            stage.write(f"{base}/{by_hash}", data)
        if entry.relpath.endswith(("/Packages", "/Packages.gz")):
            packages.extend(apt.parse_packages(apt.decode_packages(entry.relpath, data)))
    chosen = [p for p in packages if options.filters.wants_arch(p.arch)]
    chosen = keep_newest(chosen, lambda p: p.name, lambda p: p.version, options.filters.keep)
    stage.content.extend(apt.pool_entry(p) for p in chosen)
    _carry_by_hash(options.root / base, stage.dir / base)
    if "apt/dists" not in stage.trees:
        stage.trees.append("apt/dists")


def _carry_by_hash(published: Path, staged: Path) -> None:
    """Keep the by-hash files the previous Release names (only those: no growth over syncs),
    so a client holding the old InRelease still finds its indexes after the swap."""
    release_file = published / "Release"
    if not release_file.is_file():
        return
    previous = apt.parse_release(release_file.read_text(encoding="utf-8"))
    for section, paths in previous.hashes.items():
        for path, digest in paths.items():
            rel = f"{posixpath.dirname(path)}/by-hash/{section}/{digest}"
            old, new = published / rel, staged / rel
            if old.is_file() and not new.exists():
                new.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(old, new)


def _stage_yum(options: SyncOptions, stage: _Stage, channel: str, keyring: Path | None) -> None:
    """Verify one channel's yum tree and stage its repodata/; add its rpms to the content."""
    prefix = f"yum/{channel}"
    found = _signed_index(
        options.source, f"{prefix}/repodata/repomd.xml", "a yum tree", channel, keyring
    )
    if found is None:
        return
    repomd, keys = found
    signature = _fetch_optional(options.source, f"{prefix}/repodata/repomd.xml.asc")
    if signature is None:
        raise VerificationError(f"{prefix}/repodata/repomd.xml is not signed (no repomd.xml.asc)")
    verify_detached(repomd, signature, keys, f"{prefix}/repodata/repomd.xml")
    stage.write(f"{prefix}/repodata/repomd.xml", repomd)
    stage.write(f"{prefix}/repodata/repomd.xml.asc", signature)
    entries = yum.parse_repomd(repomd, prefix)
    primary = yum.primary_entry(entries)
    for entry in entries:
        data = _fetch_verified(options.source, entry)
        stage.write(entry.relpath, data)
        if entry == primary:
            packages = yum.parse_primary(yum.decompress(entry.relpath, data))
    chosen = [p for p in packages if options.filters.wants_arch(p.arch)]
    chosen = keep_newest(chosen, lambda p: p.name, lambda p: p.version, options.filters.keep)
    stage.content.extend(yum.rpm_entry(p, prefix) for p in chosen)
    stage.trees.append(f"{prefix}/repodata")


def _stage_metadata(
    options: SyncOptions,
    stage: _Stage,
    fetcher: TufTransport,
    initial_root: bytes,
    md: dict[str, bytes],
    keyring: Path | None,
    release_keys: dict[str, Path],
) -> None:
    """Stage keys/, bootstrap/ and TUF metadata in publish order, timestamp.json last."""
    for name, copy in release_keys.items():  # verified through TUF: published as they are
        _stage_meta(stage, f"keys/{name}", copy.read_bytes())
    if keyring is not None:
        pinned = set(keyring_fingerprints(keyring))
        for name in KEY_FILES:
            if name in release_keys:
                continue
            data = _fetch_optional(options.source, f"keys/{name}")
            if data is None:
                continue
            tmp = stage.dir / ".key-check"
            tmp.write_bytes(data)
            if set(keyring_fingerprints(tmp)) != pinned:
                raise VerificationError(
                    f"upstream keys/{name} is not the pinned key",
                    hint="the upstream's published key differs from --keyring; check both",
                )
            tmp.unlink()
            _stage_meta(stage, f"keys/{name}", data)
        for name, text in render_bootstraps(
            options.public_url, sorted(pinned)[0] if pinned else "", _bootstrap_channel(options)
        ).items():
            _stage_meta(stage, f"bootstrap/{name}", text.encode("utf-8"))
    roots = {Metadata[Root].from_bytes(initial_root).signed.version: initial_root}
    for rel, data in fetcher.fetched.items():
        if rel.startswith("metadata/") and rel.endswith(".root.json"):
            roots[Metadata[Root].from_bytes(data).signed.version] = data
    roots.update(_older_roots(options, roots))
    for version in sorted(roots):
        if not (options.root / f"metadata/{version}.root.json").exists() or version == max(roots):
            _stage_meta(stage, f"metadata/{version}.root.json", roots[version])
    _stage_meta(stage, "metadata/root.json", md["root"])
    targets_version = Metadata[Targets].from_bytes(md["targets"]).signed.version
    snapshot_version = Metadata[Snapshot].from_bytes(md["snapshot"]).signed.version
    _stage_meta(stage, f"metadata/{targets_version}.targets.json", md["targets"])
    _stage_meta(stage, f"metadata/{snapshot_version}.snapshot.json", md["snapshot"])
    _stage_meta(stage, "metadata/timestamp.json", md["timestamp"])


def _older_roots(options: SyncOptions, roots: dict[int, bytes]) -> dict[int, bytes]:
    """Roots older than our anchor that the mirror lacks, for clients with older anchors.

    Walking down from the trusted root: root N-1 is accepted only if its keys signed root N.
    """
    found: dict[int, bytes] = {}
    version = min(roots)
    newer = Metadata[Root].from_bytes(roots[version])
    while version > 1 and not (options.root / f"metadata/{version - 1}.root.json").exists():
        data = _fetch_optional(options.source, f"metadata/{version - 1}.root.json")
        if data is None:
            log.warning(
                "upstream lacks metadata/%d.root.json; older clients cannot chain", version - 1
            )
            break
        try:
            older = Metadata[Root].from_bytes(data)
            if older.signed.version != version - 1:
                raise ValueError(f"it claims version {older.signed.version}")
            older.verify_delegate(Root.type, newer)
        except Exception as exc:
            raise VerificationError(
                f"upstream metadata/{version - 1}.root.json does not precede the trusted root: {exc}",
                hint="the upstream's root history is tampered with; check --upstream",
            ) from exc
        found[version - 1] = data
        newer, version = older, version - 1
    return found


def _stage_meta(stage: _Stage, rel: str, data: bytes) -> None:
    """Stage a metadata-group file; publish order is the order of these calls."""
    stage.write(rel, data)
    stage.metadata.append(rel)


def _bootstrap_channel(options: SyncOptions) -> str:
    """The channel the bootstrap scripts install from."""
    return options.filters.channels[0] if options.filters.channels else "stable"


def check_space(directory: Path, entries: Iterable[FileEntry], staging: Path) -> None:
    """Refuse to start downloads that would not fit on the disk."""
    needed = 0
    for entry in entries:
        part = staging / (entry.relpath + ".part")
        needed += entry.length - (part.stat().st_size if part.exists() else 0)
    free = shutil.disk_usage(directory).free
    if needed + SPACE_MARGIN > free:
        raise NoSpaceError(
            f"the sync needs {needed} bytes but only {free} are free on {directory}",
            hint="free disk space, or mirror less (--channel, --os, --arch, --keep)",
        )


class Downloads:
    """Verified downloads into staging on a thread pool: submit in batches, wait once.

    The same content under several paths (an artifact as a TUF target, in apt's pool and in
    yum's Packages/) crosses the network once: the later paths are hard links to the first
    verified download (same sha256 and length), made when it lands.
    Leaving the block early (an index failed verification) cancels what has not started."""

    def __init__(
        self, source: Source, staging: Path, workers: int, progress: bool | None = False
    ) -> None:
        self.source = source
        self.staging = staging
        self.bar = SyncProgress(progress)
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self.futures: list[Future[None]] = []
        self.submitted: dict[str, FileEntry] = {}
        self.first: dict[tuple[str, int], tuple[FileEntry, Future[None]]] = {}  # by content
        self.copied: set[str] = set()  # paths copied from another path's download

    @property
    def bytes(self) -> int:
        """Bytes downloaded (or to be), each content once."""
        return sum(e.length for e in self.submitted.values() if e.relpath not in self.copied)

    def __enter__(self) -> Downloads:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        # Interrupted (Ctrl-C, SIGTERM): do not wait for transfers in flight, which a later
        # sync resumes from their .part files; otherwise let the started ones finish.
        self.pool.shutdown(
            wait=kind is None or not issubclass(kind, KeyboardInterrupt), cancel_futures=True
        )
        self.bar.close()

    def submit(self, entries: list[FileEntry]) -> None:
        """Start downloading the entries not yet submitted, after a free-space check."""
        new = list({e.relpath: e for e in entries if e.relpath not in self.submitted}.values())
        fresh = {(e.sha256, e.length): e for e in new if (e.sha256, e.length) not in self.first}
        check_space(self.staging, list(fresh.values()), self.staging)
        self.bar.add(len(new), sum(e.length for e in new))
        for entry in new:
            self.submitted[entry.relpath] = entry
            key = (entry.sha256, entry.length)
            if key in self.first:
                self.copied.add(entry.relpath)
                self.futures.append(self.pool.submit(self._copy, *self.first[key], entry))
            else:
                future = self.pool.submit(self._fetch, entry)
                self.first[key] = (entry, future)
                self.futures.append(future)

    def _fetch(self, entry: FileEntry) -> None:
        dest = self.staging / entry.relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.source.download(
            entry.relpath, dest, expected_length=entry.length, expected_sha256=entry.sha256
        )
        self.bar.finished(entry.length)

    def _copy(self, first: FileEntry, landed: Future[None], entry: FileEntry) -> None:
        """Stage `entry` from the verified download of `first` (same sha256 and length).

        `landed` was submitted earlier to this FIFO pool, so it is running or done: no deadlock."""
        landed.result()
        dest = self.staging / entry.relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        link_verified(self.staging / first.relpath, dest)
        self.bar.finished(entry.length)

    def wait(self) -> None:
        """Wait for every download; the first failure cancels the rest and is raised."""
        done, pending = wait(self.futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        # a copy whose source was cancelled ends in CancelledError: report real failures first
        for future in sorted(done, key=_cancelled_last):
            if future.cancelled() or (exc := future.exception()) is None:
                continue
            if isinstance(exc, VerificationError):
                raise VerificationError(
                    f"an upstream file failed verification: {exc.message}",
                    hint="the upstream is tampered with or inconsistent; nothing was published",
                ) from exc
            raise exc


def _cancelled_last(future: Future[None]) -> bool:
    """Sort key: futures cancelled, or failed only because their source was, come last."""
    return future.cancelled() or isinstance(future.exception(), CancelledError)


def link_verified(source: Path, dest: Path) -> None:
    """`dest` as a hard link to `source` (a copy where links are not possible), replacing it.

    Content is immutable and verified, so one inode under several paths costs no second write
    (and no second flush at the syncfs); prune, export (tar hard-link members, unpacked by
    common/extract.py) and S3 treat the paths as plain files."""
    temp = dest.with_name(dest.name + ".copy")
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:
        shutil.copyfile(source, temp)
    os.replace(temp, dest)
