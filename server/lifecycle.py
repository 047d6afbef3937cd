"""The task lifecycle: one instance's task of an invocation, its statuses and transitions.

Pure: a task's state and an event in, the new state out; no database, no clock (callers pass
the time). The store (server/store/tasks.py) reads a task's row, asks this module, and writes
what it answers. The agent's side of these events is docs/agent-protocol.md (task/running,
terminal reports, "Server specifics").

    created         → Pending (one-shot) | Scheduled (timed)
    running chunk   → Running; a newer execution of a timed task starts afresh
    terminal report → its status (finish/timeout/error/stopped/invalid), or back to Scheduled
                      while a periodic task goes on; a late report of an older execution only
                      counts as a repeat
    StopInvocation  → Stopping while the agent may be running it, else Cancelled / Stopped
    deregistration  → Cancelled;  offline past its deadline → Failed (InstanceOffline)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Per-instance statuses (InvocationStatus of one instance).
PENDING, SCHEDULED, RUNNING = "Pending", "Scheduled", "Running"
SUCCESS, FAILED, STOPPING, STOPPED = "Success", "Failed", "Stopping", "Stopped"
TIMEOUT, CANCELLED, ERROR, INVALID = "Timeout", "Cancelled", "Error", "Invalid"
ABORTED, TERMINATED, PARTIAL_FAILED = "Aborted", "Terminated", "PartialFailed"
TERMINAL = frozenset(
    {SUCCESS, FAILED, STOPPED, TIMEOUT, CANCELLED, ERROR, INVALID, ABORTED, TERMINATED}
)
FAILED_LIKE = frozenset({FAILED, TIMEOUT, ERROR, INVALID, ABORTED})
STOPPED_LIKE = frozenset({STOPPED, CANCELLED, TERMINATED})
UNFINISHED = (PENDING, RUNNING, STOPPING)  # an agent owes a report (counted as active tasks)

TERMINAL_KINDS = ("finish", "timeout", "error", "stopped", "invalid")
OFFLINE_ERROR = "InstanceOffline"
OFFLINE_INFO = "the instance went offline and did not report the task in time"


@dataclass(frozen=True)
class Task:
    """What the lifecycle needs of one instance's task (its invocation_instances row)."""

    status: str
    active: bool = True  # False once it reached a final status
    execution_id: str = ""  # the latest execution reported ("" before the first)
    delivered: bool = False  # the agent has listed it
    stop_requested: bool = False
    timed: bool = False
    repeat_mode: str = ""
    frequency: str = ""
    stop_ms: int | None = None


@dataclass(frozen=True)
class Stop:
    """What StopInvocation does to one task."""

    status: str
    active: bool
    stop_ms: int | None  # set when the task ends here


@dataclass(frozen=True)
class Finish:
    """What a first terminal report of an execution does to the task."""

    latest: bool  # False: a late report of an older execution, only the repeat count moves
    status: str = ""
    active: bool = True
    stop_ms: int | None = None
    drop_chunks: bool = False  # the execution's streamed output is superseded by the report


# What a running-output report does to the task's row.
KEEP, MARK_RUNNING, NEW_EXECUTION = "keep", "mark_running", "new_execution"


def initial_status(timed: bool) -> str:
    """The status of a new invocation's task on each instance."""
    return SCHEDULED if timed else PENDING


def is_one_time_schedule(repeat_mode: str, frequency: str) -> bool:
    """Timed tasks that run once at most: at(…) and NextRebootOnly."""
    return repeat_mode == "NextRebootOnly" or frequency.startswith("at(")


def newer_execution(candidate: str, current: str) -> bool:
    """Whether `candidate` is the same or a later execution than `current`."""
    if not current:
        return True
    if candidate.isdigit() and current.isdigit():
        return int(candidate) >= int(current)
    return candidate >= current


def on_running(task: Task, execution_id: str) -> str:
    """KEEP, MARK_RUNNING or NEW_EXECUTION for a running chunk of `execution_id`."""
    current = task.execution_id
    if not (
        newer_execution(execution_id, current)
        and task.status != STOPPING
        and (task.active or current == execution_id)
    ):
        return KEEP
    if current == execution_id:
        return MARK_RUNNING if task.status != RUNNING else KEEP
    return NEW_EXECUTION


def terminal_status(kind: str, exit_code: int | None, start_ms: int | None) -> str:
    """The per-instance status a terminal report means (docs/agent-protocol.md)."""
    if kind == "finish":
        return SUCCESS if exit_code == 0 else FAILED
    if kind == "timeout":
        return TIMEOUT
    if kind == "error":
        return FAILED
    if kind == "stopped":
        return TERMINATED if start_ms else STOPPED
    return INVALID


def on_terminal(task: Task, execution_id: str, status: str, now_ms: int) -> Finish:
    """The task after the first terminal report (`status`) of `execution_id`."""
    if not newer_execution(execution_id, task.execution_id):
        return Finish(latest=False)
    ends = (
        not task.timed
        or task.stop_requested
        or is_one_time_schedule(task.repeat_mode, task.frequency)
        or status in (STOPPED, TERMINATED)
    )
    return Finish(
        latest=True,
        status=status if ends else SCHEDULED,
        active=not ends,
        stop_ms=now_ms if ends and status in STOPPED_LIKE else task.stop_ms,
        # chunks exist only once it reported running
        drop_chunks=task.status in (RUNNING, STOPPING) or task.execution_id != execution_id,
    )


def on_stop(task: Task, now_ms: int) -> Stop:
    """StopInvocation: an agent that may be running it must stop it; others stop here."""
    if task.status == RUNNING or (task.status == PENDING and task.delivered):
        return Stop(STOPPING, True, None)
    final = CANCELLED if task.status == PENDING else STOPPED
    return Stop(final, False, now_ms)


def on_deregister() -> str:
    """The status active tasks of a deregistered instance end in."""
    return CANCELLED


def on_offline() -> tuple[str, str, str]:
    """Status, error code and message of a one-shot task its offline instance never reported."""
    return FAILED, OFFLINE_ERROR, OFFLINE_INFO


def inferred(error_code: str | None, exit_code: int | None) -> bool:
    """Whether a terminal execution is the server's guess (offline), not the agent's report.

    A real report from the agent always supersedes a guess: an instance that was only cut off
    from the server (a replica down, a network outage) still ran the task."""
    return error_code == OFFLINE_ERROR and exit_code is None


def overall_status(statuses: Iterable[str]) -> str:
    """An invocation's InvocationStatus from its instances', as the real API aggregates them."""
    values = list(statuses)
    if not values:
        return PENDING
    present = set(values)
    for status in (PENDING, SCHEDULED, RUNNING, STOPPING):
        if status in present:
            return status
    if present <= STOPPED_LIKE:
        return STOPPED
    has_success = SUCCESS in present
    has_failure = bool(present & FAILED_LIKE)
    if has_success and has_failure:
        return PARTIAL_FAILED
    if has_failure:
        return FAILED
    return SUCCESS


def record_status(status: str) -> str:
    """InvokeRecordStatus (and legacy InstanceInvokeStatus) of one instance."""
    if status in (PENDING, SCHEDULED, RUNNING):
        return "Running"
    if status == SUCCESS:
        return "Finished"
    if status == STOPPING:
        return "Stopping"
    if status in STOPPED_LIKE:
        return "Stopped"
    return "Failed"


def legacy_invoke_status(overall: str, timed: bool) -> str:
    """The legacy InvokeStatus: Running, Finished, Failed, PartialFailed, Stopped."""
    if overall in (PENDING, SCHEDULED, RUNNING, STOPPING) or (timed and overall == SUCCESS):
        return "Running"
    if overall == SUCCESS:
        return "Finished"
    if overall == STOPPED:
        return "Stopped"
    if overall == PARTIAL_FAILED:
        return "PartialFailed"
    return "Failed"
