"""Update policy: which version to move to (pure), failure counts and the blocklist."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from common.atomic import atomic_write_json
from common.errors import LocalStateError, NotFoundError
from common.version import version_sort_key

log = logging.getLogger(__name__)

BLOCKLIST_FILE = "blocklist.json"

UPDATE = "update"
NOTHING = "nothing"
REFUSE = "refuse"


@dataclass(frozen=True)
class Plan:
    """What apply should do: update to `version`, nothing, or refuse (with why)."""

    action: str
    version: str = ""
    reason: str = ""


@dataclass
class Blocklist:
    """Failures per version; a version reaching max_failures is blocked."""

    failures: dict[str, int] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    counted: list[str] = field(default_factory=list)  # attempts already counted (newest last)
    reasons: dict[str, str] = field(default_factory=dict)  # version -> why it last failed

    def is_blocked(self, version: str) -> bool:
        return version in self.blocked


def parse_version(text: str) -> Version:
    """packaging's Version, with a clear error for junk."""
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise LocalStateError(f"not a version: {text!r}") from exc


def plan_update(
    current: str | None,
    available: Sequence[str],
    *,
    requested: str | None = None,
    allow_downgrade: bool = False,
    blocked: Sequence[str] = (),
) -> Plan:
    """Choose the target version from what the repository offers."""
    cur = parse_version(current) if current else None
    if requested:
        if requested not in available:
            raise NotFoundError(
                f"version {requested} is not published",
                hint=f"available: {', '.join(available) or 'none'}",
            )
        if requested == current:
            return Plan(NOTHING, requested, f"already on {requested}")
        if requested in blocked:
            return Plan(REFUSE, requested, f"{requested} is blocklisted after failed updates")
        if cur is not None and parse_version(requested) < cur and not allow_downgrade:
            return Plan(
                REFUSE, requested, f"{requested} is older than {current}: pass --allow-downgrade"
            )
        return Plan(UPDATE, requested)
    newer = sorted(
        (v for v in available if cur is None or parse_version(v) > cur), key=parse_version
    )
    usable = [v for v in newer if v not in blocked]
    if usable:
        return Plan(UPDATE, usable[-1])
    if newer:
        return Plan(REFUSE, newer[-1], f"{newer[-1]} is blocklisted after failed updates")
    return Plan(NOTHING, current or "", "up to date")


def record_failure(
    blocklist: Blocklist, version: str, max_failures: int, attempt: str = "", reason: str = ""
) -> Blocklist:
    """Count one failed update to `version`; block it when it reaches max_failures.

    `attempt` (the journal's id) makes this idempotent: a recovery that repeats the rollback of
    an attempt killed half-way does not count that attempt twice.
    """
    if attempt and attempt in blocklist.counted:
        return blocklist
    failures = dict(blocklist.failures)
    failures[version] = failures.get(version, 0) + 1
    blocked = list(blocklist.blocked)
    if failures[version] >= max_failures and version not in blocked:
        blocked.append(version)
    counted = [*blocklist.counted, attempt][-COUNTED_KEEP:] if attempt else list(blocklist.counted)
    reasons = {**blocklist.reasons, version: reason or "the health check failed"}
    return Blocklist(failures, blocked, counted, reasons)


def unblock(blocklist: Blocklist, version: str) -> Blocklist:
    """Forget the failures of `version` (an operator's decision: `assist-update unblock`)."""
    if version not in blocklist.blocked and version not in blocklist.failures:
        raise NotFoundError(
            f"{version} is not blocklisted and has no recorded failures",
            hint="see `assist-update status` for the blocklist",
        )
    return Blocklist(
        {v: n for v, n in blocklist.failures.items() if v != version},
        [v for v in blocklist.blocked if v != version],
        list(blocklist.counted),
        {v: r for v, r in blocklist.reasons.items() if v != version},
    )


COUNTED_KEEP = 20


def count_failure(
    state_dir: Path, version: str, max_failures: int, attempt: str, reason: str = ""
) -> None:
    """Record a failed attempt in state/blocklist.json, best effort: a rollback must never
    wait on it (a full disk right after unpacking a new version is exactly when it fails)."""
    try:
        blocklist = load_blocklist(state_dir)
        counted = record_failure(blocklist, version, max_failures, attempt, reason)
        save_blocklist(state_dir, counted)
    except (LocalStateError, OSError) as exc:
        log.error("could not count the failure of %s in the blocklist: %s", version, exc)


def load_blocklist(state_dir: Path) -> Blocklist:
    """Read state/blocklist.json (missing = empty)."""
    try:
        data = json.loads((state_dir / BLOCKLIST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Blocklist()
    except (OSError, ValueError) as exc:
        raise LocalStateError(
            f"blocklist {state_dir / BLOCKLIST_FILE} is unreadable: {exc}",
            hint="it is written atomically, so this is outside damage: inspect and delete it",
        ) from exc
    try:
        return Blocklist(
            {str(k): int(v) for k, v in dict(data.get("failures", {})).items()},
            [str(v) for v in data.get("blocked", [])],
            [str(v) for v in data.get("counted", [])],
            {str(k): str(v) for k, v in dict(data.get("reasons", {})).items()},
        )
    except (AttributeError, TypeError, ValueError) as exc:  # JSON of the wrong shape
        raise LocalStateError(
            f"blocklist {state_dir / BLOCKLIST_FILE} is unreadable: not a blocklist ({exc})",
            hint="it is written atomically, so this is outside damage: inspect and delete it",
        ) from exc


def save_blocklist(state_dir: Path, blocklist: Blocklist) -> None:
    atomic_write_json(
        state_dir / BLOCKLIST_FILE,
        {
            "failures": blocklist.failures,
            "blocked": blocklist.blocked,
            "counted": blocklist.counted,
            "reasons": blocklist.reasons,
        },
        mode=0o600,
    )


def versions_to_prune(installed: Sequence[str], keep: int, protect: Sequence[str]) -> list[str]:
    """Oldest versions beyond the newest `keep`, never one in `protect` (current, previous)."""
    ordered = sorted(installed, key=version_sort_key, reverse=True)
    kept = [v for v in ordered if v in protect]
    for version in ordered:
        if len(kept) >= keep:
            break
        if version not in kept:
            kept.append(version)
    return [v for v in installed if v not in kept]
