"""apt index verification: InRelease signed by the pinned key, indexes and .debs by hash.

Parsing is pure (text in, data out); the signature check is mirror.gpg.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
import hashlib
import posixpath
from dataclasses import dataclass, field

from common.errors import ExpiredMetadataError, VerificationError
from mirror.plan import FileEntry

_HASHES = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}


@dataclass
class Release:
    """The fields of a (verified) Release file that a mirror needs."""

    fields: dict[str, str]
    sha256: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (hash, size)
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)  # section -> path -> hash

    @property
    def valid_until(self) -> dt.datetime | None:
        text = self.fields.get("Valid-Until")
        return email.utils.parsedate_to_datetime(text) if text else None


@dataclass(frozen=True)
class DebPackage:
    """One paragraph of a Packages index."""

    name: str
    version: str
    arch: str
    filename: str  # relative to the apt/ root, e.g. pool/main/a/aliyun-assist/x.deb
    size: int
    sha256: str


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Paragraphs of a deb822 document; continuation lines are joined with newlines."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def parse_release(text: str) -> Release:
    """Parse the signed text of InRelease / Release."""
    paragraphs = parse_deb822(text)
    if not paragraphs:
        raise VerificationError("empty Release file", hint="the upstream apt tree is broken")
    fields = paragraphs[0]
    release = Release(fields={k: v for k, v in fields.items() if k not in _HASHES})
    for section in _HASHES:
        for line in fields.get(section, "").splitlines():
            parts = line.split()
            if len(parts) == 3:
                release.hashes.setdefault(section, {})[parts[2]] = parts[0].lower()
                if section == "SHA256":
                    release.sha256[parts[2]] = (parts[0].lower(), int(parts[1]))
    return release


def by_hash_paths(release: Release, path: str, data: bytes) -> list[str]:
    """by-hash copies of a verified index (Acquire-By-Hash), for each hash its Release lists."""
    if release.fields.get("Acquire-By-Hash", "").lower() != "yes":
        return []
    directory = posixpath.dirname(path)
    result = []
    for section, algorithm in _HASHES.items():
        listed = release.hashes.get(section, {}).get(path)
        if listed is not None and hashlib.new(algorithm, data).hexdigest() == listed:
            result.append(f"{directory}/by-hash/{section}/{listed}")
    return result


def check_release_fresh(release: Release, channel: str, now: dt.datetime) -> None:
    """Refuse a Release past its Valid-Until."""
    until = release.valid_until
    if until is not None and until < now:
        raise ExpiredMetadataError(
            f"apt Release of channel {channel} expired at {until.isoformat()}",
            hint="the upstream must re-publish (assist-pkgbuild publish) before the mirror can sync",
        )


def index_entries(release: Release, channel: str, debarchs: list[str] | None) -> list[FileEntry]:
    """The binary index files of the selected architectures listed in Release, as tree paths."""
    entries = []
    for path, (sha, size) in sorted(release.sha256.items()):
        parts = path.split("/")
        if len(parts) < 3 or not parts[1].startswith("binary-"):
            continue
        if debarchs is not None and parts[1][len("binary-") :] not in debarchs:
            continue
        entries.append(FileEntry(f"apt/dists/{channel}/{path}", size, sha))
    return entries


def parse_packages(text: str) -> list[DebPackage]:
    """Packages of a Packages index; a paragraph lacking hash or size is refused."""
    result = []
    for para in parse_deb822(text):
        try:
            result.append(
                DebPackage(
                    name=para["Package"],
                    version=para["Version"],
                    arch=para.get("Architecture", "all"),
                    filename=para["Filename"],
                    size=int(para["Size"]),
                    sha256=para["SHA256"].lower(),
                )
            )
        except (KeyError, ValueError) as exc:
            raise VerificationError(
                f"Packages entry without {exc}", hint="the upstream apt index is malformed"
            ) from exc
    return result


def decode_packages(relpath: str, data: bytes) -> str:
    """The text of a Packages or Packages.gz file."""
    if relpath.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8")


def pool_entry(package: DebPackage) -> FileEntry:
    """Where a package file lives in the mirrored tree; refuses paths escaping apt/."""
    path = posixpath.normpath(package.filename)
    if path.startswith(("/", "..")) or "/../" in path:
        raise VerificationError(f"unsafe Filename in Packages: {package.filename!r}")
    return FileEntry(f"apt/{path}", package.size, package.sha256, package.name, package.version)
