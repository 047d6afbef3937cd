"""Release repository: TUF metadata as the real tuf client sees it, and publish/yank/rotate rules.

Every test reads the repository through tuf.ngclient over a loopback StaticServer, trusting only
the KEYDIR's root.json, and checks the files left behind.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_repository_support import (
    build_all,
    build_deb,
    build_rpm,
    build_tarball,
    checked,
    expected_custom,
    tuf_updater,
)
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata

from common.errors import (
    ConfigError,
    LocalStateError,
    NotFoundError,
    ToolError,
    UsageError,
    VerificationError,
)
from devkit.httpserver import StaticServer
from pkgbuild.naming import parse_artifact_filename
from pkgbuild.repository import init_repository, publish_artifacts, rotate_key, yank_version
from pkgbuild.repository.apt import stamp_release

DAY = datetime.timedelta(days=1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path) -> Metadata:  # type: ignore[type-arg]
    return Metadata.from_file(str(path))


def metadata_files(repo: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((repo / "metadata").iterdir())}


def release_valid_until(repo: Path, channel: str) -> datetime.datetime:
    release = (repo / "apt/dists" / channel / "Release").read_text()
    line = next(line for line in release.splitlines() if line.startswith("Valid-Until:"))
    return datetime.datetime.strptime(line.split(": ", 1)[1], "%a, %d %b %Y %H:%M:%S %z")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def published(keydir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One repository with aliyun-assist 1.0.0 in all four formats, served on loopback."""
    base = tmp_path_factory.mktemp("published")
    artifacts = build_all(base / "dist", keydir, "1.0.0")
    repo = base / "repo"
    init_repository(repo, keydir, {})
    paths = publish_artifacts(repo, keydir, list(artifacts.values()))
    with StaticServer(repo) as server:
        yield SimpleNamespace(
            repo=repo, keys=keydir, artifacts=artifacts, paths=paths, url=server.url, base=base
        )


def test_tuf_client_finds_every_artifact_with_length_hash_and_custom_fields(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    updater = tuf_updater(tmp_path, published.keys / "root.json", published.url)
    updater.refresh()
    assert len(published.artifacts) == 4
    for artifact in published.artifacts.values():
        info = parse_artifact_filename(artifact.name)
        target = updater.get_targetinfo(info.target_path)
        assert target is not None, info.target_path
        assert target.length == artifact.stat().st_size
        assert target.hashes == {"sha256": sha256(artifact)}
        assert target.custom == expected_custom(info, artifact)
        downloaded = Path(updater.download_target(target))
        assert downloaded.read_bytes() == artifact.read_bytes()
        stored = published.repo / "targets" / info.package / info.version
        assert (stored / f"{sha256(artifact)}.{artifact.name}").is_file()


def test_repository_layout_has_keys_and_newest_root(published: SimpleNamespace) -> None:
    repo, keys = published.repo, published.keys
    for name in ("archive-keyring.gpg", "RPM-GPG-KEY-assist", "authenticode.crt"):
        assert (repo / "keys" / name).read_bytes() == (keys / "public" / name).read_bytes()
    assert (repo / "metadata/root.json").read_bytes() == (
        repo / "metadata/1.root.json"
    ).read_bytes()
    # keygen's root (default 365 d) is reused as version 1: payloads built before init still match
    assert (repo / "metadata/1.root.json").read_bytes() == (keys / "root.json").read_bytes()
    assert load(repo / "metadata/1.root.json").signed.consistent_snapshot is True


def test_publish_again_changes_no_metadata(published: SimpleNamespace) -> None:
    before = metadata_files(published.repo)
    apt_gen = os.readlink(published.repo / "apt/dists/stable")
    yum_gen = os.readlink(published.repo / "yum/stable/repodata")
    again = publish_artifacts(published.repo, published.keys, list(published.artifacts.values()))
    assert sorted(again) == sorted(published.paths)
    assert metadata_files(published.repo) == before
    assert os.readlink(published.repo / "apt/dists/stable") == apt_gen
    assert os.readlink(published.repo / "yum/stable/repodata") == yum_gen


def test_publish_refuses_other_content_under_a_published_path(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    before = metadata_files(published.repo)
    # same name, same version, different bytes (another build): releases are immutable
    other = build_tarball(tmp_path, "1.0.0")
    with pytest.raises(UsageError, match="already published with different content"):
        publish_artifacts(published.repo, published.keys, [other])
    assert metadata_files(published.repo) == before


def test_publish_refuses_deb_whose_control_contradicts_its_name(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    before = metadata_files(published.repo)
    liar = build_deb(tmp_path, "7.0.0", control_version="6.0.0")
    with pytest.raises(VerificationError, match="version"):
        publish_artifacts(published.repo, published.keys, [liar])
    assert metadata_files(published.repo) == before
    assert not list((published.repo / "targets/aliyun-assist").glob("7.0.0"))


def test_publish_refuses_tarballs_that_are_not_what_their_name_says(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    before = metadata_files(published.repo)
    liar = build_tarball(tmp_path / "liar", "7.1.0", payload_version="7.0.0")
    with pytest.raises(VerificationError, match="version"):
        publish_artifacts(published.repo, published.keys, [liar])
    garbage = tmp_path / "aliyun-assist-7.2.0-linux-x86_64.tar.gz"
    garbage.write_bytes(b"not a tarball")
    with pytest.raises(VerificationError, match="readable"):
        publish_artifacts(published.repo, published.keys, [garbage])
    assert metadata_files(published.repo) == before


def test_publish_refuses_unsigned_and_foreign_signed_rpms(
    published: SimpleNamespace, other_keydir: Path, tmp_path: Path
) -> None:
    before = metadata_files(published.repo)
    unsigned = build_rpm(tmp_path / "u", None, "7.0.1")
    foreign = build_rpm(tmp_path / "f", other_keydir, "7.0.2")
    for rpm in (unsigned, foreign):
        with pytest.raises(VerificationError):
            publish_artifacts(published.repo, published.keys, [rpm])
    assert metadata_files(published.repo) == before


def test_publish_refuses_bad_names_and_channels(published: SimpleNamespace, tmp_path: Path) -> None:
    odd = tmp_path / "aliyun-assist.zip"
    odd.write_bytes(b"x")
    with pytest.raises(UsageError):
        publish_artifacts(published.repo, published.keys, [odd])
    with pytest.raises(UsageError, match="channel"):
        publish_artifacts(published.repo, published.keys, [odd], channel="../etc")
    with pytest.raises(ConfigError, match="not an initialised"):
        publish_artifacts(tmp_path / "nowhere", published.keys, [published.artifacts["tar.gz"]])
    assert not (tmp_path / "nowhere").exists()


def test_init_is_idempotent_and_refuses_other_settings(keydir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {"timestamp": 2 * DAY})
    before = metadata_files(repo)
    init_repository(repo, keydir, {"timestamp": 2 * DAY})
    assert metadata_files(repo) == before
    with pytest.raises(LocalStateError, match="other expiries"):
        init_repository(repo, keydir, {"timestamp": 3 * DAY})
    assert metadata_files(repo) == before


def test_init_finishes_an_interrupted_init_but_never_overwrites_a_used_repository(
    keydir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    (repo / ".pkgbuild.json").unlink()  # as if init died just before its last step
    init_repository(repo, keydir, {})
    assert (repo / ".pkgbuild.json").is_file()
    publish_artifacts(repo, keydir, [build_tarball(tmp_path, "1.0.0")])
    (repo / ".pkgbuild.json").unlink()
    before = metadata_files(repo)
    with pytest.raises(LocalStateError, match="no state file"):
        init_repository(repo, keydir, {})
    assert metadata_files(repo) == before


def test_expiries_chosen_at_init_are_what_metadata_and_release_carry(
    keydir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    chosen = {"timestamp": 2 * DAY, "snapshot": 3 * DAY, "targets": 4 * DAY}
    init_repository(repo, keydir, chosen)
    publish_artifacts(repo, keydir, [build_tarball(tmp_path, "1.0.0")])
    now = utcnow()
    md = repo / "metadata"
    timestamp = load(md / "timestamp.json").signed
    snapshot = load(md / f"{timestamp.snapshot_meta.version}.snapshot.json").signed
    targets = load(md / f"{snapshot.meta['targets.json'].version}.targets.json").signed
    assert targets.version == 2  # the publish made a new version
    for signed, delta in ((timestamp, 2 * DAY), (snapshot, 3 * DAY), (targets, 4 * DAY)):
        assert abs(signed.expires - (now + delta)) < datetime.timedelta(minutes=2)
    assert release_valid_until(repo, "stable") == targets.expires


def test_init_with_another_root_expiry_signs_a_new_root_into_keydir(
    fresh_keys: object, tmp_path: Path
) -> None:
    keys = fresh_keys()  # type: ignore[operator]
    repo = tmp_path / "repo"
    init_repository(repo, keys, {"root": 30 * DAY})
    root = load(repo / "metadata/1.root.json").signed
    assert root.version == 1
    assert abs(root.expires - (utcnow() + 30 * DAY)) < datetime.timedelta(minutes=2)
    assert (keys / "root.json").read_bytes() == (repo / "metadata/1.root.json").read_bytes()


def test_second_channel_merges_into_custom_channels(keydir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    deb = build_deb(tmp_path, "1.0.0")
    publish_artifacts(repo, keydir, [deb])
    publish_artifacts(repo, keydir, [deb], channel="beta")
    with StaticServer(repo) as server:
        updater = tuf_updater(tmp_path / "client", keydir / "root.json", server.url)
        updater.refresh()
        target = updater.get_targetinfo(parse_artifact_filename(deb.name).target_path)
    assert target is not None
    assert target.custom["channels"] == ["beta", "stable"]
    assert (repo / "apt/dists/beta/InRelease").is_file()
    # every channel's Release follows the newest targets expiry
    timestamp = load(repo / "metadata/timestamp.json").signed
    snapshot = load(repo / f"metadata/{timestamp.snapshot_meta.version}.snapshot.json").signed
    targets = load(repo / f"metadata/{snapshot.meta['targets.json'].version}.targets.json").signed
    for channel in ("stable", "beta"):
        assert release_valid_until(repo, channel) == targets.expires
    assert "aliyun-assist" in (repo / "apt/dists/beta/main/binary-amd64/Packages").read_text()


def test_release_dates_come_from_one_clock_reading_and_a_missing_field_is_refused() -> None:
    """apt-ftparchive reads the clock twice; the Release's dates are stamped from one reading."""
    made = b"Origin: x\nDate: Fri, 04 Dec 2026 15:28:48 +0000\nValid-Until: Sat, 01 Jan 2000 00:00:00 +0000\nSHA256:\n"
    date = datetime.datetime(2026, 12, 4, 15, 28, 48, tzinfo=datetime.timezone.utc)
    until = date + datetime.timedelta(days=90)
    stamped = stamp_release(made, date, until).decode()
    assert "Valid-Until: Thu, 04 Mar 2027 15:28:48 +0000\n" in stamped
    assert "Date: Fri, 04 Dec 2026 15:28:48 +0000\n" in stamped
    assert stamped.startswith("Origin: x\n") and stamped.endswith("SHA256:\n")
    with pytest.raises(ToolError, match="Valid-Until"):
        stamp_release(b"Date: x\n", date, until)


def test_yank_drops_version_from_channel_for_tuf(keydir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    old = build_tarball(tmp_path / "a", "1.0.0")
    new = build_tarball(tmp_path / "b", "1.1.0")
    publish_artifacts(repo, keydir, [old, new])
    publish_artifacts(repo, keydir, [new], channel="beta")
    assert yank_version(repo, keydir, "aliyun-assist", "1.1.0") == [
        "aliyun-assist/1.1.0/aliyun-assist-1.1.0-linux-x86_64.tar.gz"
    ]
    with StaticServer(repo) as server:
        updater = tuf_updater(tmp_path / "client", keydir / "root.json", server.url)
        updater.refresh()
        still_beta = updater.get_targetinfo(
            "aliyun-assist/1.1.0/aliyun-assist-1.1.0-linux-x86_64.tar.gz"
        )
        assert still_beta is not None and still_beta.custom["channels"] == ["beta"]
        assert updater.get_targetinfo("aliyun-assist/1.0.0/aliyun-assist-1.0.0-linux-x86_64.tar.gz")
    yank_version(repo, keydir, "aliyun-assist", "1.1.0", channel="beta")
    with StaticServer(repo) as server:
        updater = tuf_updater(tmp_path / "client", keydir / "root.json", server.url)
        updater.refresh()
        assert (
            updater.get_targetinfo("aliyun-assist/1.1.0/aliyun-assist-1.1.0-linux-x86_64.tar.gz")
            is None
        )
    before = metadata_files(repo)
    with pytest.raises(NotFoundError) as caught:
        yank_version(repo, keydir, "aliyun-assist", "9.9.9")
    assert "1.0.0" in (caught.value.hint or "")
    assert metadata_files(repo) == before


def test_thresholds_above_one_are_signed_and_accepted(fresh_keys: object, tmp_path: Path) -> None:
    keys = fresh_keys({"root": 2, "targets": 2})  # type: ignore[operator]
    repo = tmp_path / "repo"
    init_repository(repo, keys, {})
    tarball = build_tarball(tmp_path, "1.0.0")
    publish_artifacts(repo, keys, [tarball])
    md = repo / "metadata"
    assert len(load(md / "1.root.json").signatures) == 2
    assert load(md / "1.root.json").signed.roles["targets"].threshold == 2
    assert len(load(md / "2.targets.json").signatures) == 2
    with StaticServer(repo) as server:
        updater = tuf_updater(tmp_path / "client", keys / "root.json", server.url)
        updater.refresh()
        target = updater.get_targetinfo(parse_artifact_filename(tarball.name).target_path)
        assert target is not None
        assert Path(updater.download_target(target)).read_bytes() == tarball.read_bytes()


def test_rotated_targets_and_root_keys_are_followed_by_a_client_with_the_old_root(
    fresh_keys: object, tmp_path: Path
) -> None:
    keys = fresh_keys({"root": 2})  # type: ignore[operator]
    repo = tmp_path / "repo"
    init_repository(repo, keys, {})
    first = build_tarball(tmp_path, "1.0.0")
    publish_artifacts(repo, keys, [first])
    anchor = tmp_path / "anchor-root.json"
    shutil.copyfile(keys / "root.json", anchor)

    def keyids(role: str) -> set[str]:
        names = json.loads((keys / "keys.json").read_text())["roles"][role]["keys"]
        return {json.loads((keys / f"tuf/{n}.pub.json").read_text())["keyid"] for n in names}

    old_targets, old_root = keyids("targets"), keyids("root")
    assert len(old_root) == 2
    with StaticServer(repo) as server:
        client = tmp_path / "client"
        updater = tuf_updater(client, anchor, server.url)
        updater.refresh()  # the client now trusts the pre-rotation metadata

        rotate_key(repo, keys, "targets")
        new_targets = keyids("targets")
        assert new_targets.isdisjoint(old_targets)
        (old_id,) = old_targets
        assert list((keys / "tuf").glob(f"targets-1.{old_id[:16]}.pem.old"))
        root2 = load(repo / "metadata/2.root.json")
        assert set(root2.signed.roles["targets"].keyids) == new_targets
        assert set(root2.signatures) == old_root

        rotate_key(repo, keys, "root")
        new_root = keyids("root")
        assert len(new_root) == 2 and new_root.isdisjoint(old_root)
        root3 = load(repo / "metadata/3.root.json")
        assert set(root3.signatures) == old_root | new_root  # both thresholds met
        assert set(root3.signed.roles["root"].keyids) == new_root
        assert root3.signed.roles["root"].threshold == 2
        assert (repo / "metadata/root.json").read_bytes() == (
            repo / "metadata/3.root.json"
        ).read_bytes()

        second = build_tarball(tmp_path / "later", "1.1.0")
        publish_artifacts(repo, keys, [second])  # signed with the new keys only

        for workdir in (client, tmp_path / "fresh-client"):  # continuing and from the v1 anchor
            updater = tuf_updater(workdir, anchor, server.url)
            updater.refresh()
            target = updater.get_targetinfo(parse_artifact_filename(second.name).target_path)
            assert target is not None
            assert Path(updater.download_target(target)).read_bytes() == second.read_bytes()
            trusted = load(workdir / "metadata/root.json").signed
            assert trusted.version == 3


def test_tampered_artifact_is_refused_by_the_tuf_client(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(published.repo, repo, symlinks=True)
    tarball = published.artifacts["tar.gz"]
    stored = repo / "targets/aliyun-assist/1.0.0" / f"{sha256(tarball)}.{tarball.name}"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    with StaticServer(repo) as server:
        updater = tuf_updater(tmp_path / "client", published.keys / "root.json", server.url)
        updater.refresh()
        target = updater.get_targetinfo(parse_artifact_filename(tarball.name).target_path)
        assert target is not None
        with pytest.raises(tuf_exceptions.RepositoryError):
            updater.download_target(target)
    assert not list((tmp_path / "client/downloads").iterdir())


def test_tampered_targets_metadata_is_refused_by_the_tuf_client(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(published.repo, repo, symlinks=True)
    version = load(repo / "metadata/timestamp.json").signed.snapshot_meta.version
    targets_version = (
        load(repo / f"metadata/{version}.snapshot.json").signed.meta["targets.json"].version
    )
    path = repo / f"metadata/{targets_version}.targets.json"
    path.write_text(path.read_text().replace('"stable"', '"stablx"'))
    with StaticServer(repo) as server:
        updater = tuf_updater(tmp_path / "client", published.keys / "root.json", server.url)
        with pytest.raises(tuf_exceptions.RepositoryError):
            updater.refresh()


def test_concurrent_publishes_never_show_readers_a_mix(keydir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    published_paths: list[str] = []
    tarballs = []
    for n in range(6):
        tarballs.append(build_tarball(tmp_path / f"v{n}", f"1.{n}.0"))
    debs = [build_deb(tmp_path / f"v{n}", f"1.{n}.0") for n in range(6)]
    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    def read_loop(url: str) -> None:
        nonlocal reads
        n = 0
        while not stop.is_set():
            expected = list(published_paths)  # everything published before this chain started
            try:
                updater = tuf_updater(tmp_path / f"reader{n}", keydir / "root.json", url)
                updater.refresh()
                for path in expected:
                    target = updater.get_targetinfo(path)
                    assert target is not None, f"{path} vanished"
                    updater.download_target(target)
            except Exception as exc:  # any failure is a mix (or a bug) to report
                failures.append(f"{type(exc).__name__}: {exc}")
            n += 1
            reads += 1

    with StaticServer(repo) as server:
        reader = threading.Thread(target=read_loop, args=(server.url,))
        reader.start()
        try:
            # two writers at once for each round: the lock must serialise them
            for n in range(0, 6, 2):
                writers = [
                    threading.Thread(
                        target=publish_artifacts, args=(repo, keydir, [tarballs[i], debs[i]])
                    )
                    for i in (n, n + 1)
                ]
                for writer in writers:
                    writer.start()
                for writer in writers:
                    writer.join()
                for i in (n, n + 1):
                    published_paths.append(parse_artifact_filename(tarballs[i].name).target_path)
        finally:
            stop.set()
            reader.join()
    assert failures == []
    assert reads >= 2
    timestamp = load(repo / "metadata/timestamp.json").signed
    snapshot = load(repo / f"metadata/{timestamp.snapshot_meta.version}.snapshot.json").signed
    targets = load(repo / f"metadata/{snapshot.meta['targets.json'].version}.targets.json").signed
    assert targets.version == 1 + 6  # init, then one version per publish: none lost
    assert len(targets.targets) == 12 + 3  # and the three release keys (keys/*)
    packages = (repo / "apt/dists/stable/main/binary-amd64/Packages").read_text()
    assert packages.count("Package: aliyun-assist") == 6


@pytest.mark.parametrize("role", ["snapshot", "timestamp"])
def test_rotated_snapshot_or_timestamp_key_is_followed_by_the_client(
    role: str, fresh_keys: object, tmp_path: Path
) -> None:
    keys = fresh_keys()  # type: ignore[operator]
    repo = tmp_path / "repo"
    init_repository(repo, keys, {})
    tarball = build_tarball(tmp_path, "1.0.0")
    publish_artifacts(repo, keys, [tarball])
    with StaticServer(repo) as server:
        updater = tuf_updater(tmp_path / "client", keys / "root.json", server.url)
        updater.refresh()
        rotate_key(repo, keys, role)
        new_keyid = json.loads((keys / f"tuf/{role}-1.pub.json").read_text())["keyid"]
        timestamp = load(repo / "metadata/timestamp.json")
        snapshot = load(repo / f"metadata/{timestamp.signed.snapshot_meta.version}.snapshot.json")
        signed = timestamp if role == "timestamp" else snapshot
        assert set(signed.signatures) == {new_keyid}
        updater = tuf_updater(tmp_path / "client", keys / "root.json", server.url)
        updater.refresh()
        target = updater.get_targetinfo(parse_artifact_filename(tarball.name).target_path)
        assert target is not None
        assert load(tmp_path / "client/metadata/root.json").signed.version == 2


def test_rotate_refuses_unknown_roles_and_foreign_key_directories(
    keydir: Path, other_keydir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    before = metadata_files(repo)
    with pytest.raises(UsageError, match="unknown TUF role"):
        rotate_key(repo, keydir, "mirror")
    with pytest.raises(ConfigError, match="current keys"):
        rotate_key(repo, other_keydir, "targets")
    with pytest.raises(ConfigError, match="current keys"):
        publish_artifacts(repo, other_keydir, [build_tarball(tmp_path, "1.0.0")])
    with pytest.raises(ConfigError, match="current keys"):
        yank_version(repo, other_keydir, "aliyun-assist", "1.0.0")
    assert metadata_files(repo) == before
    assert not list((other_keydir / "tuf").glob("*.new"))


def test_publish_rebuilds_native_trees_left_out_of_date(keydir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    deb = build_deb(tmp_path, "1.0.0")
    publish_artifacts(repo, keydir, [deb])
    # as if a publish died after its metadata but before its apt tree was swapped in
    current = repo / "apt/dists" / os.readlink(repo / "apt/dists/stable")
    (current / ".manifest").write_text("stale\n")
    before = metadata_files(repo)
    publish_artifacts(repo, keydir, [deb])
    assert metadata_files(repo) == before  # TUF unchanged
    assert repo / "apt/dists" / os.readlink(repo / "apt/dists/stable") != current
    assert (
        "aliyun-assist_1.0.0_amd64.deb"
        in (repo / "apt/dists/stable/main/binary-amd64/Packages").read_text()
    )


def test_bootstrap_templates_get_the_repository_fingerprints(
    published: SimpleNamespace, tmp_path: Path
) -> None:
    from pkgbuild.keys import gpg_fingerprint
    from pkgbuild.repository.public import write_bootstrap

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "bootstrap.sh").write_text("KEY=@KEY_FINGERPRINT@\nMIRROR=@MIRROR_URL@\n")
    repo = tmp_path / "repo"
    shutil.copytree(published.repo, repo, symlinks=True)
    shutil.rmtree(repo / "bootstrap", ignore_errors=True)
    written = write_bootstrap(repo, published.keys, templates)
    assert written == [repo / "bootstrap/bootstrap.sh"]
    text = (repo / "bootstrap/bootstrap.sh").read_text()
    assert text == f"KEY={gpg_fingerprint(published.keys)}\nMIRROR=@MIRROR_URL@\n"
    assert os.access(repo / "bootstrap/bootstrap.sh", os.X_OK)
    assert not (repo / "bootstrap/bootstrap.ps1").exists()  # no template, nothing written


# A timestamp lifetime short enough to wait out half of. Between the first publish signing it and
# the second publish finding it fresh, the first one still signs its apt and yum indexes; with
# expiry in whole seconds, 4 s left as little as 2 s for that: tight on a loaded CI machine.
SHORT_TIMESTAMP = datetime.timedelta(seconds=8)


def test_republishing_re_signs_only_a_timestamp_past_half_its_lifetime(
    keydir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {"timestamp": SHORT_TIMESTAMP})
    tarball = build_tarball(tmp_path, "1.0.0")
    publish_artifacts(repo, keydir, [tarball])
    before = metadata_files(repo)
    publish_artifacts(repo, keydir, [tarball])
    assert metadata_files(repo) == before  # fresh: nothing to do
    expires = Metadata.from_bytes(before["timestamp.json"]).signed.expires
    time.sleep(max(0.0, (expires - utcnow()).total_seconds() - 1.0))  # < half of 8 s left
    publish_artifacts(repo, keydir, [tarball])
    after = metadata_files(repo)
    assert set(after) == set(before)  # no new snapshot or targets version
    assert {k: v for k, v in after.items() if k != "timestamp.json"} == {
        k: v for k, v in before.items() if k != "timestamp.json"
    }
    old, new = (Metadata.from_bytes(m["timestamp.json"]).signed for m in (before, after))
    assert new.version == old.version + 1 and new.expires > old.expires
    with StaticServer(repo) as server:
        updater = tuf_updater(tmp_path / "client", keydir / "root.json", server.url)
        updater.refresh()
        assert updater.get_targetinfo(parse_artifact_filename(tarball.name).target_path)


def test_publish_with_no_artifacts_only_refreshes_an_aging_timestamp(
    keydir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {"timestamp": SHORT_TIMESTAMP})
    publish_artifacts(repo, keydir, [build_tarball(tmp_path, "1.0.0")])
    before = metadata_files(repo)
    assert publish_artifacts(repo, keydir, []) == []
    assert metadata_files(repo) == before  # fresh: nothing to re-sign
    expires = Metadata.from_bytes(before["timestamp.json"]).signed.expires
    time.sleep(max(0.0, (expires - utcnow()).total_seconds() - 1.0))  # < half of 8 s left
    assert publish_artifacts(repo, keydir, []) == []
    old, new = (
        Metadata.from_bytes(m["timestamp.json"]).signed for m in (before, metadata_files(repo))
    )
    assert new.version == old.version + 1 and new.expires > old.expires


def test_root_past_half_its_lifetime_is_re_signed_and_followed_by_the_client(
    fresh_keys: object, tmp_path: Path
) -> None:
    keys = fresh_keys()  # type: ignore[operator]
    repo = tmp_path / "repo"
    init_repository(repo, keys, {"root": datetime.timedelta(seconds=6)})
    anchor = tmp_path / "anchor.json"
    shutil.copyfile(keys / "root.json", anchor)  # init signed a 6 s root into KEYDIR
    tarball = build_tarball(tmp_path, "1.0.0")
    expires = load(repo / "metadata/1.root.json").signed.expires
    time.sleep(max(0.0, (expires - utcnow()).total_seconds() - 2.0))  # < half of 6 s left
    publish_artifacts(repo, keys, [tarball])
    root2 = load(repo / "metadata/2.root.json").signed
    assert root2.expires > expires
    assert root2.roles == load(repo / "metadata/1.root.json").signed.roles  # same keys
    time.sleep(max(0.0, (expires - utcnow()).total_seconds() + 0.5))  # the anchor has expired
    with StaticServer(repo) as server:
        updater = tuf_updater(tmp_path / "client", anchor, server.url)
        updater.refresh()
        assert updater.get_targetinfo(parse_artifact_filename(tarball.name).target_path)
    assert load(tmp_path / "client/metadata/root.json").signed.version == 2


def test_yanked_files_leave_the_native_trees_once_no_kept_generation_lists_them(
    keydir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    for version in ("1.0.0", "1.1.0"):
        publish_artifacts(
            repo,
            keydir,
            [
                build_deb(tmp_path / version, version),
                build_rpm(tmp_path / version, keydir, version),
            ],
        )
    pool_deb = repo / "apt/pool/main/a/aliyun-assist/aliyun-assist_1.1.0_amd64.deb"
    yum_rpm = repo / "yum/stable/Packages/aliyun-assist-1.1.0-1.x86_64.rpm"
    yank_version(repo, keydir, "aliyun-assist", "1.1.0")
    assert "1.1.0" not in (repo / "apt/dists/stable/main/binary-amd64/Packages").read_text()
    assert pool_deb.is_file() and yum_rpm.is_file()  # the previous generation still lists them
    newer = [build_deb(tmp_path / "1.2.0", "1.2.0"), build_rpm(tmp_path / "1.2.0", keydir, "1.2.0")]
    publish_artifacts(repo, keydir, newer)  # a new generation: the pre-yank one is dropped
    assert not pool_deb.exists() and not yum_rpm.exists()
    assert (repo / "apt/pool/main/a/aliyun-assist/aliyun-assist_1.0.0_amd64.deb").is_file()
    assert (repo / "yum/stable/Packages/aliyun-assist-1.0.0-1.x86_64.rpm").is_file()
    assert len(list((repo / "apt/dists").glob(".stable.*"))) == 2  # current and previous only
    assert len(list((repo / "yum/stable").glob(".repodata.*"))) == 2


def test_publish_writes_the_installer_bootstrap_with_the_pinned_fingerprint(
    published: SimpleNamespace,
) -> None:
    from pkgbuild.keys import gpg_fingerprint
    from pkgbuild.repository.public import TEMPLATE_DIR

    if not (TEMPLATE_DIR / "bootstrap.sh").is_file():
        pytest.skip("installer/bootstrap.sh template not written yet (installer engineer)")
    script = published.repo / "bootstrap/bootstrap.sh"
    text = script.read_text()
    assert gpg_fingerprint(published.keys) in text
    assert "@GPG_FINGERPRINT@" not in text
    assert "@MIRROR_URL@" in text  # the region's mirror fills it in (assist-mirror sync)
    assert checked(["sh", "-n", str(script)]) == ""
    if (TEMPLATE_DIR / "bootstrap.ps1").is_file():
        ps1 = (published.repo / "bootstrap/bootstrap.ps1").read_text()
        pinned = json.loads((published.keys / "keys.json").read_text())["authenticode_sha256"]
        assert pinned in ps1 and "@AUTHENTICODE_SHA256@" not in ps1


def test_replaced_index_files_get_a_later_last_modified_second(
    keydir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    publish_artifacts(repo, keydir, [build_deb(tmp_path / "a", "1.0.0")])
    # as if the next publish came within the same second: an If-Modified-Since client would get
    # a 304 for the new file if its Last-Modified second were not later
    seconds = {}
    for path in ("apt/dists/stable/InRelease", "yum/stable/repodata/repomd.xml"):
        seconds[path] = int(time.time()) + 3
        os.utime(repo / path, (seconds[path], seconds[path]))
    publish_artifacts(
        repo,
        keydir,
        [build_deb(tmp_path / "b", "1.1.0"), build_rpm(tmp_path / "b", keydir, "1.1.0")],
    )
    for path, second in seconds.items():
        assert int((repo / path).stat().st_mtime) > second, path


def test_hash_named_indexes_stay_for_the_grace_period_after_they_stop_being_listed(
    tmp_path: Path,
) -> None:
    """The grace period runs from the publish that stopped listing a file, not from when the
    file was written: an index written two hours ago and replaced just now stays another hour."""
    from pkgbuild.repository.apt import is_by_hash, listed_by_hash
    from pkgbuild.repository.generations import GRACE_SECONDS, carry_over

    def generation(name: str, listed: list[str]) -> Path:
        gen = tmp_path / name
        (gen / "main/binary-amd64/by-hash/SHA256").mkdir(parents=True)
        (gen / "Release").write_text("SHA256:\n" + "".join(f" {h} 10 x\n" for h in listed))
        return gen

    two_hours_ago = time.time() - 2 * GRACE_SECONDS
    gen1 = generation("gen1", ["aaaa"])
    for name in ("aaaa", "old0"):  # aaaa: gen1's index; old0: unlisted for two hours
        path = gen1 / "main/binary-amd64/by-hash/SHA256" / name
        path.write_text(name)
        os.utime(path, (two_hours_ago, two_hours_ago))
    gen2 = generation("gen2", ["bbbb"])  # publish 2 replaces aaaa
    carry_over(gen1, gen2, listed_by_hash(gen1), is_by_hash)
    by_hash2 = gen2 / "main/binary-amd64/by-hash/SHA256"
    assert sorted(p.name for p in by_hash2.iterdir()) == ["aaaa"]
    assert time.time() - (by_hash2 / "aaaa").stat().st_mtime < 60  # its grace starts now
    (by_hash2 / "bbbb").write_text("bbbb")
    gen3 = generation("gen3", ["cccc"])  # publish 3, a minute later: aaaa is still in grace
    carry_over(gen2, gen3, listed_by_hash(gen2), is_by_hash)
    assert sorted(p.name for p in (gen3 / "main/binary-amd64/by-hash/SHA256").iterdir()) == [
        "aaaa",
        "bbbb",
    ]
