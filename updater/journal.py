"""The update journal (docs/architecture.md, Self-update): pure transitions plus atomic load/save.

    idle → downloading → verified → staged → swapped → health_check → committed
    any failure after `swapped`: rolling_back → rolled_back
    a failure before `swapped` (bad download, verification, staging): → aborted

The journal lives in `state/update.json` and is rewritten (fsync + atomic replace) at every
transition, so a crash leaves the last phase that was fully reached.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json
from common.errors import LocalStateError
from common.layout import STAGING_PREFIX, Layout, is_swap_temp

JOURNAL_FILE = "update.json"
CRASH_ENV = "ASSIST_UPDATE_CRASH_AT"  # test hook: SIGKILL ourselves right after this phase

IDLE = "idle"
DOWNLOADING = "downloading"
VERIFIED = "verified"
STAGED = "staged"
SWAPPED = "swapped"
HEALTH_CHECK = "health_check"
COMMITTED = "committed"
ROLLING_BACK = "rolling_back"
ROLLED_BACK = "rolled_back"
ABORTED = "aborted"

PHASES = (
    IDLE,
    DOWNLOADING,
    VERIFIED,
    STAGED,
    SWAPPED,
    HEALTH_CHECK,
    COMMITTED,
    ROLLING_BACK,
    ROLLED_BACK,
    ABORTED,
)
TERMINAL = frozenset({IDLE, COMMITTED, ROLLED_BACK, ABORTED})
PRE_SWAP = frozenset({DOWNLOADING, VERIFIED, STAGED})
POST_SWAP = frozenset({SWAPPED, HEALTH_CHECK, ROLLING_BACK})

_NEXT: dict[str, frozenset[str]] = {
    # from a finished journal: a new attempt, or a manual rollback to `previous`
    IDLE: frozenset({DOWNLOADING, ROLLING_BACK}),
    COMMITTED: frozenset({DOWNLOADING, ROLLING_BACK}),
    ROLLED_BACK: frozenset({DOWNLOADING, ROLLING_BACK}),
    ABORTED: frozenset({DOWNLOADING, ROLLING_BACK}),
    DOWNLOADING: frozenset({VERIFIED, ABORTED}),
    VERIFIED: frozenset({STAGED, ABORTED}),
    STAGED: frozenset({SWAPPED, ABORTED}),
    SWAPPED: frozenset({HEALTH_CHECK, ROLLING_BACK}),
    HEALTH_CHECK: frozenset({COMMITTED, ROLLING_BACK}),
    ROLLING_BACK: frozenset({ROLLED_BACK}),
}


@dataclass(frozen=True)
class Journal:
    """One update attempt: where it came from, where it goes, and how far it got."""

    phase: str = IDLE
    from_version: str = ""
    to_version: str = ""
    target: str = ""  # TUF target path
    artifact: str = ""  # downloaded file, once verified
    format: str = ""
    started: str = ""  # ISO time the attempt began
    updated: str = ""  # ISO time of the last transition
    error: str = ""  # why it was aborted or rolled back
    rollback_to: str = ""  # version `current` goes back to, set on entering rolling_back
    previous_version: str = ""  # what `previous` pointed at before the attempt
    history: tuple[str, ...] = field(default_factory=tuple)  # phases passed, in order
    attempt: str = ""  # random id of this attempt (failures are counted once per attempt)

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def can_transition(current: str, new: str) -> bool:
    """Whether `new` may follow `current` in the state machine."""
    return new in _NEXT.get(current, frozenset())


def begin(
    journal: Journal,
    from_version: str,
    to_version: str,
    target: str,
    fmt: str,
    previous_version: str = "",
) -> Journal:
    """Start a new attempt: only from a finished journal."""
    if not journal.finished:
        raise LocalStateError(
            f"an update is in progress (phase {journal.phase})",
            hint="run `assist-update recover` first",
        )
    stamp = now_iso()
    return Journal(
        phase=DOWNLOADING,
        from_version=from_version,
        to_version=to_version,
        target=target,
        format=fmt,
        previous_version=previous_version,
        started=stamp,
        updated=stamp,
        history=(DOWNLOADING,),
        attempt=os.urandom(8).hex(),
    )


def advance(journal: Journal, phase: str, **changes: Any) -> Journal:
    """Move to `phase`, refusing any transition the state machine does not allow."""
    if not can_transition(journal.phase, phase):
        raise LocalStateError(
            f"illegal update transition {journal.phase} → {phase}",
            hint="the journal is inconsistent; run `assist-update recover`",
        )
    return replace(
        journal, phase=phase, updated=now_iso(), history=(*journal.history, phase), **changes
    )


def journal_from_dict(data: Any) -> Journal:
    """Build a Journal from parsed JSON, refusing unknown phases and shapes."""
    if not isinstance(data, dict):
        raise LocalStateError("update journal is not a JSON object")
    known = {f.name for f in fields(Journal)}
    values = {k: v for k, v in data.items() if k in known}
    values["history"] = tuple(values.get("history") or ())
    journal = Journal(**values)
    if journal.phase not in PHASES:
        raise LocalStateError(f"update journal has unknown phase {journal.phase!r}")
    return journal


def journal_path(state_dir: Path) -> Path:
    return state_dir / JOURNAL_FILE


def may_need_recovery(layout: Layout) -> bool:
    """Whether an update may have been interrupted under `layout`: a journal that is unfinished or
    unreadable, a staging directory, or a swap's temp link. Cheap: the agent asks this at every
    start and imports the updater's recovery (tarfile, zipfile, ...) only when it says yes."""
    try:
        text = journal_path(layout.state_dir).read_text(encoding="utf-8")
        if json.loads(text).get("phase") not in TERMINAL:
            return True
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: recovery resets it and says so
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if any(entry.name.startswith(STAGING_PREFIX) for entry in os.scandir(layout.versions_dir)):
            return True
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return any(is_swap_temp(entry.name) for entry in os.scandir(layout.prefix))
    return False


def load_journal(state_dir: Path) -> Journal:
    """Read the journal; a missing file is an idle journal."""
    path = journal_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Journal()
    try:
        return journal_from_dict(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise LocalStateError(
            f"update journal {path} is unreadable: {exc}",
            hint="it is written atomically, so this is outside damage: inspect and delete it",
        ) from exc


def save_journal(state_dir: Path, journal: Journal) -> None:
    """Write the journal atomically, then fire the crash hook for this phase if armed."""
    data = asdict(journal)
    data["history"] = list(journal.history)
    atomic_write_json(journal_path(state_dir), data, mode=0o600)
    crash_point(journal.phase)


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process if ASSIST_UPDATE_CRASH_AT names this point."""
    if os.environ.get(CRASH_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
