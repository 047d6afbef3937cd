"""Real release repositories for tests, the demo and the benchmarks.

Everything is made by the real tools: `assist-pkgbuild` keygen/build/init/publish as
subprocesses, small native packages by dpkg-deb, rpmbuild + rpmsign and tar. `Release` is a
repository and the keys that sign it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
OUR_PACKAGES = ("common", "agent", "updater", "installer")

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
    """Run a command; AssertionError with its output if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def pkgbuild(*args: str) -> str:
    """Run assist-pkgbuild ARGS; its stdout."""
    return run([sys.executable, "-m", "pkgbuild", *args]).stdout


def keygen(keys: Path) -> Path:
    """A fresh key directory (`assist-pkgbuild keygen`)."""
    pkgbuild("keygen", "--out", str(keys))
    return keys


def init_repo(repo: Path, keys: Path) -> Path:
    """An empty release repository signed by `keys`."""
    pkgbuild("init", "--repo", str(repo), "--keys", str(keys))
    return repo


def publish(repo: Path, keys: Path, artifacts: Sequence[Path], channel: str = "stable") -> None:
    """Add `artifacts` to the repository in `channel`."""
    pkgbuild(
        "publish",
        "--repo",
        str(repo),
        "--keys",
        str(keys),
        "--channel",
        channel,
        *map(str, artifacts),
    )


def build(
    keys: Path,
    version: str,
    out: Path,
    formats: str = "tar.gz",
    source: Path | None = None,
    package: str | None = None,
) -> list[Path]:
    """Build agent artifacts (no vendored wheels: the tests' interpreter has the deps)."""
    args = [
        "build",
        "--version",
        version,
        "--keys",
        str(keys),
        "--formats",
        formats,
        "--out",
        str(out),
        "--no-vendor",
    ]
    if source is not None:
        args += ["--source", str(source)]
    if package is not None:
        args += ["--package", package]
    before = set(out.glob("*")) if out.exists() else set()
    pkgbuild(*args)
    return sorted(set(out.glob("*")) - before)


def broken_source(dest: Path) -> Path:
    """A copy of this project whose agent exits at start (for the failed-update path)."""
    for name in OUR_PACKAGES:
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "agent" / "cli.py").write_text(
        '"""Deliberately broken agent for tests: exits at start."""\n'
        "import sys\n\n\ndef main(argv=None):\n"
        '    sys.stderr.write("broken agent: exiting at start\\n")\n    return 1\n\n\n'
        'if __name__ == "__main__":\n    sys.exit(main())\n'
    )
    return dest


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


def mirror_sync_args(upstream: str, root: Path, keys: Path) -> list[str]:
    """`assist-mirror sync --region cn-hangzhou` arguments from `upstream` into `root`, trusting
    the root.json and OpenPGP keyring of a key directory made by `assist-pkgbuild keygen`."""
    return [
        "sync",
        "--region",
        "cn-hangzhou",
        "--upstream",
        upstream,
        "--root",
        str(root),
        "--trust-root",
        str(keys / "root.json"),
        "--keyring",
        str(keys / "public" / "archive-keyring.gpg"),
    ]


class Release:
    """A release repository and the keys that sign it."""

    def __init__(self, repo: Path, keys: Path, work: Path) -> None:
        self.repo = repo
        self.keys = keys
        self.work = work

    @classmethod
    def create(cls, repo: Path, keys: Path, work: Path) -> Release:
        """An empty repository signed by `keys` (made with keygen first when missing)."""
        if not (keys / "root.json").exists():
            keygen(keys)
        init_repo(repo, keys)
        return cls(repo, keys, work)

    @property
    def trust_root(self) -> Path:
        return self.keys / "root.json"

    @property
    def keyring(self) -> Path:
        return self.keys / "public" / "archive-keyring.gpg"

    def publish(self, *artifacts: Path, channel: str = "stable") -> None:
        """Add `artifacts` in `channel`."""
        publish(self.repo, self.keys, artifacts, channel)

    def copy(self, dest: Path) -> Release:
        """An independent copy of the repository (same keys), e.g. to tamper with."""
        shutil.copytree(self.repo, dest, symlinks=True)
        return Release(dest, self.keys, self.work)
