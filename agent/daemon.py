"""The agent's main loop: long-poll for kicks, sync tasks, run them, report through the outbox.

Threads: the notify loop (long-poll), a timer thread (timed invocations, scheduled updates:
agent/timers.py, agent/updates.py), the outbox sender, the heartbeat, and task workers started on
demand by the pool. Every blocking wait is on a socket or a condition, so an idle agent uses no
CPU.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from agent import filewrite, refusals, schedule
from agent.client import AgentClient, ServerRefusedError, ServerUnavailableError
from agent.identity import Identity
from agent.outbox import AgentDatabase
from agent.output import Chunk, b64
from agent.pool import TaskPool
from agent.power import PowerManager, SystemPower
from agent.private import make_private_dir, tighten_tree
from agent.proctree import process_start_stamp, terminate_group
from agent.replicas import ReplicaSet
from agent.runner import (
    POWER_OFF_EXIT,
    REBOOT_EXIT,
    Execution,
    Outcome,
    RunLimits,
    Task,
    now_ms,
)
from agent.sender import ReportSender
from agent.sessions import SessionHolder
from agent.spool import Spool, read_tail, spool_path
from agent.timers import Backoff, Timers
from agent.updates import UPDATE_BUSY_RETRY, UpdateTrigger
from common.config import Config
from common.errors import AssistError
from common.health import HealthRecord, write_health
from common.protocol import ResponseRefusedError
from common.version import agent_version

log = logging.getLogger(__name__)

REBOOT_MODES = ("NextRebootOnly", "EveryReboot")
# An empty long-poll answer before this fraction of its timeout means a lost wake-up.
EARLY_WAKE_FRACTION = 0.8
RESYNC_INTERVAL = 300.0  # seconds between task-list polls without a kick (a safety net)
MAX_QUEUED_CHUNKS = 4  # streamed chunks of one execution kept while the server is away
STOP_EXECUTION = "stopped"  # execution id of a stop acknowledged without a run
LEDGER_KEEP = 86400.0  # seconds a finished, acknowledged execution is remembered


@dataclass
class TimedEntry:
    """A timed task as scheduled locally."""

    task: Task
    schedule: schedule.Schedule | None
    created: float
    timer: int = 0


@dataclass
class AgentOptions:
    """What the daemon needs besides the config; tests swap the seams."""

    server: str | list[str]  # one URL, a comma list, or several (agent/replicas.py)
    identity: Identity
    power: PowerManager = field(default_factory=SystemPower)
    session_factory: Callable[[], requests.Session] = requests.Session
    ca_file: str = ""  # PEM CA an https server must chain to (agent/client.py tls_verify)
    boot_reader: Callable[[], schedule.Boot] = schedule.read_boot
    kill_grace: float = 3.0  # seconds between SIGTERM and SIGKILL
    updater_command: list[str] | None = None  # default: <prefix>/current/bin/assist-update …
    resync_interval: float = RESYNC_INTERVAL  # seconds
    update_busy_retry: float = UPDATE_BUSY_RETRY  # seconds
    task_umask: int | None = None  # umask for task processes (the agent's own is 077)


class Agent:
    """The daemon: owns the store, the pool, the schedules and the connection to the server."""

    def __init__(self, config: Config, options: AgentOptions) -> None:
        self.config = config
        self.options = options
        self.layout = config.layout
        self.state_dir = self.layout.state_dir
        self.store = AgentDatabase(self.state_dir)
        cfg = config.agent
        self.pool = TaskPool(cfg.max_running, cfg.max_queued)
        self.limits = RunLimits(
            output_quota=cfg.output_quota,
            chunk_size=cfg.chunk_size,
            chunk_interval=cfg.chunk_interval,
            kill_grace=options.kill_grace,
            work_dir=config.prefix / "work",
            task_umask=options.task_umask,
        )
        self.replicas = ReplicaSet(options.server, options.identity.instance_id, self.state_dir)
        # one HTTP session per thread that talks to the server (requests.Session is not
        # guaranteed thread-safe): notify loop (long-poll, task list, update check), outbox,
        # heartbeat; one replica set, so a replica one of them finds dead is left by all
        self.sessions = SessionHolder()  # one session for the three
        self.client, self.report_client, self.beat_client = (
            AgentClient(
                self.replicas,
                options.identity,
                options.session_factory(),
                ca_file=options.ca_file,
                sessions=self.sessions,
            )
            for _ in range(3)
        )
        self.timers = Timers()
        self.boot = options.boot_reader()
        self.started = time.time()
        self.connected = False
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[str, dict[str, Execution]] = {}  # invoke_id -> execution_id -> run
        self._periodic: set[str] = set()  # invoke ids of timed / reboot-bound tasks
        self._timed: dict[str, TimedEntry] = {}
        self._stopped: set[str] = set()
        self._sync_needed = threading.Event()
        self.sender = ReportSender(self.store, self.report_client, self._set_connected)
        self.updates = UpdateTrigger(
            config,
            self.timers,
            self.client,
            self.one_shot_running,
            command=options.updater_command,
            busy_retry=options.update_busy_retry,
            umask=options.task_umask,
        )

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run until `stop()`: recover, start the threads, and long-poll in a background thread."""
        make_private_dir(self.state_dir)
        tighten_tree(self.state_dir)
        self.recover_crashed()
        self.prune_ledger()
        write_health(self.layout.health_file, HealthRecord.of_this_process(self.started, False))
        self.timers.start()
        self.sender.start()
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._notify_loop, "notify")):
            threading.Thread(target=target, name=name, daemon=True).start()
        self.updates.start()
        self.stopping.wait()
        self.shutdown()

    def prune_ledger(self) -> None:
        """Forget executions finished and acknowledged over a day ago; again every hour."""
        self.store.prune_executions(time.time() - LEDGER_KEEP)
        if not self.stopping.is_set():
            self.timers.call_at(time.time() + 3600, self.prune_ledger)

    def stop(self) -> None:
        """Ask the daemon to stop (signal handlers call this)."""
        self.stopping.set()

    def shutdown(self, flush_seconds: float = 3.0) -> None:  # seconds to flush the outbox
        """Kill running executions (reported as AgentRestarted), flush the outbox briefly."""
        self.timers.stop()
        for run in self._all_active():
            run.stop()
        self.pool.wait_idle(self.limits.kill_grace + 5)
        self.sender.close(flush_seconds)
        self.store.close()

    def _all_active(self) -> list[Execution]:
        with self._lock:
            return [run for runs in self._active.values() for run in runs.values()]

    def recover_crashed(self) -> None:
        """Report executions that were running when the agent died, killing leftovers."""
        for started in self.store.started_executions():
            killed = False
            alive = started.pid and started.proc_start
            if alive and process_start_stamp(started.pid) == started.proc_start:
                terminate_group(started.pid, self.limits.kill_grace)
                killed = True
            path = spool_path(self.state_dir, started.invoke_id, started.execution_id)
            tail, dropped = read_tail(path, self.limits.output_quota)
            message = (
                "the agent restarted while this task was running; "
                + ("its leftover processes were killed" if killed else "its process had ended")
                + "; the output is what it printed until the agent stopped"
            )
            outcome = Outcome(
                "error",
                started.start_time,
                now_ms(),
                None,
                tail,
                dropped,
                "AgentRestarted",
                message,
            )
            log.warning(
                "execution %s/%s was cut short by an agent restart",
                started.invoke_id,
                started.execution_id,
            )
            self._record_outcome(started.invoke_id, started.execution_id, outcome)
            Spool(path, self.limits.output_quota).discard()

    # -- server connection --------------------------------------------------------------------

    def _set_connected(self, value: bool) -> None:
        if value == self.connected:
            return
        self.connected = value
        log.info("server %s", "connected" if value else "unreachable")
        write_health(self.layout.health_file, HealthRecord.of_this_process(self.started, value))
        if value:
            self.sender.wake(force=True)

    def _notify_loop(self) -> None:
        """Long-poll for events; sync tasks at start, on every kick, and after reconnecting."""
        backoff = Backoff()
        self._sync_needed.set()
        last_sync = 0.0
        first = True
        while not self.stopping.is_set():
            try:
                if (
                    self._sync_needed.is_set()
                    or time.time() - last_sync > self.options.resync_interval
                ):
                    self._sync_needed.clear()
                    if self.options.identity.trust is None:
                        self.options.identity.trust = refusals.trust_on_first_use(
                            self.client, self.state_dir
                        )
                    reconnected = not self.connected  # at start, or back after an outage
                    if reconnected:
                        self._take_over_poll()
                    self.sync_tasks("startup" if first else "poll")
                    last_sync = time.time()
                    if reconnected:  # kicks and upgrade settings missed meanwhile
                        self.updates.check()
                    first = False
                self._set_connected(True)
                backoff.reset()
                self.replicas.refresh(self.client.server_replicas)
                polled = time.monotonic()
                events = self.client.notify(self.config.agent.poll_timeout)
                if self._handle_events(events):
                    last_sync = time.time()
                if not events and time.monotonic() - polled < EARLY_WAKE_FRACTION * (
                    self.config.agent.poll_timeout
                ):
                    # Woken with nothing to show: another poll (e.g. a dead predecessor's
                    # connection) may have taken the event. Listing tasks costs one request.
                    self._sync_needed.set()
            except (ServerUnavailableError, ServerRefusedError, ResponseRefusedError) as exc:
                self._sync_needed.set()
                self._set_connected(False)
                delay = self.replicas.retry_delay(backoff)
                log.warning("%s; retrying in %.1f s", exc, delay)
                self.stopping.wait(delay)
            except Exception:
                log.exception("notify loop error")
                self._sync_needed.set()
                self.stopping.wait(backoff.next_delay())

    def _take_over_poll(self) -> None:
        """Poll once without waiting, before listing the tasks at start or after an outage.

        The server keeps one long-poll per instance, and a new poll dismisses the one parked
        before it. A predecessor's poll can still be parked there: this agent restarted, or its
        connection died unseen (a proxy or load balancer keeps its own side open). A kick the
        server hands to that poll is answered to nobody, and its task is marked delivered. Until
        this agent's first long-poll arrived, a kick raised after the listing went there, and
        its task waited for the next listing, up to 300 s later. This poll takes the slot first:
        a kick before it is in the listing, a kick after it waits for the next poll."""
        self._handle_events(self.client.notify(0))

    def _handle_events(self, events: list[dict[str, Any]]) -> bool:
        """React to long-poll events; True if the whole task list was fetched.

        A kick that carries its tasks (`{"type": "task", "tasks": [...]}`, signed like every
        answer) is taken as it is: no task list. A stop, or a kick without its tasks (a
        modified invocation, a task the server would not hand out any more, an older server),
        lists them all. Carried tasks are taken first, then the list: the server hands a task
        out with a kick only once it is marked delivered, and publishes a stop only once it is
        committed, so a listing made after this answer arrived names every stop of a task taken
        here, whatever order the events came in (docs/agent-protocol.md)."""
        kicks = [e for e in events if e.get("type") == "task"]
        for kick in kicks:
            for raw in kick.get("tasks") or ():
                self._take_task(raw)
        kinds = {str(e.get("type")) for e in events}
        synced = "stop" in kinds or any(not isinstance(e.get("tasks"), list) for e in kicks)
        if synced:
            self.sync_tasks("kick")
        if kinds & {"update", "settings"}:
            self.updates.check()
        return synced

    def _heartbeat_loop(self) -> None:
        """Send heartbeats with jitter at the server's interval, while long-polls do not count
        as heartbeats (the server says so in their answers): the first one always goes, with
        the agent's version."""
        interval = self.config.agent.heartbeat
        while not self.stopping.is_set():
            body = {
                "agent_version": agent_version(),
                "uptime": int(time.time() - self.started),
                "boot_time": self.boot.boot_time,
                "running": self.pool.counts()[0],
            }
            polled = time.monotonic() - self.client.poll_beat_at
            if polled > interval + self.config.agent.poll_timeout:
                try:
                    interval = self.beat_client.heartbeat(body) or interval
                except AssistError as exc:
                    log.info("heartbeat failed: %s", exc)
            self.stopping.wait(interval * random.uniform(0.8, 1.0))

    # -- tasks --------------------------------------------------------------------------------

    def sync_tasks(self, reason: str) -> None:
        """Fetch the task list and bring local runs and schedules in line with it."""
        try:
            listing = self.client.list_tasks(reason)
        except ResponseRefusedError as exc:
            self.report_refused(exc)
            raise
        self._set_connected(True)
        stop_ids = {str(i) for i in listing["stop"]}
        self._stopped = stop_ids
        listed = {i for i in map(self._take_task, listing["run"]) if i is not None}
        for invoke_id in list(self._timed):
            if invoke_id not in listed:
                self._forget_timed(invoke_id)
        for invoke_id in stop_ids:
            self.stop_invocation(invoke_id)
        filewrite.deliver_files(self.store, listing.get("files") or [])

    def _take_task(self, raw: Any) -> str | None:
        """Run, schedule or keep for the next boot one task of the server's; its invoke id
        (None if malformed or stopped)."""
        try:
            task = Task.from_wire(raw)
        except (KeyError, ValueError, TypeError) as exc:
            log.error("ignoring a malformed task %r: %s", raw, exc)
            return None
        if task.invoke_id in self._stopped:
            return None
        if task.repeat_mode in REBOOT_MODES:
            self._consider_reboot_task(task)
        elif task.timed or task.repeat_mode == "Period":
            self._schedule_timed(task)
        else:
            self._launch(task, "0")
        return task.invoke_id

    def report_refused(self, exc: ResponseRefusedError) -> None:
        """Fail the one-shot invocations a refused task list named, with the refusal's code."""
        for invoke_id in refusals.refused_invocations(exc.body):
            if self.store.execution_known(invoke_id, "0"):
                continue
            if self.store.claim_execution(invoke_id, "0", 0):
                outcome = Outcome("error", 0, now_ms(), None, b"", 0, exc.code)
                outcome.error_message = refusals.refusal_message(exc)
                self._record_outcome(invoke_id, "0", outcome)
                log.error("%s: refused task list reported as %s", invoke_id, exc.code)
        for invoke_id in refusals.refused_files(exc.body):
            if not self.store.execution_known(invoke_id, filewrite.FILE_EXECUTION):
                message = refusals.refusal_message(exc)
                filewrite.report_file(self.store, invoke_id, "Failed", exc.code, message, 0)

    def stop_invocation(self, invoke_id: str) -> None:
        """Stop an invocation: drop its schedule and kill its running executions.

        With nothing running or queued here, the stop is acknowledged with a `stopped` report
        (execution "stopped", no start time), so the server does not wait for it forever (a
        timed task stopped before its first run, a task whose start died with the agent). A
        one-shot task that already ran here keeps its own report.
        """
        self._forget_timed(invoke_id)
        with self._lock:
            runs = list(self._active.get(invoke_id, {}).values())
        for run in runs:
            log.info("stopping %s/%s", invoke_id, run.execution_id)
            run.stop()
        if runs or self.pool.holds_prefix(f"{invoke_id}/"):
            return
        if self.store.execution_known(invoke_id, "0"):
            return
        if self.store.claim_execution(invoke_id, STOP_EXECUTION, 0):
            now = now_ms()
            message = "stopped by the operator before it ran on this instance"
            outcome = Outcome("stopped", 0, now, None, b"", 0, "", message)
            self._record_outcome(invoke_id, STOP_EXECUTION, outcome)

    def _forget_timed(self, invoke_id: str) -> None:
        entry = self._timed.pop(invoke_id, None)
        if entry is not None and entry.timer:
            self.timers.cancel(entry.timer)
        self._periodic.discard(invoke_id)

    def _consider_reboot_task(self, task: Task) -> None:
        """Run a NextRebootOnly / EveryReboot task if this boot is one it should run in."""
        self._periodic.add(task.invoke_id)
        self._timed.setdefault(task.invoke_id, TimedEntry(task, None, 0.0))
        first = self.store.first_seen_boot(task.invoke_id, self.boot.boot_id)
        runs = self.store.execution_count(task.invoke_id)
        if schedule.should_run_on_boot(task.repeat_mode, first, self.boot, runs):
            self._launch(task, str(self.boot.boot_time))

    def _schedule_timed(self, task: Task) -> None:
        """(Re)schedule a timed task when it is new or its revision changed."""
        current = self._timed.get(task.invoke_id)
        if current is not None and current.task.revision == task.revision:
            return
        if current is not None:
            self._forget_timed(task.invoke_id)
        self._periodic.add(task.invoke_id)
        try:
            sched = schedule.parse_frequency(task.frequency)
        except AssistError as exc:
            outcome = Outcome(
                "invalid", now_ms(), now_ms(), None, b"", 0, "BadCronExpression", exc.message
            )
            self._timed[task.invoke_id] = TimedEntry(task, None, 0.0)
            if self.store.claim_execution(task.invoke_id, "0", outcome.start_time):
                self._record_outcome(task.invoke_id, "0", outcome)
            return
        entry = TimedEntry(task, sched, schedule.parse_created(task.created))
        self._timed[task.invoke_id] = entry
        if isinstance(sched, schedule.At) and sched.when <= time.time():
            # missed while the agent was away: run it once, unless it already ran
            self._launch(task, str(int(sched.when)))
            return
        self._arm(entry, time.time())

    def _arm(self, entry: TimedEntry, after: float) -> None:
        """Set the timer for the next fire of a timed task."""
        assert entry.schedule is not None
        when = schedule.next_fire(entry.schedule, after, entry.created)
        if when is None:
            return
        revision = entry.task.revision
        entry.timer = self.timers.call_at(
            when, lambda: self._fire(entry.task.invoke_id, revision, when)
        )

    def _fire(self, invoke_id: str, revision: int, when: float) -> None:
        """A timed task is due: run it unless its previous run is still going, then re-arm."""
        entry = self._timed.get(invoke_id)
        if entry is None or entry.task.revision != revision:
            return
        with self._lock:
            busy = bool(self._active.get(invoke_id))
        if busy:
            log.info("timed task %s still running; skipping the run due at %d", invoke_id, when)
        else:
            self._launch(entry.task, str(int(when)))
        self._arm(entry, max(when, time.time() - 1))

    def _launch(self, task: Task, execution_id: str) -> None:
        """Hand an execution to the pool, or report TaskConcurrencyLimit when it is full."""
        key = f"{task.invoke_id}/{execution_id}"
        if (
            self.stopping.is_set()
            or self.pool.holds(key)
            or self.store.execution_known(task.invoke_id, execution_id)
        ):
            return
        if not self.pool.submit(key, lambda: self._execute(task, execution_id)):
            log.warning("pool full: refusing %s", key)
            now = now_ms()
            outcome = Outcome(
                "error",
                now,
                now,
                None,
                b"",
                0,
                "TaskConcurrencyLimit",
                f"too many tasks: {self.pool.max_running} running and {self.pool.max_queued} queued",
            )
            if self.store.claim_execution(task.invoke_id, execution_id, now):
                self._record_outcome(task.invoke_id, execution_id, outcome)

    def _execute(self, task: Task, execution_id: str) -> None:
        """Run one execution on a pool thread and queue its reports."""
        start = now_ms()
        if self.stopping.is_set():
            return  # not started: the server lists it again at the next start
        if not self.store.claim_execution(task.invoke_id, execution_id, start):
            return
        builtins = {
            "InstanceId": self.options.identity.instance_id,
            "InvokeId": task.invoke_id,
            "CommandId": task.command_id,
        }
        invoke, execution = task.invoke_id, execution_id

        def on_start(pid: int, stamp: str) -> None:
            self.store.set_process(invoke, execution, pid, stamp)

        def on_chunk(chunk: Chunk) -> None:
            body = {
                "invoke_id": invoke,
                "execution_id": execution,
                "start_time": start,
                "offset": chunk.offset,
                "output": b64(chunk.data),
            }
            group = f"running/{invoke}/{execution}/"
            self.store.enqueue_capped(
                f"{group}{chunk.offset}", "/v1/task/running", body, group, MAX_QUEUED_CHUNKS
            )

        spool = Spool(spool_path(self.state_dir, invoke, execution), self.limits.output_quota)
        run = Execution(task, execution_id, builtins, self.limits, on_start, on_chunk, spool.write)
        run.start_time = start
        with self._lock:
            self._active.setdefault(invoke, {})[execution] = run
        if invoke in self._stopped or self.stopping.is_set():
            run.stop()  # stopped by the operator, or the agent began to shut down meanwhile
        try:
            outcome = run.run()
        except Exception as exc:  # a bug here must still end the execution with a report
            log.exception("execution %s/%s failed inside the agent", invoke, execution)
            message = f"the agent failed to run the task: {type(exc).__name__}: {exc}"
            outcome = Outcome("error", start, now_ms(), None, b"", 0, "ExecutionException", message)
        finally:
            with self._lock:
                runs = self._active.get(invoke, {})
                runs.pop(execution, None)
                if not runs:
                    self._active.pop(invoke, None)
        if outcome.kind == "stopped" and self.stopping.is_set() and invoke not in self._stopped:
            outcome.kind, outcome.error_code = "error", "AgentRestarted"
            outcome.error_message = (
                "the agent was stopped while this task was running; the task was killed"
            )
        self._record_outcome(invoke, execution, outcome)
        spool.discard()
        if outcome.kind == "finish" and outcome.exit_code in (POWER_OFF_EXIT, REBOOT_EXIT):
            self._power_action(outcome.exit_code)

    def _record_outcome(self, invoke_id: str, execution_id: str, outcome: Outcome) -> None:
        """Mark the execution done and queue its terminal report, in one transaction."""
        body = {
            "invoke_id": invoke_id,
            "execution_id": execution_id,
            "start_time": outcome.start_time,
            "end_time": outcome.end_time,
            "exit_code": outcome.exit_code,
            "output": b64(outcome.output),
            "dropped": outcome.dropped,
            "error_code": outcome.error_code,
            "error_message": outcome.error_message,
        }
        key = f"terminal/{invoke_id}/{execution_id}"
        self.store.finish_execution(invoke_id, execution_id, key, f"/v1/task/{outcome.kind}", body)

    def _power_action(self, exit_code: int | None) -> None:
        """Power off / reboot as the task asked, after its report had a chance to go out."""
        deadline = time.time() + 10
        while self.store.pending_count() and time.time() < deadline:
            time.sleep(0.1)
        if exit_code == POWER_OFF_EXIT:
            self.options.power.power_off()
        else:
            self.options.power.reboot()

    def one_shot_running(self) -> bool:
        """True while a non-periodic task runs (updates wait for it)."""
        with self._lock:
            return any(inv not in self._periodic for inv in self._active)
