"""What a sync is asked to do and what it reports: the leaf both sync and fullsync import."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import UsageError
from mirror.plan import Filters

if TYPE_CHECKING:  # types only: a no-op sync imports neither storage nor boto3's seam
    from mirror.source import Source
    from mirror.storage import Storage

MAX_METADATA = 16 << 20  # bytes: refuse larger metadata / index files


@dataclass
class SyncOptions:
    """Everything one sync needs; the CLI fills it from options and config."""

    root: Path
    source: Source
    filters: Filters = field(default_factory=Filters)
    region: str = ""
    public_url: str = ""
    workers: int = 8
    trust_root: Path | None = None
    keyring: Path | None = None
    dests: list[Storage] = field(default_factory=list)  # extra backends, e.g. S3
    progress: bool | None = False  # one overall bar; None: only when stdout is a terminal
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"workers must be at least 1, not {self.workers}")


@dataclass
class SyncReport:
    """What a sync did."""

    changed: bool
    timestamp_version: int
    fetched_files: int = 0
    fetched_bytes: int = 0
    total_files: int = 0
    total_bytes: int = 0
    seconds: float = 0.0


def is_content(rel: str) -> bool:
    """Paths of artifacts (targets, debs, rpms) as opposed to metadata and indexes."""
    return rel.startswith(("targets/", "apt/pool/")) or (
        rel.startswith("yum/") and "/repodata/" not in rel
    )
