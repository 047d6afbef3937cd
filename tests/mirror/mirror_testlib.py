"""Helpers for mirror tests: real packages, a real release repository, the real CLI.

Artifacts are small real packages (dpkg-deb, rpmbuild + rpmsign, tar); the repository is
written by `assist-pkgbuild init/publish` with keys from `assist-pkgbuild keygen`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from server.testing import free_port, mirror_sync_args

SPEC = """Name: {name}
Version: {version}
Release: 1
Summary: {name} test package
License: MIT
BuildArch: {arch}
AutoReqProv: no
%description
{name} test package
%install
mkdir -p %{{buildroot}}/opt/{name}
head -c {size} /dev/urandom > %{{buildroot}}/opt/{name}/payload
echo {version} > %{{buildroot}}/opt/{name}/VERSION
%files
/opt/{name}/payload
/opt/{name}/VERSION
"""


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def pkgbuild(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "pkgbuild", *args])


def make_deb(out: Path, name: str, version: str, size: int = 1024) -> Path:
    """A real .deb with `size` random bytes in /opt/NAME/payload."""
    work = out / f"deb-{name}-{version}"
    (work / "DEBIAN").mkdir(parents=True)
    (work / "opt" / name).mkdir(parents=True)
    (work / "opt" / name / "payload").write_bytes(os.urandom(size))
    (work / "opt" / name / "VERSION").write_text(version + "\n")
    (work / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        f"Maintainer: Test <test@assist.invalid>\nDescription: {name} test package\n"
    )
    deb = out / f"{name}_{version}_amd64.deb"
    run(["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(work), str(deb)])
    shutil.rmtree(work)
    return deb


def make_rpm(out: Path, keys: Path, name: str, version: str, size: int = 1024) -> Path:
    """A real rpm signed with the release OpenPGP key (rpmsign)."""
    top = out / f"rpm-{name}-{version}"
    top.mkdir(parents=True)
    spec = top / f"{name}.spec"
    spec.write_text(SPEC.format(name=name, version=version, arch="x86_64", size=size))
    run(
        [
            "rpmbuild",
            "-bb",
            "--define",
            f"_topdir {top}",
            "--define",
            "_build_id_links none",
            str(spec),
        ]
    )
    built = top / "RPMS" / "x86_64" / f"{name}-{version}-1.x86_64.rpm"
    fingerprint = json.loads((keys / "keys.json").read_text())["gpg_fingerprint"]
    run(
        [
            "rpmsign",
            "--addsign",
            "--define",
            f"__gpg {shutil.which('gpg')}",
            "--define",
            f"_gpg_path {keys / 'gpg'}",
            "--define",
            f"_gpg_name {fingerprint}",
            str(built),
        ]
    )
    rpm = out / built.name
    shutil.move(built, rpm)
    shutil.rmtree(top)
    return rpm


def make_tarball(out: Path, name: str, version: str, size: int = 1024) -> Path:
    """A NAME-V-linux-x86_64.tar.gz of `size` random bytes."""
    data = out / f"tar-{name}-{version}"
    data.mkdir(parents=True)
    (data / "payload").write_bytes(os.urandom(size))
    tarball = out / f"{name}-{version}-linux-x86_64.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(data, arcname=f"{name}-{version}")
    shutil.rmtree(data)
    return tarball


def tree_hash(root: Path) -> str:
    """A hash over every published path (not .mirror/), its kind, symlink target and bytes."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == ".mirror" or rel.startswith(".mirror/"):
            continue
        digest.update(rel.encode() + b"\0")
        if path.is_symlink():
            digest.update(b"L" + os.readlink(path).encode())
        elif path.is_file():
            digest.update(b"F" + hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(b"D")
    return digest.hexdigest()


class Origin:
    """A release repository and the keys that sign it."""

    def __init__(self, repo: Path, keys: Path, work: Path) -> None:
        self.repo = repo
        self.keys = keys
        self.work = work

    @property
    def trust_root(self) -> Path:
        return self.keys / "root.json"

    @property
    def keyring(self) -> Path:
        return self.keys / "public" / "archive-keyring.gpg"

    def publish(self, *artifacts: Path, channel: str = "stable") -> None:
        pkgbuild(
            "publish",
            "--repo",
            str(self.repo),
            "--keys",
            str(self.keys),
            "--channel",
            channel,
            *map(str, artifacts),
        )

    def copy(self, dest: Path) -> Origin:
        """An independent copy of the repository (same keys), e.g. to tamper with."""
        shutil.copytree(self.repo, dest, symlinks=True)
        return Origin(dest, self.keys, self.work)


def sync_args(origin: Origin, url: str, root: Path) -> list[str]:
    """`assist-mirror sync` of ORIGIN served at URL into ROOT with its trust root only: the
    one trust anchor (the OpenPGP keyring comes from the signed keys/ targets)."""
    args = mirror_sync_args(url, root, origin.keys)
    at = args.index("--keyring")
    return args[:at] + args[at + 2 :]


def mirror_cli(
    *args: str, check: bool = True, python_args: bool = False, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run `assist-mirror ARGS` (python -m mirror) and return the finished process; with
    `python_args`, ARGS starting with "-X" options go to the interpreter first."""
    interpreter: list[str] = []
    while python_args and args and args[0] == "-X":
        interpreter, args = [*interpreter, *args[:2]], args[2:]
    proc = subprocess.run(
        [sys.executable, *interpreter, "-m", "mirror", *args],
        capture_output=True,
        text=True,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"assist-mirror {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@contextmanager
def serving(root: Path) -> Iterator[str]:
    """`assist-mirror serve --root ROOT` on a free loopback port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mirror",
            "serve",
            "--root",
            str(root),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url + "metadata/timestamp.json", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "assist-mirror serve did not start: " + proc.stderr.read().decode()
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
