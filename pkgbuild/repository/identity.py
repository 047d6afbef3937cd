"""What an artifact claims to be (its file name) checked against what it is (its own header)."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from common.errors import UsageError, VerificationError
from common.platform import normalize_arch
from pkgbuild.naming import ArtifactInfo, parse_artifact_filename
from pkgbuild.repository.tools import run_tool


def identify_artifact(path: Path, keys: Path) -> ArtifactInfo:
    """Parse the file name, then refuse the artifact unless its contents agree with it."""
    if not path.is_file():
        raise UsageError(f"no such artifact: {path}", hint="pass the files `build` wrote")
    info = parse_artifact_filename(path.name)
    if info.filename != path.name:
        raise UsageError(
            f"{path.name} is not the canonical name of {info.package} {info.version}",
            hint=f"rename it to {info.filename}",
        )
    if info.format == "deb":
        check_deb_identity(path, info)
    elif info.format == "rpm":
        check_rpm_identity(path, info)
        check_rpm_signature(path, Path(keys) / "public" / "RPM-GPG-KEY-assist")
    elif info.format == "exe":
        check_authenticode(path, Path(keys) / "public" / "authenticode.crt")
    elif info.format == "tar.gz":
        check_tarball_identity(path, info)
    return info


def _refuse_mismatch(path: Path, field: str, named: str, actual: str) -> None:
    if named != actual:
        raise VerificationError(
            f"{path.name}: file name says {field} {named!r} but the package says {actual!r}",
            hint="publish the file under the name `assist-pkgbuild build` gave it",
        )


def check_deb_identity(path: Path, info: ArtifactInfo) -> None:
    """Compare the deb's control fields with its file name."""
    out = run_tool(
        ["dpkg-deb", "-f", str(path), "Package", "Version", "Architecture"],
        hint=f"{path.name} is not a valid .deb",
    ).decode("utf-8", "replace")
    fields = dict(
        line.split(": ", 1) for line in out.splitlines() if ": " in line and line[0] != " "
    )
    _refuse_mismatch(path, "package", info.package, fields.get("Package", ""))
    _refuse_mismatch(path, "version", info.version, fields.get("Version", ""))
    _refuse_mismatch(path, "arch", info.arch, normalize_arch(fields.get("Architecture", "")))


def check_tarball_identity(path: Path, info: ArtifactInfo) -> None:
    """The tarball must be a readable gzip tar; a payload in it (versions/V/) must be V."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            names = tar.getnames()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise VerificationError(f"{path.name} is not a readable .tar.gz: {exc}") from exc
    versions = {
        name.split("/")[1]
        for name in names
        if name.startswith("versions/") and len(name.split("/")) > 1 and name.split("/")[1]
    }
    for version in sorted(versions):
        _refuse_mismatch(path, "version", info.version, version)


def check_rpm_identity(path: Path, info: ArtifactInfo) -> None:
    """Compare the rpm header's name, version, release and arch with its file name."""
    out = run_tool(
        [
            "rpm",
            "-qp",
            "--nosignature",
            "--qf",
            "%{NAME}\n%{VERSION}\n%{RELEASE}\n%{ARCH}\n",
            str(path),
        ],
        hint=f"{path.name} is not a valid .rpm",
    ).decode("utf-8", "replace")
    lines = out.splitlines()
    if len(lines) < 4:
        raise VerificationError(f"{path.name}: cannot read the rpm header")
    name, version, release, arch = lines[:4]
    _refuse_mismatch(path, "package", info.package, name)
    _refuse_mismatch(path, "version", info.version, version)
    _refuse_mismatch(path, "release", "1", release)
    _refuse_mismatch(path, "arch", info.arch, normalize_arch(arch))


def check_rpm_signature(path: Path, key_file: Path) -> None:
    """Refuse an rpm that is not signed by the release key (dnf gpgcheck=1 would refuse it)."""
    with tempfile.TemporaryDirectory(prefix="assist-rpmdb-") as dbpath:
        run_tool(
            ["rpmkeys", "--dbpath", dbpath, "--import", str(key_file)],
            hint=f"cannot import {key_file}",
        )
        out = run_tool(
            ["rpmkeys", "--dbpath", dbpath, "--checksig", "--verbose", str(path)],
            hint=f"{path.name} must be signed by the release key (assist-pkgbuild build does)",
            failure=VerificationError,
        ).decode("utf-8", "replace")
    bad = ("NOT OK", "MISSING KEYS", "NOKEY", "not signed")
    if any(marker in out for marker in bad) or "Signature" not in out:
        raise VerificationError(
            f"{path.name} is not signed by the release key",
            hint="sign it with the release key (assist-pkgbuild build does)",
        )


def check_authenticode(path: Path, cert_file: Path) -> None:
    """Refuse an exe whose Authenticode signature does not chain to the release certificate."""
    run_tool(
        ["osslsigncode", "verify", "-in", str(path), "-CAfile", str(cert_file)],
        hint=f"{path.name} must be signed by the release certificate (assist-pkgbuild build does)",
        failure=VerificationError,
    )
