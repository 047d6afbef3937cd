"""Pure decisions of a sync: which targets and packages to mirror, and which files to fetch.

Nothing here touches disk or network; the orchestrator (mirror/sync.py) feeds it parsed,
verified metadata and acts on the answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from common.platform import DEB_ARCH
from common.targets import TargetInfo
from common.version import version_sort_key

T = TypeVar("T")


@dataclass(frozen=True)
class FileEntry:
    """One file of the mirrored tree: where it goes and what it must hash to."""

    relpath: str  # path inside the repository, POSIX, e.g. targets/pkg/1.0/<sha>.pkg.deb
    length: int  # bytes
    sha256: str  # lowercase hex
    package: str = ""  # for content: which package and version it belongs to (prune)
    version: str = ""

    def record(self) -> list[object]:
        """How the state file remembers a published file."""
        return [self.sha256, self.length, self.package, self.version]


def target_entry(target: TargetInfo) -> FileEntry:
    """The file a signed target is published as (consistent-snapshot name under targets/)."""
    return FileEntry(target.relpath, target.length, target.sha256, target.package, target.version)


@dataclass(frozen=True)
class Filters:
    """What part of the upstream repository a region mirrors; empty means everything."""

    channels: tuple[str, ...] = ()
    oses: tuple[str, ...] = ()
    archs: tuple[str, ...] = ()  # our names: x86_64, aarch64
    keep: int = 0  # newest versions per package; 0 keeps all

    def fingerprint(self) -> str:
        """A stable digest, so a sync notices the filters changed."""
        data = json.dumps(
            [sorted(self.channels), sorted(self.oses), sorted(self.archs), self.keep]
        ).encode()
        return hashlib.sha256(data).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The filters as JSON-ready data (state.json, bundle.json)."""
        return {
            "channels": list(self.channels),
            "oses": list(self.oses),
            "archs": list(self.archs),
            "keep": self.keep,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Filters:
        """Filters from to_dict() data; ValueError if it is not that shape."""
        if not isinstance(data, dict) or set(data) != {"channels", "oses", "archs", "keep"}:
            raise ValueError(f"not a filter set: {data!r}")
        lists = [data[k] for k in ("channels", "oses", "archs")]
        if not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in lists):
            raise ValueError(f"filter lists must hold strings: {data!r}")
        keep = data["keep"]
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
            raise ValueError(f"keep must be a whole number >= 0: {keep!r}")
        return cls(tuple(lists[0]), tuple(lists[1]), tuple(lists[2]), keep)

    def wants_os(self, os_name: str) -> bool:
        return not self.oses or os_name in self.oses

    def wants_arch(self, arch: str) -> bool:
        """Whether `arch` (ours, Debian's or rpm's; noarch/all always) is mirrored."""
        if not self.archs or arch in ("noarch", "all"):
            return True
        ours = {a for a in self.archs} | {DEB_ARCH.get(a, a) for a in self.archs}
        return arch in ours

    def wants_channel(self, channel: str) -> bool:
        return not self.channels or channel in self.channels


@dataclass
class Plan:
    """Every file the mirrored tree must hold after the sync, and which of them to fetch."""

    wanted: list[FileEntry] = field(default_factory=list)
    fetch: list[FileEntry] = field(default_factory=list)

    @property
    def fetch_bytes(self) -> int:
        return sum(entry.length for entry in self.fetch)


def keep_newest(
    items: Iterable[T], package: Callable[[T], str], version: Callable[[T], str], keep: int
) -> list[T]:
    """Items whose version is among the `keep` newest of their package (all when keep <= 0)."""
    items = list(items)
    if keep <= 0:
        return items
    versions: dict[str, set[str]] = {}
    for item in items:
        versions.setdefault(package(item), set()).add(version(item))
    kept = {
        name: set(sorted(found, key=version_sort_key)[-keep:]) for name, found in versions.items()
    }
    return [item for item in items if version(item) in kept[package(item)]]


def select_targets(targets: Iterable[TargetInfo], filters: Filters) -> list[TargetInfo]:
    """Package targets passing the channel/os/arch filters, the newest `keep` per package, and
    every target that is not a package (the release keys): a mirror always carries those."""
    targets = list(targets)
    chosen = [
        t
        for t in targets
        if t.is_package
        and filters.wants_os(t.os)
        and (not t.arch or filters.wants_arch(t.arch))
        and (not filters.channels or any(c in filters.channels for c in t.channels))
    ]
    chosen = keep_newest(chosen, lambda t: t.package, lambda t: t.version, filters.keep)
    chosen += [t for t in targets if not t.is_package]
    return sorted(chosen, key=lambda t: t.path)


def channels_of(targets: Iterable[TargetInfo], filters: Filters) -> list[str]:
    """The channels to mirror apt/yum trees for: those the targets name, filtered."""
    found = {c for t in targets for c in t.channels} or {"stable"}
    return sorted(c for c in found if filters.wants_channel(c))


def plan_fetch(wanted: Iterable[FileEntry], have: Callable[[FileEntry], bool]) -> Plan:
    """Deduplicate `wanted` by path and list those `have` says are missing."""
    unique: dict[str, FileEntry] = {}
    for entry in wanted:
        unique.setdefault(entry.relpath, entry)
    ordered = sorted(unique.values(), key=lambda e: e.relpath)
    return Plan(wanted=ordered, fetch=[e for e in ordered if not have(e)])
