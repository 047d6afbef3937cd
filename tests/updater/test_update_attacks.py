"""Attacks on the update path, modelled on python-tuf's client tests, against a real repository
(assist-pkgbuild) served on loopback and the real `assist-update apply` (in-process main).

Set-up for each: agent 1.0.0 installed, updated to 1.1.0 (journal `committed`), then 1.2.0
published; the attack is applied to the served repository. Every attack must be refused and
leave `current`, the journal and the trusted TUF metadata byte-for-byte unchanged.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from devkit.agent import mirror_args
from devkit.httpserver import StaticServer, endless_body
from devkit.release import build, init_repo, keygen, pkgbuild, publish
from installer.cli import main as install_main
from pkgbuild.keys import load_tuf_signers
from updater.cli import main as update_main

pytestmark = pytest.mark.xdist_group("update-attacks")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("attack-release")
    keys = keygen(base / "keys")
    dist = base / "dist"
    arts = {v: build(keys, v, dist) for v in ("1.0.0", "1.1.0", "1.2.0")}
    repo = init_repo(base / "repo", keys)
    publish(repo, keys, arts["1.0.0"] + arts["1.1.0"])
    return {"keys": keys, "repo": repo, "arts": arts, "base": base}


class World:
    """A repository copy on loopback and a prefix updated to 1.1.0 from it."""

    def __init__(self, release: dict[str, Any], tmp_path: Path, server: StaticServer) -> None:
        self.keys: Path = tmp_path / "keys"  # a copy: key rotation rewrites it
        shutil.copytree(release["keys"], self.keys)
        self.repo: Path = server.httpd.root
        self.server = server
        self.prefix = tmp_path / "prefix"
        self.release = release

    def cli(self, main: Callable[[list[str]], int], *args: str) -> int:
        remote = ["--prefix", str(self.prefix), "--mirror", self.server.url, "--service", "none"]
        if args[0] == "agent":
            remote += ["--trust-root", str(self.keys / "root.json")]
        return main([*args, *remote])

    def apply(self) -> int:
        return self.cli(update_main, "apply")

    def snapshot_state(self) -> dict[str, bytes | str | None]:
        """current, the journal and every trusted metadata file."""
        state: dict[str, bytes | str | None] = {
            "current": str(Path(self.prefix / "current").readlink()),
        }
        journal = self.prefix / "state" / "update.json"
        state["journal"] = journal.read_bytes() if journal.exists() else None
        for path in sorted((self.prefix / "state" / "tuf").glob("*.json")):
            state[f"tuf/{path.name}"] = path.read_bytes()
        return state

    # -- metadata surgery (python-tuf's RepositorySimulator, by hand on real files) --------------

    def path(self, role: str) -> Path:
        meta = self.repo / "metadata"
        if role == "timestamp":
            return meta / "timestamp.json"
        ts = Metadata.from_file(str(meta / "timestamp.json"))
        snap_v = ts.signed.snapshot_meta.version
        if role == "snapshot":
            return meta / f"{snap_v}.snapshot.json"
        snap = Metadata.from_file(str(meta / f"{snap_v}.snapshot.json"))
        return meta / f"{snap.signed.meta['targets.json'].version}.targets.json"

    def load(self, role: str) -> Metadata[Any]:
        return Metadata.from_file(str(self.path(role)))

    def sign(self, md: Metadata[Any], role: str, signers: list[Any] | None = None) -> None:
        md.signatures.clear()
        for signer in signers if signers is not None else load_tuf_signers(self.keys, role):
            md.sign(signer, append=True)

    def write(self, md: Metadata[Any], path: Path) -> None:
        md.to_file(str(path))

    def new_timestamp_for(self, snapshot_version: int) -> None:
        """A properly signed timestamp (version + 1) naming `snapshot_version`."""
        ts = self.load("timestamp")
        ts.signed.version += 1
        ts.signed.snapshot_meta.version = snapshot_version
        ts.signed.snapshot_meta.hashes = None
        ts.signed.snapshot_meta.length = None
        self.sign(ts, "timestamp")
        self.write(ts, self.repo / "metadata" / "timestamp.json")


@pytest.fixture
def world(release: dict[str, Any], tmp_path: Path) -> Iterator[World]:
    repo = tmp_path / "repo"
    shutil.copytree(release["repo"], repo, symlinks=True)
    with StaticServer(repo) as server:
        w = World(release, tmp_path, server)
        assert w.cli(install_main, "agent", "--version", "1.0.0") == 0
        assert w.apply() == 0
        assert (w.prefix / "current").readlink() == Path("versions/1.1.0")
        publish(repo, w.keys, release["arts"]["1.2.0"])
        yield w


def assert_refused(world: World, expected_exit: int = 4, refresh_first: bool = False) -> None:
    """The apply fails with `expected_exit` and changes nothing we trust.

    refresh_first: for attacks on artifacts (not metadata), the valid new metadata is fetched
    first with `check`, so "unchanged" compares like with like.
    """
    if refresh_first:
        assert world.cli(update_main, "check") == 100
    before = world.snapshot_state()
    code = world.apply()
    assert code == expected_exit
    assert world.snapshot_state() == before
    assert not (world.prefix / "versions" / "1.2.0").exists()


def test_sanity_the_unattacked_update_works(world: World) -> None:
    assert world.apply() == 0
    assert (world.prefix / "current").readlink() == Path("versions/1.2.0")


def test_new_timestamp_version_rollback(world: World) -> None:
    ts = world.load("timestamp")
    trusted = Metadata.from_file(str(world.prefix / "state" / "tuf" / "timestamp.json"))
    ts.signed.version = trusted.signed.version - 1
    world.sign(ts, "timestamp")
    world.write(ts, world.path("timestamp"))
    assert_refused(world)


def test_new_snapshot_version_rollback(world: World) -> None:
    world.new_timestamp_for(1)  # 1.snapshot.json is older than the trusted snapshot
    assert_refused(world)


def test_new_targets_version_rollback(world: World) -> None:
    snap = world.load("snapshot")
    snap.signed.version += 1
    snap.signed.meta["targets.json"].version = 1
    snap.signed.meta["targets.json"].hashes = None
    snap.signed.meta["targets.json"].length = None
    world.sign(snap, "snapshot")
    world.write(snap, world.repo / "metadata" / f"{snap.signed.version}.snapshot.json")
    world.new_timestamp_for(snap.signed.version)
    assert_refused(world)


def test_expired_timestamp_is_a_freeze_attack(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    ts = world.load("timestamp")
    ts.signed.version += 1
    ts.signed.expires = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    world.sign(ts, "timestamp")
    world.write(ts, world.path("timestamp"))
    assert_refused(world)
    assert "expired" in capsys.readouterr().err


def test_mix_and_match_targets_from_another_version(world: World) -> None:
    current = world.path("targets")
    shutil.copy(world.repo / "metadata" / "1.targets.json", current)  # validly signed, but old
    assert_refused(world)


def test_timestamp_signed_by_wrong_key(world: World) -> None:
    ts = world.load("timestamp")
    ts.signed.version += 1
    world.sign(ts, "timestamp", [CryptoSigner.generate_ed25519()])
    world.write(ts, world.path("timestamp"))
    assert_refused(world)


def test_endless_timestamp_data(world: World) -> None:
    # ~160 MB if nobody stops reading
    world.server.hook = endless_body("timestamp.json", b'{"signed": ' + b" " * 8192, 20000)
    before = world.snapshot_state()
    assert world.apply() in (1, 4)  # transport (DownloadError) or content refusal
    assert world.snapshot_state() == before


def test_artifact_with_wrong_hash(world: World) -> None:
    target = next((world.repo / "targets" / "aliyun-assist" / "1.2.0").iterdir())
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    assert_refused(world, refresh_first=True)


def test_artifact_with_wrong_length(world: World) -> None:
    target = next((world.repo / "targets" / "aliyun-assist" / "1.2.0").iterdir())
    target.write_bytes(target.read_bytes() + b"\0" * 4096)
    assert_refused(world, refresh_first=True)


def _evil_tarball(out: Path, version: str, member: tarfile.TarInfo | list[tarfile.TarInfo]) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for name, data in (
            (f"versions/{version}/VERSION", f"{version}\n".encode()),
            (f"versions/{version}/bin/assist-agent", b"#!/bin/sh\nexit 0\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        for extra in member if isinstance(member, list) else [member]:
            tar.addfile(extra, io.BytesIO(b"x") if extra.isreg() else None)
    return out


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("versions/1.3.0/../../../escape"),
        _member("/etc/evil-absolute"),
        _member("versions/1.3.0/lib/out", tarfile.SYMTYPE, "../../../../etc"),
    ],
    ids=["dotdot", "absolute", "symlink-out"],
)
def test_signed_tarball_with_unsafe_members_is_refused(
    world: World, tmp_path: Path, member: tarfile.TarInfo
) -> None:
    """Even correctly signed (a compromised build), the payload must not leave versions/V."""
    evil = _evil_tarball(tmp_path / "aliyun-assist-1.3.0-linux-x86_64.tar.gz", "1.3.0", member)
    publish(world.repo, world.keys, [evil])
    assert_refused(world, refresh_first=True)
    assert not (world.prefix / "versions" / "1.3.0").exists()
    assert not list((world.prefix / "versions").glob(".staging-*"))
    assert not (tmp_path / "escape").exists() and not Path("/etc/evil-absolute").exists()


def publish_link_chain(world: World, tmp_path: Path) -> None:
    """Publish a signed 1.3.0 tarball: `l -> .`, `a -> l/..`, `b -> a/..`, `c -> b/..` (each
    lexically inside), then a directory member `c` (0700)."""
    chain = [
        _member("versions/1.3.0/l", tarfile.SYMTYPE, "."),
        _member("versions/1.3.0/a", tarfile.SYMTYPE, "l/.."),
        _member("versions/1.3.0/b", tarfile.SYMTYPE, "a/.."),
        _member("versions/1.3.0/c", tarfile.SYMTYPE, "b/.."),
        _member("versions/1.3.0/c", tarfile.DIRTYPE),
    ]
    chain[-1].mode = 0o700
    evil = _evil_tarball(tmp_path / "aliyun-assist-1.3.0-linux-x86_64.tar.gz", "1.3.0", chain)
    publish(world.repo, world.keys, [evil])


def test_signed_tarball_chaining_links_out_then_a_directory_changes_nothing_outside(
    world: World, tmp_path: Path
) -> None:
    """Issue 10.1 through the real apply: `l -> .`, `a -> l/..`, `b -> a/..`, `c -> b/..` (each
    lexically inside), then a directory member `c` (0700). The old staging followed `c` and
    chmodded the directory above the prefix 755 -> 700 before it refused the update."""
    tmp_path.chmod(0o755)
    publish_link_chain(world, tmp_path)
    outside = {p: (p.stat().st_mode, p.stat().st_mtime_ns) for p in (tmp_path, world.prefix)}
    assert_refused(world, refresh_first=True)
    assert {p: (p.stat().st_mode, p.stat().st_mtime_ns) for p in outside} == outside
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o755"
    assert not list((world.prefix / "versions").glob(".staging-*"))


def test_first_install_of_a_signed_tarball_chaining_links_out_changes_nothing_outside(
    world: World, tmp_path: Path
) -> None:
    """The same attack through `assist-install agent` (a fresh prefix): the installer stages
    with the same extractor, so the directory above the new prefix keeps its mode."""
    fresh = tmp_path / "outer" / "prefix"
    fresh.parent.mkdir()
    fresh.parent.chmod(0o755)
    publish_link_chain(world, tmp_path)
    before = (fresh.parent.stat().st_mode, tmp_path.stat().st_mode)
    code = install_main(
        ["agent", "--version", "1.3.0", "--service", "none"]
        + mirror_args(fresh, world.server.url, world.keys)
    )
    assert code == 4
    assert (fresh.parent.stat().st_mode, tmp_path.stat().st_mode) == before
    assert oct(fresh.parent.stat().st_mode & 0o777) == "0o755"
    assert not (fresh / "current").exists() and not (fresh / "versions" / "1.3.0").exists()
    assert not list((fresh / "versions").glob(".staging-*"))


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets", "root"])
def test_key_rotation_properly_signed_is_accepted(world: World, role: str) -> None:
    pkgbuild("rotate-key", "--repo", str(world.repo), "--keys", str(world.keys), "--role", role)
    assert world.apply() == 0
    assert (world.prefix / "current").readlink() == Path("versions/1.2.0")
    trusted_root = json.loads((world.prefix / "state" / "tuf" / "root.json").read_text())
    assert trusted_root["signed"]["version"] >= 2


def test_mirror_hanging_mid_body_is_left_behind_and_download_resumes_elsewhere(
    world: World,
) -> None:
    """Two mirrors; the faster-probing one stalls half-way through the artifact. The update must
    finish from the other one, resuming with Range, within seconds, and be healthy."""
    (world.prefix / "config").mkdir(exist_ok=True)
    (world.prefix / "config" / "assist.toml").write_text(
        "[mirror]\nread_timeout = 1.0\nretries = 0\nprobe_timeout = 2.0\n"
    )
    ranges: list[str] = []

    def stall_on_targets(handler: Any) -> bool:
        if "/targets/" not in handler.path:
            return False
        path = world.repo / handler.path.lstrip("/")
        data = path.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 2])
        handler.wfile.flush()
        time.sleep(5)
        return True

    def slow_probe_and_record(handler: Any) -> bool:
        if handler.path.endswith("timestamp.json"):
            # ranks second: a stall of the whole process longer than this delay makes both probes
            # about as slow (0.3 s made that a coin flip); still well within the 2 s probe timeout
            time.sleep(1.0)
        if "/targets/" in handler.path:
            ranges.append(handler.headers.get("Range", ""))
        return False

    world.server.hook = stall_on_targets
    with StaticServer(world.repo) as second:
        second.hook = slow_probe_and_record
        start = time.monotonic()
        code = update_main(
            [
                "apply",
                "--prefix",
                str(world.prefix),
                "--mirror",
                world.server.url,
                "--mirror",
                second.url,
                "--service",
                "none",
            ]
        )
        elapsed = time.monotonic() - start
    assert code == 0
    assert (world.prefix / "current").readlink() == Path("versions/1.2.0")
    assert ranges and ranges[0].startswith("bytes=") and not ranges[0].startswith("bytes=0-")
    assert elapsed < 15


def test_apply_with_a_trickling_mirror_exits_once_its_work_is_done(world: World) -> None:
    """Issue 10.8, through the real console script: a second mirror answers a byte every 2 s.
    The old probe thread (a non-daemon executor worker reading 8 KiB at a time) kept the
    process alive for len(timestamp.json) x 2 s (many minutes) after "updated"; now the
    process ends when its work does. The subprocess timeout is a hang bound, not a benchmark."""
    import subprocess
    import sys
    import threading

    stop = threading.Event()

    def trickle(handler: Any) -> bool:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        try:
            while not stop.wait(2.0):
                handler.wfile.write(b" ")
                handler.wfile.flush()
        except OSError:
            pass  # the client went away
        return True

    # the default probe_timeout (3 s) is longer than the gap between bytes: no read times out
    with StaticServer(world.repo) as slow:
        slow.hook = trickle
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "updater.cli",
                    "apply",
                    "--prefix",
                    str(world.prefix),
                    "--mirror",
                    slow.url,
                    "--mirror",
                    world.server.url,
                    "--service",
                    "none",
                ],
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
        finally:
            stop.set()
    assert proc.returncode == 0, proc.stderr
    assert "1.1.0 -> 1.2.0" in proc.stdout
    assert (world.prefix / "current").readlink() == Path("versions/1.2.0")


def test_apply_with_service_none_and_no_agent_running_never_says_updated(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13.3 through the real CLI: nothing runs the agent here, so the apply says the new
    version is installed but NOT running and how to start it, never "updated"."""
    capsys.readouterr()
    assert world.apply() == 0
    out = capsys.readouterr().out
    assert not out.startswith("updated")
    assert "installed 1.1.0 -> 1.2.0, but the agent is NOT running" in out
    assert f"assist-agent run --prefix {world.prefix}" in out
    assert (world.prefix / "current").readlink() == Path("versions/1.2.0")


def test_unknown_channel_is_an_error_not_up_to_date(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.cli(update_main, "check") == 100  # the valid new metadata is trusted first
    before = world.snapshot_state()
    assert world.cli(update_main, "check", "--channel", "stabel") == 1
    assert "in channel 'stabel'" in capsys.readouterr().err
    assert world.snapshot_state() == before
