"""Artifact file names and TUF target paths: one place that knows the naming scheme.

    deb     NAME_V_DEBARCH.deb            aliyun-assist_2.2.5_amd64.deb
    rpm     NAME-V-1.ARCH.rpm             aliyun-assist-2.2.5-1.x86_64.rpm
    exe     NAME-V-setup.exe              aliyun-assist-2.2.5-setup.exe      (windows, x86_64)
    tar.gz  NAME-V-linux-ARCH.tar.gz      aliyun-assist-2.2.5-linux-x86_64.tar.gz

Target path in the TUF repository: NAME/V/FILENAME.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import UsageError
from common.platform import DEB_ARCH, normalize_arch

FORMATS = ("deb", "rpm", "exe", "tar.gz")
_NAME = r"(?P<package>[a-z0-9][a-z0-9+.-]*?)"
_VERSION = r"(?P<version>[0-9][A-Za-z0-9.+~]*)"
_PATTERNS = {
    "deb": re.compile(rf"^{_NAME}_{_VERSION}_(?P<arch>[a-z0-9]+)\.deb$"),
    "rpm": re.compile(rf"^{_NAME}-{_VERSION}-(?P<release>[0-9]+)\.(?P<arch>[a-z0-9_]+)\.rpm$"),
    "exe": re.compile(rf"^{_NAME}-{_VERSION}-setup\.exe$"),
    "tar.gz": re.compile(rf"^{_NAME}-{_VERSION}-(?P<os>linux)-(?P<arch>[a-z0-9_]+)\.tar\.gz$"),
}


@dataclass(frozen=True)
class ArtifactInfo:
    """What an artifact is, as published in TUF custom fields."""

    package: str
    version: str
    os: str  # linux | windows
    arch: str  # x86_64 | aarch64 | i386 (ours, not Debian's)
    format: str  # deb | rpm | exe | tar.gz

    @property
    def filename(self) -> str:
        return artifact_filename(self.package, self.version, self.arch, self.format)

    @property
    def target_path(self) -> str:
        return f"{self.package}/{self.version}/{self.filename}"

    def custom(self, channels: list[str]) -> dict[str, object]:
        """The TUF target custom fields."""
        return {
            "package": self.package,
            "version": self.version,
            "os": self.os,
            "arch": self.arch,
            "format": self.format,
            "channels": sorted(channels),
        }


def artifact_filename(package: str, version: str, arch: str, fmt: str) -> str:
    """The file name of an artifact in format `fmt`."""
    arch = normalize_arch(arch)
    if fmt == "deb":
        return f"{package}_{version}_{DEB_ARCH.get(arch, arch)}.deb"
    if fmt == "rpm":
        return f"{package}-{version}-1.{arch}.rpm"
    if fmt == "exe":
        return f"{package}-{version}-setup.exe"
    if fmt == "tar.gz":
        return f"{package}-{version}-linux-{arch}.tar.gz"
    raise UsageError(f"unknown artifact format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")


def parse_artifact_filename(name: str) -> ArtifactInfo:
    """Recognise an artifact by its file name."""
    for fmt, pattern in _PATTERNS.items():
        match = pattern.match(name)
        if match:
            groups = match.groupdict()
            arch = normalize_arch(groups.get("arch") or "x86_64")
            os_name = "windows" if fmt == "exe" else "linux"
            return ArtifactInfo(groups["package"], groups["version"], os_name, arch, fmt)
    raise UsageError(
        f"not an artifact name: {name!r}",
        hint="expected NAME_V_ARCH.deb, NAME-V-1.ARCH.rpm, NAME-V-setup.exe or NAME-V-linux-ARCH.tar.gz",
    )
