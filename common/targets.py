"""The signed targets of a release repository, as every TUF client here reads them (pure).

A target with our custom fields {"package", "version", "os", "arch", "format", "channels"} is a
package artifact (README.md, "Publish a release"); a target without them (the release keys
under `keys/`) is signed content too, but not a package: installers never list it, mirrors
always copy it.
Nothing here imports tuf, so the mirror's planning and the CLIs' start-up stay light.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PACKAGE_FIELDS = ("package", "version", "os", "arch", "format")
# The release's public keys, published as TUF targets so the one pinned root.json
# authenticates them (mirror/README.md, "Safety").
KEYRING_TARGET = "keys/archive-keyring.gpg"
RPM_KEY_TARGET = "keys/RPM-GPG-KEY-assist"
AUTHENTICODE_TARGET = "keys/authenticode.crt"
KEY_TARGETS = (KEYRING_TARGET, RPM_KEY_TARGET, AUTHENTICODE_TARGET)


@dataclass(frozen=True)
class TargetInfo:
    """One file as the signed targets metadata describes it."""

    path: str  # target path: <package>/<version>/<filename>, or keys/<name>
    length: int  # bytes
    sha256: str  # hex
    package: str = ""  # the custom fields; empty for a target that is not a package
    version: str = ""
    os: str = ""
    arch: str = ""
    format: str = ""
    channels: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_package(self) -> bool:
        """Whether the target carries every package custom field (else: keys and the like)."""
        return all((self.package, self.version, self.os, self.arch, self.format))

    @property
    def relpath(self) -> str:
        """Its file under targets/ with consistent snapshots: targets/<dir>/<sha256>.<name>."""
        directory, name = posixpath.split(self.path)
        return posixpath.join("targets", directory, f"{self.sha256}.{name}")


def target_info(path: str, info: Mapping[str, Any]) -> TargetInfo | None:
    """Our view of one signed target (its metadata dict); None (logged) without a sha256."""
    hashes = info.get("hashes") or {}
    sha256 = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    if sha256 is None:
        log.debug("target %s has no sha256; ignored", path)
        return None
    custom = info.get("custom") or {}
    if not isinstance(custom, Mapping):
        custom = {}
    fields = {name: custom.get(name) for name in PACKAGE_FIELDS}
    if not all(isinstance(value, str) and value for value in fields.values()):
        fields = dict.fromkeys(PACKAGE_FIELDS, "")  # not a package: all or nothing
    channels = custom.get("channels") or ()
    return TargetInfo(
        path=path,
        length=int(info["length"]),
        sha256=str(sha256),
        channels=tuple(str(c) for c in channels) if fields["package"] else (),
        **{name: str(value) for name, value in fields.items()},
    )


def parse_targets(signed_targets: Mapping[str, Mapping[str, Any]]) -> list[TargetInfo]:
    """Every target with a sha256 of a verified targets role's `signed.targets`, by path."""
    infos = (target_info(path, signed_targets[path]) for path in sorted(signed_targets))
    return [info for info in infos if info is not None]
