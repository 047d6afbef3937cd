"""Self-updates started by the agent: on the [update] schedule (cron + splay) and when the server
asks, never while a one-shot task runs (docs/schedules.md, docs/agent-protocol.md). The server's
AgentUpgradeConfig (received signed in update_check) keeps scheduled updates inside its upgrade
windows, or stops them (DisableUpgrade).

The agent only starts `assist-update apply` detached and logs its output to log/update.log; the
updater does the work and restarts the agent onto the new version.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent import schedule
from agent.client import AgentClient
from agent.timers import Timers
from common.atomic import atomic_write_json
from common.config import Config
from common.errors import AssistError
from common.layout import Layout
from common.platform import detect_platform
from common.upgradewindow import UpgradePolicy
from common.version import agent_version

log = logging.getLogger(__name__)

UPDATE_BUSY_RETRY = 60.0  # seconds to wait when an update finds a one-shot task running
MAX_UPDATE_LOG = 1 << 20  # bytes of log/update.log before it is rotated to update.log.1
FIRST_CHECK_GRACE = 60.0  # seconds scheduled updates wait for the first update check
POLICY_FILE = "upgrade-policy.json"  # state/: the server's AgentUpgradeConfig, last received


class UpdateTrigger:
    """When to start the updater: scheduled, on the server's request, retried while busy."""

    def __init__(
        self,
        config: Config,
        timers: Timers,
        client: AgentClient,
        busy: Callable[[], bool],
        *,
        command: Sequence[str] | None = None,  # default: <prefix>/current/bin/assist-update …
        busy_retry: float = UPDATE_BUSY_RETRY,  # seconds
        umask: int | None = None,  # the updater's umask (the agent's own is 077)
    ) -> None:
        self.config = config
        self.timers = timers
        self.client = client
        self.busy = busy
        self.command = command
        self.busy_retry = busy_retry
        self.umask = umask
        self.process: subprocess.Popen[bytes] | None = None
        self.timer = 0
        self._generation = 0
        self._lock = threading.RLock()
        self.policy = load_policy(config.layout.state_dir)

    def start(self, grace: float = FIRST_CHECK_GRACE) -> None:
        """Arm scheduled updates: now with the upgrade settings kept from an earlier run, else
        after the first update check (or `grace` seconds, if the server cannot be reached)."""
        if self.policy is not None:
            self.schedule()
        else:
            self.timers.call_at(time.time() + grace, self._arm_once)

    def _arm_once(self) -> None:
        with self._lock:
            if self._generation == 0:
                self.schedule()

    def schedule(self, after: float | None = None) -> None:
        """Arm the next scheduled update: [update] schedule plus splay (docs/schedules.md),
        moved into the server's upgrade window when one is set (docs/agent-protocol.md)."""
        with self._lock:
            self._generation += 1
            generation = self._generation
            if self.timer:
                self.timers.cancel(self.timer)
                self.timer = 0
            when = self._next_time(after or time.time())
            if when is None:
                return
            log.info("next scheduled update check at %s", _stamp(when))
            self.timer = self.timers.call_at(when, lambda: self._fire(generation, when))

    def _next_time(self, after: float) -> float | None:
        try:
            when = schedule.next_update_time(
                self.config.update.schedule, after, self.config.update.splay
            )
        except AssistError as exc:
            log.error("[update] schedule is invalid, scheduled updates are off: %s", exc)
            return None
        policy = self.policy
        if when is None or policy is None:
            return when
        gated = policy.gate(when)
        if gated is None:
            log.warning("scheduled updates are off: the server's AgentUpgradeConfig disables them")
        elif gated != when:
            # outside every window: the next opening, spread over at most half of that window
            spread = min(self.config.update.splay, policy.window_left(gated) / 2)
            gated += random.uniform(0, max(0.0, spread))
            log.warning(
                "scheduled update at %s moved into the server's upgrade window: %s",
                _stamp(when),
                _stamp(gated),
            )
        return gated

    def _fire(self, generation: int, when: float) -> None:
        with self._lock:
            if generation != self._generation:
                return  # rescheduled meanwhile (a new setting)
        now = time.time()
        policy = self.policy
        if policy is not None and policy.gate(now) != now:
            log.warning("scheduled update not started: outside the server's upgrade window")
            self.schedule(now)
            return
        self.run("schedule")
        self.schedule(max(when, now))

    def check(self) -> None:
        """Ask the server whether an update was requested for this instance (apply it if so)
        and what its AgentUpgradeConfig is (the answer is signed: common/protocol.py)."""
        plat = detect_platform()
        body = {
            "agent_version": agent_version(),
            "os": plat.os,
            "arch": plat.arch,
            "channel": self.config.update.channel,
        }
        try:
            answer = self.client.update_check(body)
        except AssistError as exc:
            log.info("update check failed: %s", exc)
            self._arm_once()
            return
        self.set_policy(answer.get("upgrade_config"))
        self._arm_once()
        if not answer.get("update_now"):
            return
        if self.policy is not None and self.policy.disabled:
            log.warning("update asked by the server not started: DisableUpgrade is set")
            return
        self.run("server", str(answer.get("version") or ""))

    def set_policy(self, value: Any) -> None:
        """Adopt the server's AgentUpgradeConfig (None: none set), keep it in state/, and
        re-arm the schedule when it changed. A malformed one changes nothing."""
        try:
            policy = None if value is None else UpgradePolicy.from_wire(value)
        except ValueError as exc:
            log.error("ignoring the server's upgrade settings: %s", exc)
            return
        if policy == self.policy:
            return
        self.policy = policy
        save_policy(self.config.layout.state_dir, policy)
        log.warning(
            "upgrade settings from the server: %s",
            "none (the [update] schedule alone)" if policy is None else policy.to_wire(),
        )
        self.schedule()

    def run(self, reason: str, version: str = "") -> bool:
        """Start `assist-update apply` detached, unless a one-shot task runs (then retry later)."""
        if self.busy():
            log.info("update (%s) postponed: a task is running", reason)
            self.timers.call_at(time.time() + self.busy_retry, lambda: self.run(reason, version))
            return False
        if self.process is not None and self.process.poll() is None:
            log.info("update (%s) skipped: the updater is already running", reason)
            return False
        argv = list(self.command or updater_command(self.config.prefix))
        if version:
            argv += ["--version", version]
        log.warning("starting the updater (%s): %s", reason, " ".join(argv))
        update_log = self.config.layout.update_log
        update_log.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(update_log, MAX_UPDATE_LOG)
        extra: dict[str, Any] = {}
        if self.umask is not None:
            extra["umask"] = self.umask  # unpacked versions keep their own modes
        with open(update_log, "ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                **extra,
            )
        return True


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def load_policy(state_dir: Path) -> UpgradePolicy | None:
    """The last AgentUpgradeConfig the server sent (state/upgrade-policy.json), if any."""
    try:
        record = json.loads((state_dir / POLICY_FILE).read_text(encoding="utf-8"))
        return UpgradePolicy.from_wire(record)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("ignoring %s: %s", state_dir / POLICY_FILE, exc)
        return None


def save_policy(state_dir: Path, policy: UpgradePolicy | None) -> None:
    """Keep the server's AgentUpgradeConfig across restarts (removed when there is none)."""
    path = state_dir / POLICY_FILE
    if policy is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_json(path, policy.to_wire(), mode=0o600)


def rotate_log(path: Path, limit: int) -> None:
    """Move a log over `limit` bytes to `<name>.1` (replacing the older one) so it stays bounded."""
    try:
        if path.stat().st_size > limit:
            os.replace(path, path.with_name(path.name + ".1"))
    except OSError:
        pass


def updater_command(prefix: Path) -> list[str]:
    """`<prefix>/current/bin/assist-update apply` if installed, else the module from this code."""
    launcher = Layout(prefix).launcher("assist-update.cmd" if os.name == "nt" else "assist-update")
    if launcher.exists():
        return [str(launcher), "apply", "--prefix", str(prefix)]
    return [sys.executable, "-m", "updater.cli", "apply", "--prefix", str(prefix)]


def recover_update(prefix: Path) -> str:
    """Let the updater finish or undo an interrupted update; returns what it did ("" if absent)."""
    try:
        from updater.journal import may_need_recovery

        if not may_need_recovery(Layout(prefix)):
            return "nothing"  # the usual start: no need for the updater's heavier modules
        from updater.recovery import recover
    except ImportError:
        log.info("updater crash recovery not available (updater.recovery missing)")
        return ""
    try:
        result = str(recover(prefix))
    except Exception:
        log.exception("updater crash recovery failed")
        return ""
    if result not in ("nothing", "busy"):
        log.warning("updater crash recovery: %s", result)
    return result
