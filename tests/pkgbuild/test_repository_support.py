"""Helpers for the release-repository tests: small real packages and the real clients.

Packages are built here with dpkg-deb, rpmbuild + rpmsign and makensis + osslsigncode so these
tests do not wait for a full `assist-pkgbuild build`. The clients (apt-get, dnf, the tuf
ngclient) run for real against a loopback StaticServer. This module holds no tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tuf.ngclient import Updater

from common.hashing import PIECE
from pkgbuild.keys import gpg_fingerprint
from pkgbuild.naming import ArtifactInfo


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output (callers check the return code)."""
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


def checked(cmd: list[str], **kwargs: object) -> str:
    """Run a command that must succeed; return its stdout."""
    proc = run(cmd, **kwargs)
    assert proc.returncode == 0, f"{cmd[0]} failed: {proc.stdout}\n{proc.stderr}"
    return str(proc.stdout)


def osslsigncode_verify(exe: Path, certificate: Path) -> subprocess.CompletedProcess[str]:
    """`osslsigncode verify` of an .exe against one CA certificate (the publisher's)."""
    return run(["osslsigncode", "verify", "-in", str(exe), "-CAfile", str(certificate)])


def build_deb(
    out: Path, version: str, *, package: str = "aliyun-assist", control_version: str | None = None
) -> Path:
    """A tiny real .deb named per pkgbuild.naming (control Version may be made to lie)."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".deb-{package}-{version}"
    (work / "DEBIAN").mkdir(parents=True)
    share = work / "usr/share" / package
    share.mkdir(parents=True)
    (share / "VERSION").write_text(f"{version}\n")
    (work / "DEBIAN/control").write_text(
        textwrap.dedent(
            f"""\
            Package: {package}
            Version: {control_version or version}
            Architecture: amd64
            Maintainer: Release <release@assist.invalid>
            Description: repository test package {version}
            """
        )
    )
    deb = out / f"{package}_{version}_amd64.deb"
    checked(["dpkg-deb", "--root-owner-group", "--build", str(work), str(deb)])
    shutil.rmtree(work)
    return deb


def build_rpm(
    out: Path, keys: Path | None, version: str, *, package: str = "aliyun-assist"
) -> Path:
    """A tiny real x86_64 .rpm, signed with KEYDIR's OpenPGP key unless `keys` is None."""
    out.mkdir(parents=True, exist_ok=True)
    top = out / f".rpm-{package}-{version}"
    (top / "SPECS").mkdir(parents=True)
    spec = top / "SPECS/p.spec"
    spec.write_text(
        textwrap.dedent(
            f"""\
            Name: {package}
            Version: {version}
            Release: 1
            Summary: repository test package
            License: Apache-2.0
            BuildArch: x86_64
            AutoReqProv: no
            %description
            repository test package {version}
            %install
            mkdir -p %{{buildroot}}/usr/share/{package}
            echo {version} > %{{buildroot}}/usr/share/{package}/VERSION
            %files
            /usr/share/{package}/VERSION
            """
        )
    )
    checked(
        ["rpmbuild", "--quiet", "--define", f"_topdir {top}", "--define", "debug_package %{nil}"]
        + ["-bb", str(spec)]
    )
    name = f"{package}-{version}-1.x86_64.rpm"
    rpm = out / name
    shutil.copyfile(top / "RPMS/x86_64" / name, rpm)
    shutil.rmtree(top)
    if keys is not None:
        sign_rpm(rpm, keys)
    return rpm


def sign_rpm(rpm: Path, keys: Path) -> None:
    """rpmsign with KEYDIR/gpg."""
    home = str(keys.resolve() / "gpg")
    env = dict(os.environ, GNUPGHOME=home)
    checked(
        ["rpmsign", "--addsign", "--define", f"_gpg_name {gpg_fingerprint(keys)}"]
        + ["--define", f"_gpg_path {home}", "--define", "__gpg /usr/bin/gpg", str(rpm)],
        env=env,
    )


def build_exe(out: Path, keys: Path, version: str, *, package: str = "aliyun-assist") -> Path:
    """A tiny real NSIS exe, Authenticode-signed with KEYDIR's certificate."""
    work = out / f".exe-{package}-{version}"
    work.mkdir(parents=True)
    (work / "p.nsi").write_text(
        f'OutFile "plain.exe"\nRequestExecutionLevel user\nSilentInstall silent\n'
        f'Name "{package} {version}"\nSection\nSectionEnd\n'
    )
    checked(["makensis", "-V1", "p.nsi"], cwd=work)
    exe = out / f"{package}-{version}-setup.exe"
    checked(
        ["osslsigncode", "sign", "-certs", str(keys / "public/authenticode.crt")]
        + ["-key", str(keys / "authenticode/key.pem"), "-h", "sha256"]
        + ["-in", str(work / "plain.exe"), "-out", str(exe)]
    )
    shutil.rmtree(work)
    return exe


def build_tarball(
    out: Path, version: str, *, package: str = "aliyun-assist", payload_version: str | None = None
) -> Path:
    """A tiny linux x86_64 tarball named per pkgbuild.naming (its payload version may lie)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{package}-{version}-linux-x86_64.tar.gz"
    payload = out / f".tar-{version}"
    payload.mkdir()
    (payload / "VERSION").write_text(f"{payload_version or version}\n{os.urandom(8).hex()}\n")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(payload / "VERSION", arcname=f"versions/{payload_version or version}/VERSION")
    shutil.rmtree(payload)
    return path


def build_all(out: Path, keys: Path, version: str) -> dict[str, Path]:
    """One artifact per format for `version`."""
    out.mkdir(parents=True, exist_ok=True)
    return {
        "deb": build_deb(out, version),
        "rpm": build_rpm(out, keys, version),
        "exe": build_exe(out, keys, version),
        "tar.gz": build_tarball(out, version),
    }


def expected_custom(
    info: ArtifactInfo, artifact: Path, channels: tuple[str, ...] = ("stable",)
) -> dict[str, object]:
    """The custom fields publish must sign for `artifact`: ours, and for a tar.gz the sha256 of
    each 4 MiB piece (clients unpack it while it downloads)."""
    custom = info.custom(list(channels))
    if info.format == "tar.gz":
        data = artifact.read_bytes()
        custom["pieces"] = {
            "size": PIECE,
            "sha256": [
                hashlib.sha256(data[i : i + PIECE]).hexdigest() for i in range(0, len(data), PIECE)
            ],
        }
    return custom


def tuf_updater(workdir: Path, keys_root: Path, base_url: str) -> Updater:
    """A tuf ngclient whose only trust is `keys_root` (a root.json), reading `base_url`."""
    metadata = workdir / "metadata"
    metadata.mkdir(parents=True, exist_ok=True)
    if not (metadata / "root.json").exists():
        shutil.copyfile(keys_root, metadata / "root.json")
    downloads = workdir / "downloads"
    downloads.mkdir(exist_ok=True)
    return Updater(
        metadata_dir=str(metadata),
        metadata_base_url=base_url + "metadata/",
        target_dir=str(downloads),
        target_base_url=base_url + "targets/",
        bootstrap=None,  # trust metadata_dir/root.json: the anchor, or the newer root it led to
    )


@dataclass
class AptClient:
    """apt-get with a complete private configuration under `root` (nothing from /etc/apt)."""

    root: Path
    env: dict[str, str]

    def setup(self, base_url: str, keyring: Path, channel: str = "stable") -> AptClient:
        """Create the private tree and a sources line with signed-by."""
        for sub in (
            "etc/apt/sources.list.d",
            "etc/apt/trusted.gpg.d",
            "etc/apt/preferences.d",
            "etc/apt/apt.conf.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "download",
        ):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "var/lib/dpkg/status").touch()
        (self.root / "etc/apt/sources.list").write_text(
            f"deb [signed-by={keyring}] {base_url}apt {channel} main\n"
        )
        return self

    def options(self) -> list[str]:
        """-o options making apt use only the private tree."""
        r = self.root
        settings = {
            "Dir": str(r),
            "Dir::State": str(r / "var/lib/apt"),
            "Dir::State::status": str(r / "var/lib/dpkg/status"),
            "Dir::Cache": str(r / "var/cache/apt"),
            "Dir::Etc": str(r / "etc/apt"),
            "Dir::Etc::sourcelist": str(r / "etc/apt/sources.list"),
            "Dir::Etc::sourceparts": str(r / "etc/apt/sources.list.d"),
            "Dir::Etc::trusted": str(r / "etc/apt/trusted.gpg"),
            "Dir::Etc::trustedparts": str(r / "etc/apt/trusted.gpg.d"),
            "Dir::Etc::parts": str(r / "etc/apt/apt.conf.d"),
            "Dir::Etc::preferencesparts": str(r / "etc/apt/preferences.d"),
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "APT::Sandbox::User": "root",
            "Acquire::Languages": "none",
            "Acquire::Retries": "0",
            "Debug::Acquire::http": "false",
            "Debug::pkgAcquire::Worker": "false",
            "Debug::NoLocking": "true",
        }
        return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """apt-get with the private options, in the download directory."""
        return run(
            ["apt-get", "-q", *self.options(), *args], env=self.env, cwd=self.root / "download"
        )

    def list_files(self) -> list[str]:
        """Names of the index files apt currently trusts."""
        return sorted(p.name for p in (self.root / "var/lib/apt/lists").glob("*_*"))


@dataclass
class DnfClient:
    """dnf with a private installroot, repo directory and config."""

    root: Path
    env: dict[str, str]

    def setup(self, base_url: str, channel: str = "stable") -> DnfClient:
        """Write the private dnf.conf and one repo with gpgcheck and repo_gpgcheck on."""
        (self.root / "installroot").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(exist_ok=True)
        (self.root / "dnf.conf").write_text("[main]\ngpgcheck=1\ninstallonly_limit=3\n")
        (self.root / "repos/assist.repo").write_text(
            textwrap.dedent(
                f"""\
                [assist]
                name=Aliyun Assist {channel}
                baseurl={base_url}yum/{channel}/
                enabled=1
                gpgcheck=1
                repo_gpgcheck=1
                gpgkey={base_url}keys/RPM-GPG-KEY-assist
                metadata_expire=0
                """
            )
        )
        return self

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """dnf against the private installroot only."""
        r = self.root
        return run(
            ["dnf", "-y", "-q", f"--config={r / 'dnf.conf'}", f"--installroot={r / 'installroot'}"]
            + [f"--setopt=reposdir={r / 'repos'}", f"--setopt=cachedir={r / 'cache'}"]
            + ["--releasever=1", "--noplugins", "--disablerepo=*", "--enablerepo=assist", *args],
            env=self.env,
        )

    def installed(self, package: str) -> subprocess.CompletedProcess[str]:
        """`rpm --root installroot -q package`."""
        return run(["rpm", "--root", str(self.root / "installroot"), "-q", package])


def install_sh_stub(installroot: Path, work: Path) -> None:
    """Register a package providing /bin/sh in an empty installroot's rpmdb (no files).

    The real agent rpm requires /bin/sh for its scriptlets; an empty installroot has none, so
    this stands in for the OS's shell package. Scriptlets are then skipped (tsflags=noscripts)
    because there is no shell to run them in the installroot.
    """
    top = work / ".sh-stub"
    (top / "SPECS").mkdir(parents=True)
    spec = top / "SPECS/stub.spec"
    spec.write_text(
        textwrap.dedent(
            """\
            Name: assist-test-sh-stub
            Version: 1
            Release: 1
            Summary: provides /bin/sh for an empty installroot
            License: Apache-2.0
            BuildArch: noarch
            Provides: /bin/sh
            AutoReqProv: no
            %description
            stub
            %files
            """
        )
    )
    checked(["rpmbuild", "--quiet", "--define", f"_topdir {top}", "-bb", str(spec)])
    stub = next((top / "RPMS/noarch").glob("*.rpm"))
    installroot.mkdir(parents=True, exist_ok=True)
    checked(["rpm", "--root", str(installroot), "--nosignature", "--noscripts", "-i", str(stub)])
    shutil.rmtree(top)
