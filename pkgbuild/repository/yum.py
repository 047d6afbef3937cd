"""The yum/dnf tree of a channel: Packages/*.rpm and signed repodata built by createrepo_c.

`yum/<channel>/repodata` is a symlink to a generation directory (see generations.py). createrepo_c
names data files by checksum, and the previous generation's are carried over, so a client holding
the previous repomd.xml still finds what it lists.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.atomic import atomic_write_bytes
from pkgbuild.repository.generations import (
    carry_over,
    current_generation,
    link_or_copy,
    list_generations,
    swap_generation,
)
from pkgbuild.repository.tools import gpg_sign, run_tool

log = logging.getLogger(__name__)

REPODATA = "repodata"
PKGLIST = ".pkglist"


@dataclass(frozen=True)
class RpmEntry:
    """One rpm of a channel: its file name and stored content."""

    filename: str
    source: Path


def channel_root(repo: Path, channel: str) -> Path:
    """REPO/yum/<channel>."""
    return Path(repo) / "yum" / channel


def pkglist_of(entries: list[RpmEntry]) -> bytes:
    """The package list of a generation (also what createrepo_c reads)."""
    return "".join(
        f"Packages/{e.filename}\n" for e in sorted(entries, key=lambda e: e.filename)
    ).encode()


def yum_channel_is_current(repo: Path, channel: str, entries: list[RpmEntry]) -> bool:
    """True when yum/<channel>/repodata was built from exactly these rpms."""
    current = current_generation(channel_root(repo, channel), REPODATA)
    if current is None:
        return False
    listed = current / PKGLIST
    return listed.is_file() and listed.read_bytes() == pkglist_of(entries)


def build_yum_channel(repo: Path, keys: Path, channel: str, entries: list[RpmEntry]) -> None:
    """Write Packages/*.rpm, then build and swap in new signed repodata."""
    root = channel_root(repo, channel)
    packages = root / "Packages"
    packages.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        dest = packages / entry.filename
        if not dest.exists():
            link_or_copy(entry.source, dest)
    previous = current_generation(root, REPODATA)
    pkglist = pkglist_of(entries)

    def build(stage: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".createrepo-", dir=root) as work:
            listing = Path(work) / "pkglist"
            listing.write_bytes(pkglist)
            out = Path(work) / "out"
            out.mkdir()
            run_tool(
                [
                    "createrepo_c",
                    "--quiet",
                    "--no-database",
                    "--pkglist",
                    str(listing),
                    "--outputdir",
                    str(out),
                    str(root),
                ],
                hint="is createrepo-c installed?",
            )
            for item in (out / REPODATA).iterdir():
                shutil.move(str(item), stage / item.name)
        repomd = (stage / "repomd.xml").read_bytes()
        atomic_write_bytes(stage / "repomd.xml.asc", gpg_sign(keys, repomd, "detach"))
        carry_over(previous, stage, listed_by_repomd(previous), is_hash_named)
        atomic_write_bytes(stage / PKGLIST, pkglist)

    swap_generation(root, REPODATA, build)
    prune_packages(root)
    log.info("yum channel %s: %d rpms", channel, len(entries))


def listed_by_repomd(previous: Path | None) -> Callable[[Path], bool]:
    """Select the data files the previous generation's repomd.xml lists."""
    repomd = previous / "repomd.xml" if previous is not None else None
    text = repomd.read_text(encoding="utf-8") if repomd and repomd.is_file() else ""
    return lambda path: f'href="{REPODATA}/{path.name}"' in text


def is_hash_named(path: Path) -> bool:
    """A content-addressed metadata file (createrepo_c names them <sha256>-primary.xml.gz …)."""
    return bool(_HASH_NAMED.match(path.name))


_HASH_NAMED = re.compile(r"^[0-9a-f]{64}-")


def prune_packages(root: Path) -> None:
    """Delete rpms that neither the current nor the previous generation lists."""
    listed: set[str] = set()
    for number in list_generations(root, REPODATA):
        path = root / f".{REPODATA}.{number}" / PKGLIST
        if path.is_file():
            listed.update(path.read_text(encoding="utf-8").split())
    for rpm in (root / "Packages").glob("*.rpm"):
        if f"Packages/{rpm.name}" not in listed:
            log.info("removing unlisted %s", rpm)
            rpm.unlink()
