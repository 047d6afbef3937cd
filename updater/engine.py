"""The self-update orchestrator: check, apply (journal state machine), manual rollback.

Everything with side effects comes in through the constructor: the trusted repository (TUF over
the ranked mirrors), the service manager, the native-signature check. Decisions are in
policy.py / recovery.py; this module only sequences them and writes the journal.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.atomic import atomic_write_json, atomic_write_text
from common.errors import AssistError, LocalStateError, NotFoundError
from common.health import read_health
from common.layout import AGENT_PACKAGE, Layout, installed_versions
from common.platform import pid_runs
from common.service import ProcessManager, ServiceManager
from updater import journal as jr
from updater.health import wait_healthy
from updater.lock import hold_lock
from updater.policy import (
    NOTHING,
    REFUSE,
    Plan,
    count_failure,
    load_blocklist,
    plan_update,
    versions_to_prune,
)
from updater.recovery import HealthPatience, recover_locked
from updater.staging import (
    StreamStager,
    clean_staging,
    ensure_free_space,
    remove_tree,
    stage_artifact,
)
from updater.swap import point, read_pointer, swap_current

log = logging.getLogger(__name__)

# crash-hook name: the failure is recorded, the journal not yet rolling_back
FAILURE_COUNTED = "failure_counted"

LAST_RESULT_FILE = "last-update.json"
NOT_RUNNING = (
    "no service manager runs the agent and none was running: it is installed, not running; "
    "start it with `assist-agent run --prefix {}`"
)


class RefusedError(LocalStateError):
    """The update was refused by policy (blocklisted version, downgrade without permission)."""

    reference = "update-refused"
    exit_code = 4


class Repository(Protocol):
    """The part of common.trust.TrustedRepository the updater uses."""

    def refresh(self) -> None: ...
    def versions(
        self,
        package: str,
        *,
        channel: str = ...,
        os: str | None = ...,
        arch: str | None = ...,
        format: str | None = ...,
    ) -> list[str]: ...
    def find(
        self,
        package: str,
        *,
        version: str | None = ...,
        channel: str = ...,
        os: str | None = ...,
        arch: str | None = ...,
        format: str | None = ...,
    ) -> object: ...
    def download(
        self, target: object, dest_dir: Path, deliver: Callable[[bytes], None] | None = ...
    ) -> Path: ...


@dataclass
class UpdateSettings:
    """What to update to and how patient to be."""

    os: str
    arch: str
    format: str  # tar.gz on Linux, exe on Windows (deb/rpm payloads stage too)
    package: str = AGENT_PACKAGE
    channel: str = "stable"
    health_timeout: float = 60.0  # seconds for the new agent to report health
    settle: float = 10.0  # seconds its pid must then stay alive
    max_failures: int = 2
    keep_versions: int = 3


@dataclass
class Outcome:
    """What apply/rollback did; `result` is updated, up_to_date, rolled_back."""

    result: str
    from_version: str | None
    to_version: str
    reason: str = ""


class Updater:
    """Self-update of the agent installed under one prefix."""

    def __init__(
        self,
        layout: Layout,
        repo: Repository | None,
        service: ServiceManager,
        settings: UpdateSettings,
        *,
        verify_native: Callable[[Path, str, Path], None] | None = None,
    ) -> None:
        self.layout = layout
        self.repo = repo
        self.service = service
        self.settings = settings
        self.verify_native = verify_native

    def check(self) -> Plan:
        """Refresh trusted metadata and say what apply would do."""
        self.layout.ensure()
        with hold_lock(self.layout.state_dir):
            self._recover()
            return self._plan(None, allow_downgrade=False)

    def apply(self, version: str | None = None, *, allow_downgrade: bool = False) -> Outcome:
        """Update to the newest (or the given) version; roll back if it is not healthy."""
        self.layout.ensure()
        with hold_lock(self.layout.state_dir):
            self.service = adopt_running_agent(self.layout, self.service)
            self._recover()
            current = read_pointer(self.layout)
            if current is None:
                raise LocalStateError(
                    f"no agent is installed under {self.layout.prefix}",
                    hint="install it first: assist-install agent --prefix PREFIX",
                )
            plan = self._plan(version, allow_downgrade=allow_downgrade)
            if plan.action == NOTHING:
                return Outcome("up_to_date", current, current or "", plan.reason)
            if plan.action == REFUSE:
                self._remember("refused", plan.version, plan.reason)
                raise RefusedError(f"update to {plan.version} refused: {plan.reason}")
            outcome = self._update(current, plan.version)
            self._remember(outcome.result, outcome.to_version, outcome.reason)
            return outcome

    def rollback(self) -> Outcome:
        """Go back to `previous` (no network needed) and restart."""
        self.layout.ensure()
        with hold_lock(self.layout.state_dir):
            self.service = adopt_running_agent(self.layout, self.service)
            self._recover()
            current = read_pointer(self.layout)
            previous = read_pointer(self.layout, "previous")
            if not previous or previous == current:
                raise NotFoundError("no previous version to roll back to")
            journal = jr.load_journal(self.layout.state_dir)
            journal = jr.advance(
                journal,
                jr.ROLLING_BACK,
                from_version=current or "",
                to_version=previous,
                rollback_to=previous,
                error="manual rollback",
            )
            self._save(journal)
            swap_current(self.layout, previous)
            self._save(jr.advance(journal, jr.ROLLED_BACK))
            self._restart_quietly()
            self._remember("rolled_back", previous, "manual rollback")
            return Outcome("rolled_back", current, previous, "manual rollback")

    # -- steps ---------------------------------------------------------------------------------

    def _recover(self) -> str:
        """Finish or undo an interrupted update first (with this run's health patience)."""
        s = self.settings
        return recover_locked(
            self.layout,
            self.service,
            max_failures=s.max_failures,
            health=HealthPatience(s.health_timeout, s.settle),
        )

    def _plan(self, version: str | None, *, allow_downgrade: bool) -> Plan:
        repo = self._repo()
        repo.refresh()
        s = self.settings
        available = repo.versions(
            s.package, channel=s.channel, os=s.os, arch=s.arch, format=s.format
        )
        if not available:  # a typo'd channel must not read as "up to date" forever
            raise NotFoundError(
                f"no {s.package} release for {s.os}/{s.arch} ({s.format}) in channel {s.channel!r}",
                hint="check --channel / [update] channel, and the mirror (assist-mirror status)",
            )
        return plan_update(
            read_pointer(self.layout),
            available,
            requested=version,
            allow_downgrade=allow_downgrade,
            blocked=load_blocklist(self.layout.state_dir).blocked,
        )

    def _repo(self) -> Repository:
        if self.repo is None:
            raise LocalStateError("no repository configured")
        return self.repo

    def _update(self, current: str | None, version: str) -> Outcome:
        """Download, verify, stage, swap, restart, health-check; roll back on failure."""
        s = self.settings
        repo = self._repo()
        target = repo.find(
            s.package, version=version, channel=s.channel, os=s.os, arch=s.arch, format=s.format
        )
        ensure_free_space(self.layout.prefix, 3 * int(getattr(target, "length", 0)))
        before = jr.load_journal(self.layout.state_dir)
        journal = jr.begin(
            before,
            current or "",
            version,
            str(getattr(target, "path", "")),
            s.format,
            previous_version=read_pointer(self.layout, "previous") or "",
        )
        self._save(journal)
        try:
            journal = self._fetch_and_stage(journal, target)
        except AssistError:
            # Nothing changed on disk that matters: put the journal back as it was.
            clean_staging(self.layout.versions_dir)
            self._save(before)
            raise
        swap_current(self.layout, version)
        journal = jr.advance(journal, jr.SWAPPED)
        self._save(journal)
        not_before = self._clear_health()
        restart_error = self._try_restart()
        journal = jr.advance(journal, jr.HEALTH_CHECK)
        self._save(journal)
        ok, reason = self._check_health(version, not_before, restart_error)
        if not ok:
            return self._roll_back_failed(journal, reason)
        self._save(jr.advance(journal, jr.COMMITTED))
        removed = prune_versions(self.layout, s.keep_versions)
        if removed:
            log.info("pruned versions %s", ", ".join(removed))
        if self.service.name == "none":  # nothing runs it, and no agent was running to restart
            return Outcome("installed", current, version, NOT_RUNNING.format(self.layout.prefix))
        return Outcome("updated", current, version, reason)

    def _fetch_and_stage(self, journal: jr.Journal, target: object) -> jr.Journal:
        """downloading → verified → staged. A tar.gz is unpacked while it downloads, from pieces
        the signed metadata vouches for (StreamStager); versions/V appears only after the
        whole-file check. Other formats are checked natively first, then unpacked."""
        s = self.settings
        dest = self.layout.cache_dir / journal.to_version
        stager = None
        if s.format == "tar.gz":
            length = int(getattr(target, "length", 0))
            stager = StreamStager(journal.to_version, self.layout.versions_dir, length)
        try:
            if stager is None:
                artifact = self._repo().download(target, dest)
            else:
                artifact = self._repo().download(target, dest, deliver=stager.feed)
            if self.verify_native is not None:
                self.verify_native(artifact, s.format, self.layout.keys_dir())
            journal = jr.advance(journal, jr.VERIFIED, artifact=str(artifact))
            self._save(journal)
            if stager is None:
                stage_artifact(artifact, s.format, journal.to_version, self.layout.versions_dir)
            else:
                stager.finish(artifact)
        except BaseException:
            if stager is not None:
                stager.abort()
            raise
        journal = jr.advance(journal, jr.STAGED)
        self._save(journal)
        return journal

    def _clear_health(self) -> float:
        """Remove the old health record so only the new agent's counts; returns the time."""
        with contextlib.suppress(FileNotFoundError):
            self.layout.health_file.unlink()
        return time.time()

    def _try_restart(self) -> str:
        """Restart the agent; the error text if the service manager failed."""
        try:
            self.service.restart()
        except AssistError as exc:
            return f"restart failed: {exc}"
        return ""

    def _check_health(
        self, version: str, not_before: float, restart_error: str
    ) -> tuple[bool, str]:
        """Wait for `version` to report healthy (timeout + settle)."""
        if restart_error:
            return False, restart_error
        if self.service.name == "none":
            return True, "no service manager: health not checked"
        return wait_healthy(
            self.layout.health_file,
            version,
            timeout=self.settings.health_timeout,
            settle=self.settings.settle,
            not_before=not_before,
            service_pid=self.service.main_pid,
        )

    def _roll_back_failed(self, journal: jr.Journal, reason: str) -> Outcome:
        """rolling_back → rolled_back: old version back, restarted, failure recorded."""
        old = journal.from_version
        # Counted before the journal says rolling_back: a kill between the two makes recovery
        # repeat the count, which the attempt id turns into a no-op (never a lost count).
        count_failure(
            self.layout.state_dir,
            journal.to_version,
            self.settings.max_failures,
            journal.attempt,
            reason,
        )
        jr.crash_point(FAILURE_COUNTED)
        journal = jr.advance(journal, jr.ROLLING_BACK, rollback_to=old, error=reason)
        self._save(journal)
        if old:
            point(self.layout, "current", old)
        restore_previous(self.layout, journal.previous_version)
        not_before = self._clear_health()
        restart_error = self._try_restart()
        if old and self.service.name != "none":
            ok, why = self._check_health(old, not_before, restart_error)
            if not ok:
                log.error("the old version %s is not healthy either: %s", old, why)
        self._save(jr.advance(journal, jr.ROLLED_BACK))
        log.warning("update to %s failed (%s); back on %s", journal.to_version, reason, old)
        return Outcome("rolled_back", old, journal.to_version, reason)

    def _restart_quietly(self) -> None:
        try:
            self.service.restart()
        except AssistError as exc:
            log.error("could not restart the agent: %s", exc)

    def _save(self, journal: jr.Journal) -> None:
        jr.save_journal(self.layout.state_dir, journal)

    def _remember(self, result: str, version: str, reason: str) -> None:
        """The outcome of the last attempt, for `status` (kept apart from the journal)."""
        atomic_write_json(
            self.layout.state_dir / LAST_RESULT_FILE,
            {"result": result, "version": version, "reason": reason, "time": jr.now_iso()},
            mode=0o600,
        )


def adopt_running_agent(layout: Layout, service: ServiceManager) -> ServiceManager:
    """With no service manager (`--service none`), an agent started by hand (`assist-agent run`)
    is still restarted onto the new version: its pid comes from state/health.json, and the
    `process` manager (pidfile) takes it over for this update. The pid is only trusted when it
    is alive and its command line names this prefix (a stale record must not get a signal)."""
    if service.name != "none":
        return service
    record = read_health(layout.health_file)
    if record is None or not pid_runs(record.pid, str(layout.prefix)):
        return service
    manager = ProcessManager(layout.prefix)
    atomic_write_text(manager.pidfile, f"{record.pid}\n", mode=0o600)
    log.info("no service manager: restarting the running agent (pid %d) ourselves", record.pid)
    return manager


def restore_previous(layout: Layout, version: str) -> None:
    """After a rollback, `previous` points where it did before the attempt."""
    if version and layout.version_dir(version).is_dir():
        point(layout, "previous", version)


def prune_versions(layout: Layout, keep: int) -> list[str]:
    """Remove installed versions beyond the newest `keep` (never current/previous) and their cache."""
    protect = [v for v in (read_pointer(layout), read_pointer(layout, "previous")) if v]
    removed = versions_to_prune(installed_versions(layout), keep, protect)
    for version in removed:
        remove_tree(layout.version_dir(version))
    kept = set(installed_versions(layout))
    if layout.cache_dir.is_dir():
        for entry in layout.cache_dir.iterdir():
            if entry.name not in kept:
                remove_tree(entry)
    return removed
