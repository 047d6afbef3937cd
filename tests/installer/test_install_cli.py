"""assist-install list / install / remove against a real repository on loopback: packages other
than the agent (built by assist-pkgbuild --package), installed with the real dpkg and rpm into a
--root; native-signature attacks (rpm signed by another key, exe signed by another certificate)
carried in validly signed TUF metadata, i.e. an attacker holding the TUF targets key only."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile

from devkit.agent import mirror_args
from devkit.httpserver import StaticServer
from devkit.release import build, init_repo, keygen, pkgbuild, publish
from installer.cli import main as install_main
from pkgbuild.keys import load_tuf_signers
from pkgbuild.naming import parse_artifact_filename

pytestmark = pytest.mark.xdist_group("install-cli")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("install-release")
    src = base / "hello-src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (src / "bin" / "hello").chmod(0o755)
    keys = keygen(base / "keys")
    foreign = keygen(base / "foreign-keys")
    good = build(
        keys, "1.0", base / "dist", formats="deb,rpm,exe", source=src, package="hello-tool"
    )
    evil = build(foreign, "2.0", base / "evil", formats="rpm,exe", source=src, package="hello-tool")
    repo = init_repo(base / "repo", keys)
    publish(repo, keys, good)
    return {"keys": keys, "repo": repo, "evil": evil, "base": base}


def cli(server: StaticServer, prefix: Path, keys: Path, *args: str) -> int:
    return install_main(
        [*args, *mirror_args(prefix, server.url, keys), "--keys", str(keys / "public")]
    )


@dataclass
class Site:
    """This test's copy of the repository served on loopback; state under tmp/p, --root tmp/root."""

    server: StaticServer
    repo: Path
    keys: Path
    evil: list[Path]
    tmp: Path

    @property
    def root(self) -> Path:
        return self.tmp / "root"

    def cli(self, *args: str) -> int:
        return cli(self.server, self.tmp / "p", self.keys, *args)

    def install(self, spec: str, fmt: str, *extra: str) -> int:
        """`assist-install install SPEC --root ROOT --format FMT EXTRA…`."""
        return self.cli("install", spec, "--root", str(self.root), "--format", fmt, *extra)


@pytest.fixture
def site(release: dict[str, Any], tmp_path: Path) -> Iterator[Site]:
    repo = tmp_path / "repo"
    shutil.copytree(release["repo"], repo, symlinks=True)
    with StaticServer(repo) as server:
        yield Site(server, repo, release["keys"], release["evil"], tmp_path)


def rpm_query(root: Path) -> subprocess.CompletedProcess[str]:
    """`rpm -q hello-tool` in the rpm database under `root`."""
    return subprocess.run(
        ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-q", "hello-tool"],
        capture_output=True,
        text=True,
        check=False,
    )


def add_target_with_targets_key(repo: Path, keys: Path, artifact: Path) -> None:
    """Put an artifact into TUF metadata directly (what a stolen targets key allows)."""
    info = parse_artifact_filename(artifact.name)
    meta = repo / "metadata"
    ts = Metadata.from_file(str(meta / "timestamp.json"))
    snap = Metadata.from_file(str(meta / f"{ts.signed.snapshot_meta.version}.snapshot.json"))
    tv = snap.signed.meta["targets.json"].version
    targets = Metadata.from_file(str(meta / f"{tv}.targets.json"))
    tf = TargetFile.from_file(info.target_path, str(artifact), ["sha256"])
    tf.unrecognized_fields["custom"] = info.custom(["stable"])
    targets.signed.targets[info.target_path] = tf
    dest = repo / "targets" / info.package / info.version / f"{tf.hashes['sha256']}.{artifact.name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(artifact, dest)

    def resign(md: Metadata[Any], role: str) -> None:
        md.signed.version += 1
        md.signatures.clear()
        for signer in load_tuf_signers(keys, role):
            md.sign(signer, append=True)

    resign(targets, "targets")
    targets.to_file(str(meta / f"{targets.signed.version}.targets.json"))
    snap.signed.meta["targets.json"].version = targets.signed.version
    snap.signed.meta["targets.json"].hashes = None
    snap.signed.meta["targets.json"].length = None
    resign(snap, "snapshot")
    snap.to_file(str(meta / f"{snap.signed.version}.snapshot.json"))
    ts.signed.snapshot_meta.version = snap.signed.version
    ts.signed.snapshot_meta.hashes = None
    ts.signed.snapshot_meta.length = None
    resign(ts, "timestamp")
    ts.to_file(str(meta / "timestamp.json"))


def test_list_shows_published_packages(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    assert site.cli("list", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    formats = sorted(t["format"] for t in listing["targets"] if t["package"] == "hello-tool")
    assert formats == ["deb", "exe", "rpm"]
    assert listing["mirror"] == site.server.url
    assert not (site.tmp / "p").exists()  # read-only: no installation there, nothing created


def test_install_and_remove_deb_with_real_dpkg(site: Site, tmp_path: Path) -> None:
    root = site.root
    assert site.install("hello-tool==1.0", "deb") == 0
    assert (root / "opt" / "hello-tool" / "bin" / "hello").is_file()
    status = subprocess.run(
        ["dpkg", f"--root={root}", "-s", "hello-tool"], capture_output=True, text=True, check=True
    ).stdout
    assert "Status: install ok installed" in status and "Version: 1.0" in status
    assert (
        install_main(
            [
                "remove",
                "hello-tool",
                "--root",
                str(root),
                "--format",
                "deb",
                "--prefix",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    assert not (root / "opt" / "hello-tool" / "bin" / "hello").exists()


def test_install_rpm_with_real_rpm_after_signature_check(site: Site) -> None:
    root = site.root
    assert site.install("hello-tool", "rpm") == 0
    query = rpm_query(root)
    assert query.returncode == 0 and "hello-tool-1.0-1" in query.stdout
    assert (root / "opt" / "hello-tool" / "bin" / "hello").is_file()


def test_dry_run_changes_nothing(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    assert site.install("hello-tool", "deb", "--dry-run") == 0
    assert "would install hello-tool 1.0" in capsys.readouterr().out
    assert not site.root.exists()


def test_unknown_package_is_not_found(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    code = site.install("no-such-thing", "deb")
    assert code == 1 and "no-such-thing" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["rpm", "exe"])
def test_native_signature_by_another_key_is_refused(
    site: Site, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """rpm header signed with another OpenPGP key / exe signed by another certificate, both
    listed in validly signed TUF metadata: the native check must refuse them (exit 4)."""
    artifact = next(p for p in site.evil if p.name.endswith(f".{fmt}"))
    add_target_with_targets_key(site.repo, site.keys, artifact)
    root = site.root
    code = site.install("hello-tool==2.0", fmt)
    assert code == 4, capsys.readouterr().err
    assert not (root / "opt").exists()
    if fmt == "rpm" and (root / "var" / "lib" / "rpm").exists():
        assert rpm_query(root).returncode != 0


def test_timestamp_below_threshold_is_refused(tmp_path: Path) -> None:
    """timestamp threshold 2: one valid signature is not enough; trusted metadata unchanged."""
    keys = tmp_path / "keys"
    pkgbuild("keygen", "--out", str(keys), "--threshold", "timestamp=2")
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "x").write_text("x\n")
    arts = build(keys, "1.0", tmp_path / "dist", formats="deb", source=src, package="thresh-tool")
    repo = init_repo(tmp_path / "repo", keys)
    publish(repo, keys, arts)
    prefix = tmp_path / "p"
    with StaticServer(repo) as server:
        assert cli(server, prefix, keys, "list") == 0
        before = {p.name: p.read_bytes() for p in (prefix / "state" / "tuf").glob("*.json")}
        ts = Metadata.from_file(str(repo / "metadata" / "timestamp.json"))
        ts.signed.version += 1
        ts.signatures.clear()
        ts.sign(load_tuf_signers(keys, "timestamp")[0])
        ts.sign(CryptoSigner.generate_ed25519(), append=True)  # not a timestamp key
        ts.to_file(str(repo / "metadata" / "timestamp.json"))
        assert cli(server, prefix, keys, "list") == 4
        after = {p.name: p.read_bytes() for p in (prefix / "state" / "tuf").glob("*.json")}
        assert after == before
