"""assist-mirror sync against a real pkgbuild repository over loopback, and the attacks it refuses."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from mirror_testlib import tree_hash
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Timestamp

from common.errors import (
    DownloadError,
    ExpiredMetadataError,
    LockedError,
    NotFoundError,
    VerificationError,
)
from devkit.release import Release, make_deb
from mirror.check import mirror_status, verify_tree
from mirror.options import SyncOptions
from mirror.plan import Filters
from mirror.source import HttpSource
from mirror.state import load_state, locked, save_state
from mirror.sync import sync


def options(origin: Release, url: str, root: Path, **kwargs: object) -> SyncOptions:
    return SyncOptions(
        root=root,
        source=HttpSource(url, retries=1, backoff=0.0, progress=False),
        trust_root=origin.trust_root,
        keyring=origin.keyring,
        region="cn-hangzhou",
        public_url="http://127.0.0.1:1/assist/",
        **kwargs,  # type: ignore[arg-type]
    )


def test_sync_mirrors_every_verified_file(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    report = sync(options(origin, server.url, root))
    assert report.changed and report.fetched_files == report.total_files > 0
    for rel in (
        "metadata/timestamp.json",
        "metadata/root.json",
        "metadata/1.root.json",
        "apt/dists/stable/InRelease",
        "yum/stable/repodata/repomd.xml",
        "keys/archive-keyring.gpg",
    ):
        assert (root / rel).is_file(), rel
    upstream_ts = (origin.repo / "metadata" / "timestamp.json").read_bytes()
    assert (root / "metadata" / "timestamp.json").read_bytes() == upstream_ts
    # every target and every package file is byte-identical to the origin's
    for path in (origin.repo / "targets").rglob("*"):
        if path.is_file():
            rel = path.relative_to(origin.repo)
            assert (root / rel).read_bytes() == path.read_bytes()
    debs = sorted(p.name for p in (root / "apt" / "pool").rglob("*.deb"))
    assert debs == ["demo_1.0_amd64.deb", "demo_2.0_amd64.deb", "tool_0.1_amd64.deb"]
    assert sorted(p.name for p in (root / "yum" / "stable" / "Packages").glob("*.rpm")) == [
        "demo-1.0-1.x86_64.rpm",
        "demo-2.0-1.x86_64.rpm",
    ]
    assert verify_tree(root) == []
    status = mirror_status(root)
    assert status["packages"]["demo"] == ["1.0", "2.0"]
    assert status["versions"]["timestamp"] == Metadata.from_bytes(upstream_ts).signed.version
    assert not status["warnings"]
    assert not list((root / ".mirror" / "staging").rglob("*.part"))


def test_noop_sync_costs_one_request(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    sync(options(origin, server.url, root))
    before = tree_hash(root)
    server.requests.clear()
    report = sync(options(origin, server.url, root))
    assert not report.changed
    assert server.requests == ["/metadata/timestamp.json"]
    assert tree_hash(root) == before


def test_incremental_sync_fetches_only_new_files_each_content_once(
    upstream, tmp_path: Path
) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    sync(options(origin, server.url, root))
    deb = make_deb(tmp_path, "demo", "3.0")
    origin.publish(deb)
    server.requests.clear()
    report = sync(options(origin, server.url, root))
    content = [
        r
        for r in server.requests
        if r.startswith(("/targets/", "/apt/pool/", "/yum/stable/Packages/"))
    ]
    # the new deb is a TUF target and in apt's pool: it crosses the wire once, as the target
    assert len(content) == 1 and content[0].endswith(".demo_3.0_amd64.deb"), content
    assert report.fetched_files == 2 and report.fetched_bytes == deb.stat().st_size
    pool = root / "apt/pool/main/d/demo/demo_3.0_amd64.deb"
    target = root / content[0].lstrip("/")
    assert pool.read_bytes() == target.read_bytes() == deb.read_bytes()
    assert pool.stat().st_ino == target.stat().st_ino  # one copy on disk, one flush
    assert verify_tree(root) == []
    assert not list((root / ".mirror" / "staging").rglob("*.copy"))


def test_filters_and_keep_select_what_is_mirrored(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    sync(options(origin, server.url, root, filters=Filters(keep=1, oses=("linux",))))
    targets = sorted(p.name.split(".", 1)[1] for p in (root / "targets").rglob("*") if p.is_file())
    assert targets == [
        "RPM-GPG-KEY-assist",  # the release keys: always mirrored, whatever the filters
        "archive-keyring.gpg",
        "authenticode.crt",
        "demo-2.0-1.x86_64.rpm",
        "demo-2.0-linux-x86_64.tar.gz",
        "demo_2.0_amd64.deb",
        "tool_0.1_amd64.deb",
    ]
    assert not (root / "apt/pool/main/d/demo/demo_1.0_amd64.deb").exists()
    assert (root / "apt/pool/main/d/demo/demo_2.0_amd64.deb").exists()
    assert verify_tree(root) == []
    # changing the filters is noticed: the next sync is a full one and drops nothing it needs
    server.requests.clear()
    report = sync(options(origin, server.url, root, filters=Filters()))
    assert report.changed and report.fetched_files == 12 - 7  # what keep=1 had left out
    assert (root / "apt/pool/main/d/demo/demo_1.0_amd64.deb").exists()


def _sync_then_tamper(upstream, tmp_path: Path):
    origin, server = upstream
    root = tmp_path / "mirror"
    sync(options(origin, server.url, root))
    origin.publish(make_deb(tmp_path, "demo", "3.0"))
    return origin, server, root, tree_hash(root), load_state(root)


def _assert_untouched(root: Path, before: str, state_before) -> None:
    assert tree_hash(root) == before
    assert load_state(root).timestamp_version == state_before.timestamp_version
    assert verify_tree(root) == []


def _tamper_artifact(origin: Release) -> None:
    target = next((origin.repo / "targets" / "demo" / "3.0").glob("*.deb"))
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))


def _tamper_pool_file_and_drop_its_target(origin: Release) -> None:
    deb = origin.repo / "apt/pool/main/d/demo/demo_3.0_amd64.deb"
    data = deb.read_bytes()
    deb.unlink()
    deb.write_bytes(data[:-1] + b"X")
    # the signed target with the same content is gone: the pool copy must be fetched itself
    for target in (origin.repo / "targets" / "demo" / "3.0").glob("*.deb"):
        target.unlink()


def _tamper_tuf_timestamp(origin: Release) -> None:
    path = origin.repo / "metadata" / "timestamp.json"
    md = Metadata[Timestamp].from_bytes(path.read_bytes())
    md.signed.version += 1  # changed content, old signature
    path.write_bytes(md.to_bytes())


def _tamper_apt_inrelease(origin: Release) -> None:
    inrelease = origin.repo / "apt/dists/stable/InRelease"
    text = inrelease.read_text().replace("Aliyun Assist", "Evil Assist", 1)
    inrelease.write_text(text)


def _tamper_yum_repomd(origin: Release) -> None:
    repomd = origin.repo / "yum/stable/repodata/repomd.xml"
    repomd.write_bytes(repomd.read_bytes().replace(b"<revision>", b"<revision>1", 1))


@pytest.mark.parametrize(
    "tamper, error, match",
    [
        pytest.param(
            _tamper_artifact, VerificationError, "failed verification|does not match", id="artifact"
        ),
        pytest.param(
            _tamper_pool_file_and_drop_its_target,
            (VerificationError, NotFoundError),
            None,
            id="pool-file-without-its-target",
        ),
        pytest.param(
            _tamper_tuf_timestamp, VerificationError, "failed verification", id="tuf-signature"
        ),
        pytest.param(
            _tamper_apt_inrelease, VerificationError, "bad OpenPGP signature", id="apt-signature"
        ),
        pytest.param(
            _tamper_yum_repomd, VerificationError, "bad OpenPGP signature", id="yum-signature"
        ),
    ],
)
def test_tampered_upstream_is_refused_and_mirror_unchanged(
    upstream, tmp_path: Path, tamper: Callable[[Release], None], error: Any, match: str | None
) -> None:
    origin, server, root, before, state = _sync_then_tamper(upstream, tmp_path)
    tamper(origin)
    with pytest.raises(error, match=match):
        sync(options(origin, server.url, root))
    _assert_untouched(root, before, state)


def test_tampered_pool_copy_of_a_target_is_never_served(upstream, tmp_path: Path) -> None:
    origin, server, root, _before, _state = _sync_then_tamper(upstream, tmp_path)
    pool = "apt/pool/main/d/demo/demo_3.0_amd64.deb"
    good = (origin.repo / pool).read_bytes()
    (origin.repo / pool).unlink()  # the origin may hard-link it to the target: tamper a copy
    (origin.repo / pool).write_bytes(good[:-1] + b"X")
    server.requests.clear()
    sync(options(origin, server.url, root))
    # the pool file is the verified target's bytes (same signed sha256), never the origin's copy
    assert f"/{pool}" not in server.requests
    assert (root / pool).read_bytes() == good
    assert verify_tree(root) == []


def _resign_timestamp(origin: Release, md: Metadata[Timestamp]) -> bytes:
    pem = (origin.keys / "tuf" / "timestamp-1.pem").read_bytes()
    md.signatures.clear()
    md.sign(CryptoSigner(load_pem_private_key(pem, None)))
    return md.to_bytes()


def test_rolled_back_metadata_is_refused(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    old_ts = (origin.repo / "metadata" / "timestamp.json").read_bytes()
    origin.publish(make_deb(tmp_path, "demo", "3.0"))
    sync(options(origin, server.url, root))
    before, state = tree_hash(root), load_state(root)
    (origin.repo / "metadata" / "timestamp.json").write_bytes(
        old_ts
    )  # replay an older, validly signed one
    with pytest.raises(VerificationError, match="rolled back"):
        sync(options(origin, server.url, root))
    _assert_untouched(root, before, state)


def test_expired_metadata_is_refused(upstream, tmp_path: Path) -> None:
    origin, server, root, before, state = _sync_then_tamper(upstream, tmp_path)
    path = origin.repo / "metadata" / "timestamp.json"
    md = Metadata[Timestamp].from_bytes(path.read_bytes())
    md.signed.version += 1
    md.signed.expires = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(
        hours=1
    )
    path.write_bytes(_resign_timestamp(origin, md))  # validly signed, but expired
    with pytest.raises(ExpiredMetadataError, match="expired") as info:
        sync(options(origin, server.url, root))
    assert "re-publish" in (info.value.hint or "")
    _assert_untouched(root, before, state)


def test_untrusted_root_is_refused(upstream, tmp_path: Path, release_keys: Path) -> None:
    origin, server = upstream
    other = tmp_path / "other-keys"
    from devkit.release import pkgbuild

    pkgbuild("keygen", "--out", str(other))
    root = tmp_path / "mirror"
    opts = options(origin, server.url, root)
    opts.trust_root = other / "root.json"
    with pytest.raises(VerificationError):
        sync(opts)
    assert not (root / "metadata").exists()


def test_second_sync_is_locked_out(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    with locked(root), pytest.raises(LockedError):
        sync(options(origin, server.url, root))
    assert not (root / "metadata").exists()


def test_interrupted_download_resumes_with_range(upstream, tmp_path: Path) -> None:
    """A transfer cut mid-body (upstream then down) leaves a .part and publishes nothing;
    the next sync continues the .part with Range instead of starting over."""
    origin, server = upstream
    root = tmp_path / "mirror"
    origin.publish(make_deb(tmp_path, "big", "1.0", size=2 << 20))
    state = {"cut": False, "down": True}
    ranges: list[str] = []

    def hook(handler) -> bool:
        if "big_1.0" not in handler.path or not handler.path.startswith("/targets/"):
            return False
        if "Range" in handler.headers:
            ranges.append(handler.headers["Range"])
        if not state["cut"]:
            state["cut"] = True
            data = (origin.repo / handler.path.lstrip("/")).read_bytes()
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return True
        if state["down"]:
            handler.send_error(503)
            return True
        return False

    server.hook = hook
    with pytest.raises(DownloadError):
        sync(options(origin, server.url, root, workers=1))
    assert not (root / "metadata").exists()
    parts = list((root / ".mirror" / "staging").rglob("*big_1.0*.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < (2 << 20)
    kept = parts[0].stat().st_size
    state["down"] = False
    ranges.clear()
    sync(options(origin, server.url, root))
    assert ranges == [f"bytes={kept}-"]
    assert verify_tree(root) == []


def test_sync_with_only_the_trust_root_verifies_apt_and_yum_through_tuf(
    upstream, tmp_path: Path
) -> None:
    """The one trust anchor: root.json alone (nothing beside it) syncs TUF + apt + yum; the
    OpenPGP keyring comes from the signed target keys/archive-keyring.gpg."""
    origin, server = upstream
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(origin.trust_root, lone / "root.json")
    root = tmp_path / "mirror"
    opts = options(origin, server.url, root)
    opts.trust_root, opts.keyring = lone / "root.json", None
    assert sync(opts).changed
    assert (root / "apt/dists/stable/InRelease").is_file()
    assert (root / "yum/stable/repodata/repomd.xml").is_file()
    for name in ("archive-keyring.gpg", "RPM-GPG-KEY-assist", "authenticode.crt"):
        assert (root / "keys" / name).read_bytes() == (origin.keys / "public" / name).read_bytes()
    assert (root / ".mirror/keyring.gpg").read_bytes() == origin.keyring.read_bytes()
    assert verify_tree(root) == []
    origin.publish(make_deb(tmp_path, "demo", "3.0"))
    opts.trust_root = None  # later syncs: the pinned root only
    assert sync(opts).changed
    assert verify_tree(root) == []


def test_a_keyring_swapped_on_the_origin_is_refused(upstream, tmp_path: Path) -> None:
    """An attacker on the origin replaces the published keyring (and re-signs the apt/yum
    indexes with it): the keyring target no longer matches the signed targets metadata."""
    origin, server = upstream
    other = tmp_path / "other-keys"
    from devkit.release import pkgbuild

    pkgbuild("keygen", "--out", str(other))
    forged = (other / "public" / "archive-keyring.gpg").read_bytes()
    stored = list((origin.repo / "targets" / "keys").glob("*.archive-keyring.gpg"))
    assert len(stored) == 1
    stored[0].write_bytes(forged)
    (origin.repo / "keys" / "archive-keyring.gpg").write_bytes(forged)
    root = tmp_path / "mirror"
    opts = options(origin, server.url, root)
    opts.keyring = None
    with pytest.raises(VerificationError, match="keys/.*archive-keyring.gpg"):
        sync(opts)
    assert not (root / "metadata").exists() and not (root / ".mirror/keyring.gpg").exists()
    # only the plain copy swapped: the mirror publishes the signed bytes, not the plain file
    stored[0].write_bytes(origin.keyring.read_bytes())
    assert sync(opts).changed
    assert (root / "keys/archive-keyring.gpg").read_bytes() == origin.keyring.read_bytes()
    assert verify_tree(root) == []


def test_sync_after_a_publish_was_cut_short_completes_it(upstream, tmp_path: Path) -> None:
    """state.publishing left set (a kill between the first file moved and the state saved):
    the next sync is a full one, yet downloads nothing it already has."""
    origin, server = upstream
    root = tmp_path / "mirror"
    sync(options(origin, server.url, root))
    state = load_state(root)
    state.publishing, state.pending_remove = True, ["targets/demo/0.9/" + "0" * 64 + ".x.deb"]
    leftover = root / state.pending_remove[0]
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"from a version the killed publish was dropping")
    save_state(root, state)
    server.requests.clear()
    report = sync(options(origin, server.url, root))
    assert report.changed and report.fetched_files == 0
    assert not any(
        r.startswith(("/targets/", "/apt/pool/", "/yum/stable/Packages/")) for r in server.requests
    )
    assert not leftover.exists()
    after = load_state(root)
    assert not after.publishing and after.pending_remove == []
    assert verify_tree(root) == []


def test_root_rotation_reaches_clients_with_old_and_new_anchors(origin, tmp_path: Path) -> None:
    """After a root change upstream, the mirror serves the whole root chain: a client pinned to
    1.root.json chains through it, and a mirror started from 2.root.json still publishes 1."""
    from devkit.httpserver import StaticServer
    from devkit.release import pkgbuild

    keys = tmp_path / "keys"
    shutil.copytree(origin.keys, keys, ignore=shutil.ignore_patterns("S.*"))
    repo = Release(tmp_path / "repo", keys, tmp_path)
    shutil.copytree(origin.repo, repo.repo, symlinks=True)
    anchor_v1 = tmp_path / "1.root.json"
    shutil.copy(keys / "root.json", anchor_v1)
    with StaticServer(repo.repo) as server:
        first = tmp_path / "first"
        sync(
            SyncOptions(
                root=first,
                source=HttpSource(server.url, progress=False),
                trust_root=anchor_v1,
                keyring=origin.keyring,
            )
        )
        pkgbuild("rotate-key", "--repo", str(repo.repo), "--keys", str(keys), "--role", "timestamp")
        assert sync(SyncOptions(root=first, source=HttpSource(server.url, progress=False))).changed
        assert (
            Metadata.from_bytes((first / "metadata/2.root.json").read_bytes()).signed.version == 2
        )
        assert (first / "metadata/root.json").read_bytes() == (
            first / "metadata/2.root.json"
        ).read_bytes()
        anchor_v2 = tmp_path / "2.root.json"
        shutil.copy(first / "metadata/2.root.json", anchor_v2)
        fresh = tmp_path / "fresh"
        fresh_options = SyncOptions(
            root=fresh,
            source=HttpSource(server.url, progress=False),
            trust_root=anchor_v2,
            keyring=origin.keyring,
        )
        # a forged 1.root.json upstream (other keys, so it never signed root 2) is refused
        other = tmp_path / "other"
        pkgbuild("keygen", "--out", str(other))
        (repo.repo / "metadata/1.root.json").write_bytes((other / "root.json").read_bytes())
        with pytest.raises(VerificationError, match="does not precede the trusted root"):
            sync(fresh_options)
        assert not (fresh / "metadata").exists()
        (repo.repo / "metadata/1.root.json").write_bytes(anchor_v1.read_bytes())
        sync(fresh_options)
        assert (fresh / "metadata/1.root.json").read_bytes() == anchor_v1.read_bytes()
    with StaticServer(fresh) as mirror_server:
        client = tmp_path / "client"
        report = sync(
            SyncOptions(
                root=client,
                source=HttpSource(mirror_server.url, progress=False),
                trust_root=anchor_v1,
                keyring=origin.keyring,
            )
        )
        assert report.changed and load_state(client).root_version == 2
        assert verify_tree(client) == []


def test_previous_by_hash_indexes_stay_one_generation(upstream, tmp_path: Path) -> None:
    """A client that read the old InRelease just before the swap still gets its Packages by
    hash (no "Hash Sum mismatch"); generations before that are dropped."""
    from mirror import apt

    origin, server = upstream
    root = tmp_path / "mirror"

    def packages_by_hash() -> str:
        release = apt.parse_release((root / "apt/dists/stable/Release").read_text())
        digest = release.sha256["main/binary-amd64/Packages"][0]
        return f"apt/dists/stable/main/binary-amd64/by-hash/SHA256/{digest}"

    sync(options(origin, server.url, root))
    first = packages_by_hash()
    origin.publish(make_deb(tmp_path, "demo", "3.0"))
    sync(options(origin, server.url, root))
    second = packages_by_hash()
    assert second != first and (root / first).is_file() and (root / second).is_file()
    origin.publish(make_deb(tmp_path, "demo", "4.0"))
    sync(options(origin, server.url, root))
    assert (
        not (root / first).exists()
        and (root / second).is_file()
        and (root / packages_by_hash()).is_file()
    )
    assert verify_tree(root) == []


def test_a_wrong_trust_root_pins_nothing_and_a_right_one_then_works(
    upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the root nor the keyring beside a --trust-root that failed verification is
    pinned; once a root is trusted, another --trust-root is ignored with a warning and its
    neighbouring keyring is not taken."""
    origin, server = upstream
    other = tmp_path / "other-keys"
    from devkit.release import pkgbuild

    pkgbuild("keygen", "--out", str(other))  # root.json with public/archive-keyring.gpg beside
    root = tmp_path / "mirror"
    opts = options(origin, server.url, root)
    opts.trust_root, opts.keyring = other / "root.json", None
    with pytest.raises(VerificationError):
        sync(opts)
    assert not (root / ".mirror/keyring.gpg").exists()
    assert not (root / ".mirror/tuf/root.json").exists()
    opts.trust_root = origin.trust_root  # keys/root.json, keyring in keys/public/
    assert sync(opts).changed
    assert verify_tree(root) == []
    assert (root / ".mirror/keyring.gpg").read_bytes() == origin.keyring.read_bytes()
    assert (root / ".mirror/tuf/root.json").read_bytes() == origin.trust_root.read_bytes()
    assert not (root / ".mirror/tuf-new").exists()
    # the trusted root stays; the other --trust-root (and the keyring next to it) is ignored
    origin.publish(make_deb(tmp_path, "demo", "3.0"))
    opts.trust_root = other / "root.json"
    with caplog.at_level("WARNING", logger="mirror.anchor"):
        assert sync(opts).changed
    assert any(
        "differs from the root this mirror already trusts" in r.getMessage()
        and "ignoring it" in r.getMessage()
        for r in caplog.records
    )
    assert (root / ".mirror/keyring.gpg").read_bytes() == origin.keyring.read_bytes()
    assert verify_tree(root) == []


def test_keyring_is_pinned_only_after_a_successful_publish(upstream, tmp_path: Path) -> None:
    origin, server = upstream
    root = tmp_path / "mirror"
    wrong = tmp_path / "wrong-keys"
    from devkit.release import pkgbuild

    pkgbuild("keygen", "--out", str(wrong))
    opts = options(origin, server.url, root)
    opts.keyring = wrong / "public" / "archive-keyring.gpg"
    with pytest.raises(VerificationError):
        sync(opts)
    assert not (root / ".mirror/keyring.gpg").exists()
    opts.keyring = None  # the signed keys/archive-keyring.gpg target, pinned once published
    assert sync(opts).changed
    assert (root / ".mirror/keyring.gpg").read_bytes() == origin.keyring.read_bytes()


def test_sync_options_refuse_zero_workers(upstream, tmp_path: Path) -> None:
    from common.errors import UsageError

    origin, server = upstream
    with pytest.raises(UsageError, match="workers must be at least 1"):
        options(origin, server.url, tmp_path / "mirror", workers=0)


def test_staging_leftovers_are_dropped_but_wanted_partials_resume(upstream, tmp_path: Path) -> None:
    """What failed syncs left in .mirror/staging goes at the next sync, except a partial
    download of a file still wanted, which is continued with Range."""
    origin, server = upstream
    root = tmp_path / "mirror"
    origin.publish(make_deb(tmp_path, "big", "1.0", size=1 << 20))
    target = next((origin.repo / "targets/big/1.0").glob("*.deb"))
    staging = root / ".mirror/staging"
    rel = target.relative_to(origin.repo).as_posix()
    wanted_part = staging / f"{rel}.part"
    wanted_part.parent.mkdir(parents=True)
    wanted_part.write_bytes(target.read_bytes()[:300_000])
    leftovers = [
        staging / "targets/gone/0.9/ab.gone_0.9_amd64.deb.part",
        staging / "targets/gone/0.9/cd.gone_0.9_amd64.deb",
        staging / "apt/pool/main/g/gone/gone_0.9_amd64.deb",
        staging / "yum/stable/Packages/.gone-0.9-1.x86_64.rpm.tmp",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left by a failed sync")
    ranges: list[str] = []

    def hook(handler) -> bool:
        if handler.path.lstrip("/") == rel and "Range" in handler.headers:
            ranges.append(handler.headers["Range"])
        return False

    server.hook = hook
    assert sync(options(origin, server.url, root)).changed
    assert ranges == ["bytes=300000-"]
    assert verify_tree(root) == []
    assert not any(path.exists() for path in leftovers)
    assert not (staging / "targets/gone").exists()
    assert [p for p in staging.rglob("*") if p.is_file()] == []
    # a no-op sync clears what a failed one left, too
    leftovers[0].parent.mkdir(parents=True, exist_ok=True)
    leftovers[0].write_bytes(b"left by a failed sync")
    assert not sync(options(origin, server.url, root)).changed
    assert not leftovers[0].exists()
