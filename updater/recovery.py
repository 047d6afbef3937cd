"""Crash recovery: finish or undo an interrupted update so `current` is runnable.

Runs at every start of the updater and of the agent (`recover(prefix)`). The decision is a pure
function of the journal; the I/O only carries it out:

    finished journal          nothing (but a missing/broken `current` is repaired)
    downloading/verified/staged   abort: current back to from_version, journal → aborted
    swapped                   roll back: current → from_version, restart, journal → rolled_back
    health_check              check the new version's health again: healthy → committed;
                              a failed check → counted, then rolled back like `swapped`;
                              not checkable from here (we are that agent) → rolled back, uncounted
    rolling_back              finish the rollback

A kill of the updater is not a failure of the version it was checking (docs/SECURITY.md):
only a health check that really failed counts towards the blocklist.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from common.config import load_config
from common.errors import AssistError, LocalStateError, LockedError
from common.layout import Layout, installed_versions, is_runnable
from common.service import ServiceManager, make_service
from updater import journal as jr
from updater.health import wait_healthy
from updater.lock import hold_lock
from updater.policy import count_failure
from updater.staging import clean_staging
from updater.swap import clean_temp_links, point, read_pointer

log = logging.getLogger(__name__)

NOTHING = "nothing"
ABORT = "abort"
ROLLBACK = "rollback"
FINISH_ROLLBACK = "finish_rollback"


def plan_recovery(journal: jr.Journal) -> str:
    """What recovery must do for this journal."""
    if journal.phase in jr.TERMINAL:
        return NOTHING
    if journal.phase in jr.PRE_SWAP:
        return ABORT
    if journal.phase == jr.ROLLING_BACK:
        return FINISH_ROLLBACK
    return ROLLBACK


def recover(prefix: Path, *, service: ServiceManager | None = None) -> str:
    """Finish or undo an interrupted update under `prefix`; returns what was done.

    Results: "nothing", "aborted", "rolled_back", "repaired", or "busy" when an updater holds the
    lock (its update is in progress, not interrupted). When this rolls back and the caller is the
    service's own main process (the agent at start), the restart is skipped: the caller should
    re-exec `<prefix>/current/bin/assist-agent`.
    """
    layout = Layout(Path(prefix))
    if not layout.versions_dir.is_dir():
        return NOTHING
    try:
        with hold_lock(layout.state_dir):
            config = load_config(prefix=layout.prefix)
            if service is None:
                service = make_service(config.update.service, layout.prefix)
            return recover_locked(
                layout,
                service,
                max_failures=config.update.max_failures,
                health=HealthPatience(config.update.health_timeout, config.update.settle),
            )
    except LockedError:
        return "busy"


@dataclass(frozen=True)
class HealthPatience:
    """How long recovery waits for an interrupted health check's version (like apply does)."""

    timeout: float = 60.0  # seconds for state/health.json to appear
    settle: float = 10.0  # seconds its pid must then stay alive


def recover_locked(
    layout: Layout,
    service: ServiceManager | None,
    *,
    max_failures: int = 2,
    health: HealthPatience | None = None,
) -> str:
    """Recovery with the update lock already held."""
    clean_temp_links(layout)
    clean_staging(layout.versions_dir)
    journal = _load_or_reset(layout)
    action = plan_recovery(journal)
    result = NOTHING
    if action == ROLLBACK and journal.phase == jr.HEALTH_CHECK:
        verdict, why = recheck_health(layout, service, journal, health or HealthPatience())
        if verdict is True:
            _save(layout, jr.advance(journal, jr.COMMITTED, error=""))
            log.warning("recovery: %s is healthy; the interrupted update is committed", why)
            return "committed"
        if verdict is False:
            count_failure(layout.state_dir, journal.to_version, max_failures, journal.attempt, why)
        else:
            log.warning("recovery: %s; rolling back without counting a failure", why)
    if action == ABORT:
        _point_back(layout, journal.from_version)
        _save(layout, jr.advance(journal, jr.ABORTED, error=f"interrupted while {journal.phase}"))
        result = "aborted"
    elif action in (ROLLBACK, FINISH_ROLLBACK):
        if action == ROLLBACK:
            journal = jr.advance(
                journal,
                jr.ROLLING_BACK,
                rollback_to=journal.from_version,
                error=f"interrupted while {journal.phase}",
            )
            _save(layout, journal)
        _point_back(layout, journal.rollback_to)
        if journal.previous_version and is_runnable(layout, journal.previous_version):
            point(layout, "previous", journal.previous_version)
        _save(layout, jr.advance(journal, jr.ROLLED_BACK))
        _restart(service)
        result = "rolled_back"
    if repair_current(layout) and result == NOTHING:
        result = "repaired"
    if result != NOTHING:
        log.warning("recovery: %s (journal was %s)", result, journal.phase)
    return result


def recheck_health(
    layout: Layout, service: ServiceManager | None, journal: jr.Journal, patience: HealthPatience
) -> tuple[bool | None, str]:
    """Check again the version whose health check was interrupted: (True, …) healthy,
    (False, why) the check failed, (None, why) it cannot be checked from this process."""
    version = journal.to_version
    if service is None or service.name == "none":
        return None, f"no service manager to check {version} with"
    try:
        pid = service.main_pid()
        if pid == os.getpid():
            return None, f"this process is the agent of {version}; it cannot check itself"
        not_before = (
            0.0  # the old record was removed before the restart: any {version} record is new
        )
        if pid is None:  # the new agent is not running (any more): give it its restart
            not_before = time.time()
            service.restart()
    except AssistError as exc:
        return False, f"restart of {version} failed: {exc}"
    ok, why = wait_healthy(
        layout.health_file,
        version,
        timeout=patience.timeout,
        settle=patience.settle,
        not_before=not_before,
        service_pid=service.main_pid,
    )
    return ok, f"agent {version}" if ok else why


def _load_or_reset(layout: Layout) -> jr.Journal:
    """Load the journal; an unreadable one is moved aside and treated as idle."""
    try:
        return jr.load_journal(layout.state_dir)
    except LocalStateError as exc:
        path = jr.journal_path(layout.state_dir)
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        log.error("%s; moved to %s", exc, aside)
        return jr.Journal()


def _save(layout: Layout, journal: jr.Journal) -> None:
    jr.save_journal(layout.state_dir, journal)


def _point_back(layout: Layout, version: str) -> None:
    """Point current at `version` if it is installed and not already current."""
    if version and is_runnable(layout, version) and read_pointer(layout) != version:
        point(layout, "current", version)


def _restart(service: ServiceManager | None) -> None:
    """Restart the (old) agent, unless we are that agent starting up."""
    if service is None:
        return
    try:
        if service.main_pid() == os.getpid():
            return
        service.restart()
    except AssistError as exc:
        log.error("could not restart the agent after recovery: %s", exc)


def repair_current(layout: Layout) -> bool:
    """If current is missing or broken, point it at previous or the newest runnable version."""
    current = read_pointer(layout)
    if current and is_runnable(layout, current):
        return False
    previous = read_pointer(layout, "previous")
    choices = [previous] if previous else []
    choices += list(reversed(installed_versions(layout)))
    for version in choices:
        if version and is_runnable(layout, version):
            point(layout, "current", version)
            log.warning("current was %s; now %s", current or "missing", version)
            return True
    return False
