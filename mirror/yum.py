"""yum/dnf index verification: repomd.xml signed by the pinned key, data and rpms by hash.

Parsing is pure (bytes in, data out); the signature check is mirror.gpg.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import posixpath
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from common.errors import VerificationError
from mirror.plan import FileEntry

_NS = {
    "repo": "http://linux.duke.edu/metadata/repo",
    "common": "http://linux.duke.edu/metadata/common",
}


@dataclass(frozen=True)
class RpmPackage:
    """One package of primary.xml."""

    name: str
    version: str  # version-release
    arch: str
    location: str  # relative to the repository, e.g. Packages/x.rpm
    size: int
    sha256: str


def _safe_relpath(path: str) -> str:
    """`path` normalised; refuses anything absolute or escaping the repository."""
    norm = posixpath.normpath(path)
    if norm.startswith(("/", "..")) or "/../" in norm or norm == ".":
        raise VerificationError(f"unsafe location in yum metadata: {path!r}")
    return norm


def _parse_xml(data: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise VerificationError(f"{what} is not valid XML: {exc}") from exc


def parse_repomd(data: bytes, prefix: str) -> list[FileEntry]:
    """The data files a (verified) repomd.xml lists, as tree paths under `prefix`."""
    root = _parse_xml(data, "repomd.xml")
    entries = []
    for node in root.findall("repo:data", _NS):
        location = node.find("repo:location", _NS)
        checksum = node.find("repo:checksum", _NS)
        size = node.find("repo:size", _NS)
        if location is None or checksum is None or size is None or size.text is None:
            raise VerificationError("repomd.xml entry lacks location, checksum or size")
        if checksum.get("type") != "sha256":
            raise VerificationError(
                f"repomd.xml uses {checksum.get('type')} checksums; only sha256 is accepted"
            )
        href = _safe_relpath(location.get("href", ""))
        entries.append(
            FileEntry(f"{prefix}/{href}", int(size.text), (checksum.text or "").strip().lower())
        )
    return entries


def primary_entry(entries: list[FileEntry]) -> FileEntry:
    """The primary.xml data file among the repomd entries."""
    for entry in entries:
        name = posixpath.basename(entry.relpath)
        if name.endswith(("primary.xml.gz", "primary.xml.xz", "primary.xml.bz2", "primary.xml")):
            return entry
    raise VerificationError("repomd.xml lists no primary.xml", hint="upstream yum tree is broken")


def decompress(name: str, data: bytes) -> bytes:
    """Uncompressed bytes of a repodata file by its suffix."""
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".bz2"):
        return bz2.decompress(data)
    if name.endswith(".zst"):
        raise VerificationError(f"{name}: zstd repodata is not supported", hint="use gz")
    return data


def parse_primary(data: bytes) -> list[RpmPackage]:
    """Packages listed in (uncompressed) primary.xml."""
    root = _parse_xml(data, "primary.xml")
    result = []
    for node in root.findall("common:package", _NS):
        name = node.findtext("common:name", "", _NS)
        arch = node.findtext("common:arch", "", _NS)
        ver = node.find("common:version", _NS)
        location = node.find("common:location", _NS)
        checksum = node.find("common:checksum", _NS)
        size = node.find("common:size", _NS)
        if ver is None or location is None or checksum is None or size is None:
            raise VerificationError(f"primary.xml entry for {name!r} is incomplete")
        if checksum.get("type") != "sha256":
            raise VerificationError(f"primary.xml entry for {name!r} has no sha256 checksum")
        result.append(
            RpmPackage(
                name=name,
                version=f"{ver.get('ver', '')}-{ver.get('rel', '')}",
                arch=arch,
                location=_safe_relpath(location.get("href", "")),
                size=int(size.get("package", "0")),
                sha256=(checksum.text or "").strip().lower(),
            )
        )
    return result


def rpm_entry(package: RpmPackage, prefix: str) -> FileEntry:
    """Where an rpm lives in the mirrored tree."""
    return FileEntry(
        f"{prefix}/{package.location}", package.size, package.sha256, package.name, package.version
    )
