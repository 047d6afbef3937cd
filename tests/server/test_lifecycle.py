"""The task lifecycle's rules, state in and event in, new state out: no database, no server."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server import lifecycle as lc
from server.lifecycle import Task

NOW = 1_764_790_000_000


def test_lifecycle_module_needs_no_database_or_web_stack() -> None:
    # the rules must stay importable (and testable) without SQLAlchemy, Starlette or the RPC edge
    import importlib
    import subprocess

    code = (
        "import sys, server.lifecycle; "
        "bad = [m for m in ('sqlalchemy', 'starlette', 'server.rpc', 'server.store') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert importlib.import_module("server.lifecycle") is lc


@pytest.mark.parametrize(("timed", "status"), [(False, "Pending"), (True, "Scheduled")])
def test_a_new_task_waits_pending_or_scheduled(timed: bool, status: str) -> None:
    assert lc.initial_status(timed) == status


@pytest.mark.parametrize(
    ("candidate", "current", "newer"),
    [
        ("0", "", True),  # the first execution of a task
        ("0", "0", True),  # the same execution again
        ("1764790060", "1764790000", True),
        ("1764790000", "1764790060", False),  # a late report of an older fire time
        ("10", "9", True),  # numbers compare as numbers, not text
        ("9", "10", False),
        ("b", "a", True),  # other ids compare as text
        ("a", "b", False),
    ],
)
def test_newer_execution_orders_fire_times_numerically(
    candidate: str, current: str, newer: bool
) -> None:
    assert lc.newer_execution(candidate, current) is newer


# --- running chunks ---------------------------------------------------------------------------


def test_first_chunk_of_a_pending_task_starts_its_execution() -> None:
    assert lc.on_running(Task("Pending", execution_id=""), "0") == lc.NEW_EXECUTION


def test_chunks_of_a_running_execution_change_nothing() -> None:
    assert lc.on_running(Task("Running", execution_id="0"), "0") == lc.KEEP


def test_a_chunk_marks_a_known_execution_running_again() -> None:
    assert lc.on_running(Task("Pending", execution_id="0"), "0") == lc.MARK_RUNNING


def test_a_chunk_does_not_undo_a_stop_request() -> None:
    assert lc.on_running(Task("Stopping", execution_id="0"), "0") == lc.KEEP
    assert lc.on_running(Task("Stopping", execution_id=""), "0") == lc.KEEP


def test_a_new_fire_time_of_a_periodic_task_starts_afresh() -> None:
    task = Task("Scheduled", execution_id="1764790000", timed=True)
    assert lc.on_running(task, "1764790060") == lc.NEW_EXECUTION


def test_a_late_chunk_of_an_older_fire_time_changes_nothing() -> None:
    task = Task("Running", execution_id="1764790060", timed=True)
    assert lc.on_running(task, "1764790000") == lc.KEEP


def test_a_finished_task_does_not_restart_for_another_execution() -> None:
    task = Task("Stopped", active=False, execution_id="1764790000", timed=True)
    assert lc.on_running(task, "1764790060") == lc.KEEP


# --- terminal reports -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "exit_code", "start_ms", "status"),
    [
        ("finish", 0, NOW, "Success"),
        ("finish", 1, NOW, "Failed"),
        ("finish", None, NOW, "Failed"),
        ("timeout", None, NOW, "Timeout"),
        ("error", None, None, "Failed"),
        ("stopped", None, NOW, "Terminated"),  # killed after it had started
        ("stopped", None, None, "Stopped"),
        ("stopped", None, 0, "Stopped"),
        ("invalid", None, None, "Invalid"),
    ],
)
def test_terminal_report_kinds_map_to_statuses(
    kind: str, exit_code: int | None, start_ms: int | None, status: str
) -> None:
    assert kind in lc.TERMINAL_KINDS
    assert lc.terminal_status(kind, exit_code, start_ms) == status


def test_a_one_shot_task_ends_with_its_report() -> None:
    done = lc.on_terminal(Task("Running", execution_id="0"), "0", "Success", NOW)
    assert done == lc.Finish(latest=True, status="Success", active=False, drop_chunks=True)


def test_a_report_without_running_chunks_has_no_chunks_to_drop() -> None:
    done = lc.on_terminal(Task("Pending", execution_id="0"), "0", "Failed", NOW)
    assert (done.status, done.active, done.drop_chunks) == ("Failed", False, False)


def test_a_periodic_task_goes_back_to_scheduled_after_each_run() -> None:
    task = Task("Running", execution_id="1764790000", timed=True, repeat_mode="Period")
    done = lc.on_terminal(task, "1764790000", "Failed", NOW)
    assert (done.status, done.active, done.stop_ms) == ("Scheduled", True, None)


@pytest.mark.parametrize(
    ("repeat_mode", "frequency"),
    [("Once", "at(2026-12-01T03:00:00Z)"), ("NextRebootOnly", ""), ("EveryReboot", "at(x)")],
)
def test_a_timed_task_that_runs_once_ends_with_its_report(repeat_mode: str, frequency: str) -> None:
    task = Task("Running", execution_id="1", timed=True, repeat_mode=repeat_mode)
    task = dataclasses.replace(task, frequency=frequency)
    done = lc.on_terminal(task, "1", "Success", NOW)
    assert (done.status, done.active) == ("Success", False)


def test_a_stop_request_ends_a_periodic_task_at_its_next_report() -> None:
    task = Task("Stopping", execution_id="7", timed=True, repeat_mode="Period", stop_requested=True)
    done = lc.on_terminal(task, "7", "Terminated", NOW)
    assert done == lc.Finish(
        latest=True, status="Terminated", active=False, stop_ms=NOW, drop_chunks=True
    )


@pytest.mark.parametrize("status", ["Stopped", "Terminated"])
def test_a_periodic_run_stopped_on_the_agent_ends_the_task(status: str) -> None:
    task = Task("Running", execution_id="7", timed=True, repeat_mode="Period")
    done = lc.on_terminal(task, "7", status, NOW)
    assert (done.status, done.active, done.stop_ms) == (status, False, NOW)


def test_a_finished_run_keeps_an_earlier_stop_time() -> None:
    task = Task("Running", execution_id="0", stop_ms=NOW - 5)
    assert lc.on_terminal(task, "0", "Success", NOW).stop_ms == NOW - 5


def test_a_late_report_of_an_older_execution_only_counts_a_repeat() -> None:
    task = Task("Running", execution_id="1764790060", timed=True, repeat_mode="Period")
    assert lc.on_terminal(task, "1764790000", "Success", NOW) == lc.Finish(latest=False)


def test_a_report_of_a_newer_execution_than_the_rows_drops_its_chunks() -> None:
    task = Task("Scheduled", execution_id="1764790000", timed=True, repeat_mode="Period")
    assert lc.on_terminal(task, "1764790060", "Success", NOW).drop_chunks


# --- stop, deregistration, offline ------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "after"),
    [
        (Task("Running", execution_id="0"), lc.Stop("Stopping", True, None)),
        (Task("Pending", delivered=True), lc.Stop("Stopping", True, None)),  # agent may run it
        (Task("Pending", delivered=False), lc.Stop("Cancelled", False, NOW)),
        (Task("Scheduled", timed=True), lc.Stop("Stopped", False, NOW)),
    ],
)
def test_stop_asks_a_possibly_running_agent_and_ends_the_rest(task: Task, after: lc.Stop) -> None:
    assert lc.on_stop(task, NOW) == after


def test_deregistration_cancels_and_offline_fails_with_a_code() -> None:
    assert lc.on_deregister() == "Cancelled"
    assert lc.on_offline() == ("Failed", "InstanceOffline", lc.OFFLINE_INFO)


def test_a_periodic_task_walks_its_whole_lifecycle() -> None:
    task = Task(lc.initial_status(True), timed=True, repeat_mode="Period", delivered=True)
    for fire in ("100", "160"):
        assert lc.on_running(task, fire) == lc.NEW_EXECUTION
        task = dataclasses.replace(task, status="Running", execution_id=fire)
        done = lc.on_terminal(task, fire, lc.terminal_status("finish", 0, NOW), NOW)
        task = dataclasses.replace(task, status=done.status, active=done.active)
        assert (task.status, task.active) == ("Scheduled", True)
    assert lc.on_running(task, "100") == lc.KEEP  # a late chunk of the first run
    task = dataclasses.replace(task, status="Running", execution_id="220")
    stop = lc.on_stop(task, NOW)
    task = dataclasses.replace(task, status=stop.status, stop_requested=True)
    assert lc.on_running(task, "220") == lc.KEEP
    done = lc.on_terminal(task, "220", lc.terminal_status("stopped", None, NOW), NOW)
    assert (done.status, done.active, done.stop_ms) == ("Terminated", False, NOW)


# --- properties -------------------------------------------------------------------------------

statuses = st.sampled_from(
    ["Pending", "Scheduled", "Running", "Stopping", "Success", "Failed", "Stopped"]
)
exec_ids = st.one_of(st.just(""), st.integers(0, 2**40).map(str), st.text("abc0", max_size=4))
tasks = st.builds(
    Task,
    status=statuses,
    active=st.booleans(),
    execution_id=exec_ids,
    delivered=st.booleans(),
    stop_requested=st.booleans(),
    timed=st.booleans(),
    repeat_mode=st.sampled_from(["", "Once", "Period", "NextRebootOnly", "EveryReboot"]),
    frequency=st.sampled_from(["", "rate(5m)", "0 */10 * * * *", "at(2026-12-01T03:00:00Z)"]),
)
reports = st.sampled_from(["Success", "Failed", "Timeout", "Stopped", "Terminated", "Invalid"])


@given(tasks, exec_ids, reports)
def test_a_report_leaves_a_task_either_final_or_scheduled(
    task: Task, execution_id: str, status: str
) -> None:
    done = lc.on_terminal(task, execution_id, status, NOW)
    if not done.latest:
        assert not lc.newer_execution(execution_id, task.execution_id)
        return
    if done.active:
        assert done.status == "Scheduled" and task.timed and not task.stop_requested
    else:
        assert done.status == status and done.status in lc.TERMINAL
    if not task.timed:
        assert not done.active  # a one-shot task never runs twice


@given(tasks, exec_ids)
def test_a_running_chunk_never_revives_a_stop_or_rewinds_an_execution(
    task: Task, execution_id: str
) -> None:
    step = lc.on_running(task, execution_id)
    if task.status == "Stopping" or not lc.newer_execution(execution_id, task.execution_id):
        assert step == lc.KEEP
    if step == lc.NEW_EXECUTION:
        assert task.active and execution_id != task.execution_id


def test_only_the_servers_offline_guess_is_superseded_by_a_real_report() -> None:
    status, error_code, _ = lc.on_offline()
    assert lc.inferred(error_code, None)
    assert not lc.inferred(error_code, 0)  # the agent's own report, even with that code
    assert not lc.inferred("", None) and not lc.inferred("ExitCodeNonzero", 1)
