"""The daemon against the protocol stand-in: kicks, reports, timed runs, faults, hooks.

The stand-in (agent_fakeserver.py) lets these tests count every report precisely; the end-to-end tests
in test_agent_e2e.py run the same flows against the real assist-server and the official SDK.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent.outbox import AgentDatabase
from agent.proctree import group_alive
from agent.schedule import Boot
from agent.spool import spool_path
from common.health import read_health
from common.layout import Layout
from devkit import polling

wait_until = functools.partial(polling.wait_until, step=0.05)


def test_kick_runs_echo_and_reports_once(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h = start_agent()
    state = fake_server.state
    assert wait_until(lambda: state.lists)
    invoke = state.add_task(h.identity.instance_id, script="echo 123\n")
    assert state.wait(lambda s: s.results_for(invoke), timeout=10)
    [result] = state.results_for(invoke)
    assert result["kind"] == "finish" and result["exit_code"] == 0
    assert result["output"] == "MTIzCg==" and result["dropped"] == 0
    assert wait_until(lambda: AgentDatabase(h.prefix / "state").pending_count() == 0)
    health = read_health(Layout(h.prefix).health_file)
    assert health and health.connected is True and health.pid == os.getpid()
    h.stop()
    assert len([r for r in state.reports if r[2]["invoke_id"] == invoke]) == 1


def test_kick_carrying_its_task_runs_it_once_without_a_task_list(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    state = fake_server.state
    state.carry_tasks = True
    h = start_agent()
    assert wait_until(lambda: state.lists)
    listed = len(state.lists)
    invoke = state.add_task(h.identity.instance_id, script="echo 123\n")
    assert state.wait(lambda s: s.results_for(invoke), timeout=10)
    assert state.results_for(invoke)[0]["output"] == "MTIzCg=="
    time.sleep(1)
    assert len(state.results_for(invoke)) == 1
    assert len(state.lists) == listed  # the kick was enough: no task list asked
    h.stop()


def test_heartbeat_stops_while_long_polls_count_as_heartbeats(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    state = fake_server.state
    state.poll_beats, state.beat_interval = True, 1
    h = start_agent(heartbeat=1, poll_timeout=1)
    # the first heartbeat (with the version) always goes, then one a second until a poll is
    # answered: how many depends on how long the agent's start takes, so wait for that answer
    # (after a fixed 2 s wait, a slow start had sent a third one)
    assert wait_until(lambda: h.agent.client.poll_beat_at > 0, timeout=10)
    time.sleep(1)  # a heartbeat decided just before that answer may still be on its way
    beats = len(state.heartbeats)
    assert beats >= 1
    time.sleep(3)  # three more heartbeat intervals of answered polls: no heartbeat
    assert len(state.heartbeats) == beats
    state.poll_beats = False  # a server whose polls do not count: heartbeats come back
    assert wait_until(lambda: len(state.heartbeats) >= 3, timeout=10)
    h.stop()


def test_early_empty_wake_up_lists_tasks(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    """A wake-up whose event another (dead) poll took still makes the agent look for work."""
    h = start_agent()
    state = fake_server.state
    instance = h.identity.instance_id
    assert wait_until(lambda: state.lists)
    invoke = state.add_task(instance, script="echo 123\n")
    assert state.wait(lambda s: s.results_for(invoke), timeout=10)
    with state.lock:  # a second task whose event is lost: no kick reaches this agent
        state.tasks[instance]["t-lost"] = dict(state.tasks[instance][invoke], invoke_id="t-lost")
    time.sleep(1.0)
    assert not state.results_for("t-lost")  # parked in its long-poll, it cannot know
    with state.lock:  # the server answers the poll early and empty (the event went elsewhere)
        state.empty_wakes.add(instance)
        state.lock.notify_all()
    assert state.wait(lambda s: s.results_for("t-lost"), timeout=10)
    h.stop()


def test_timed_cron_every_second_never_overlaps(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h = start_agent()
    state = fake_server.state
    invoke = state.add_task(
        h.identity.instance_id,
        script="sleep 1.5; echo tick",
        repeat_mode="Period",
        timed=True,
        frequency="* * * * * *",
    )
    assert state.wait(lambda s: len(s.results_for(invoke)) >= 3, timeout=15)
    state.stop(h.identity.instance_id, invoke)
    # acknowledged by a result of its own (0.15 s here; a fixed 1 s was thin on a slow machine)
    assert state.wait(
        lambda s: any(r["execution_id"] == "stopped" for r in s.results_for(invoke)), timeout=10
    )
    runs = [r for r in state.results_for(invoke) if r["execution_id"] != "stopped"]
    results = sorted(runs, key=lambda r: r["start_time"])
    for earlier, later in zip(results, results[1:]):
        assert earlier["end_time"] <= later["start_time"]  # runs never overlap
    for r in results:
        assert r["execution_id"] == str(int(r["execution_id"]))  # fire time, Unix seconds
        assert abs(int(r["execution_id"]) * 1000 - r["start_time"]) < 1000
    count = len(state.results_for(invoke))
    time.sleep(2.5)
    assert len(state.results_for(invoke)) == count  # stopped: no more runs


def scheduled_yearly(fake_server, start_agent, script: str):  # type: ignore[no-untyped-def]
    """A started agent holding a periodic task that fires once a year (never in the test):
    (agent handle, server state, instance id, invoke id)."""
    h = start_agent()
    state = fake_server.state
    instance = h.identity.instance_id
    invoke = state.add_task(
        instance, script=script, repeat_mode="Period", timed=True, frequency="0 0 0 1 1 *"
    )
    assert wait_until(lambda: invoke in h.agent._timed)
    return h, state, instance, invoke


def test_revision_change_reschedules(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h, state, instance, invoke = scheduled_yearly(fake_server, start_agent, "echo one")
    time.sleep(1.5)
    assert state.results_for(invoke) == []
    state.add_task(
        instance,
        invoke_id=invoke,
        script="echo two",
        repeat_mode="Period",
        timed=True,
        frequency="*/1 * * * * *",
        revision=2,
    )
    assert state.wait(lambda s: len(s.results_for(invoke)) >= 2, timeout=10)
    assert base64.b64decode(state.results_for(invoke)[0]["output"]) == b"two\n"


@pytest.mark.parametrize("batches", [True, False], ids=["batched", "older-server"])
def test_server_down_then_back_loses_nothing(fake_server, start_agent, batches: bool) -> None:  # type: ignore[no-untyped-def]
    """The backlog goes in batches (task/reports), or one by one to a server without them."""
    h = start_agent()
    state = fake_server.state
    state.take_batches = batches
    invokes = [
        state.add_task(h.identity.instance_id, script=f"sleep 1; echo r{i}") for i in range(3)
    ]
    assert wait_until(lambda: h.agent.pool.counts()[0] == 3)
    fake_server.down()
    assert wait_until(lambda: AgentDatabase(h.prefix / "state").pending_count() >= 3, timeout=10)
    assert wait_until(
        lambda: getattr(read_health(Layout(h.prefix).health_file), "connected", None) is False,
        timeout=10,
    )
    time.sleep(1)
    fake_server.start()
    # the agent retries with capped backoff (30 s at most, Backoff.cap): allow it a full period
    assert state.wait(lambda s: all(s.results_for(i) for i in invokes), timeout=70)
    assert wait_until(lambda: AgentDatabase(h.prefix / "state").pending_count() == 0, timeout=10)
    for i, invoke in enumerate(invokes):
        [result] = state.results_for(invoke)
        assert base64.b64decode(result["output"]) == f"r{i}\n".encode()
    reports = [r for r in state.reports if r[2]["invoke_id"] in invokes]
    assert len(reports) == 3  # each delivered exactly once
    if batches:  # the three terminal reports were due together: one request took them all
        assert max(state.batches) >= 3, state.batches
    else:
        assert state.batches == []


def test_a_batch_item_refused_for_good_is_dropped_and_one_refused_for_now_is_retried(
    fake_server, start_agent
) -> None:  # type: ignore[no-untyped-def]
    h = start_agent()
    state = fake_server.state
    invokes = [
        state.add_task(h.identity.instance_id, script=f"sleep 1; echo r{i}") for i in range(3)
    ]
    assert wait_until(lambda: h.agent.pool.counts()[0] == 3)
    fake_server.down()
    assert wait_until(lambda: AgentDatabase(h.prefix / "state").pending_count() >= 3, timeout=10)
    state.refuse_items = {invokes[0]: [400], invokes[1]: [503]}
    fake_server.start()
    assert state.wait(lambda s: s.results_for(invokes[1]) and s.results_for(invokes[2]), timeout=70)
    assert wait_until(lambda: AgentDatabase(h.prefix / "state").pending_count() == 0, timeout=70)
    assert state.results_for(invokes[0]) == []  # refused for good: dropped, not sent again
    assert state.refuse_items == {invokes[0]: [], invokes[1]: []}
    # they went in a batch; all three together only when none of them had a retry time of its
    # own later than the others' (one that failed alone while the server was down: seen in a
    # dry run as [2])
    assert max(state.batches) >= 2, state.batches


def test_refused_reports_are_retried_until_acknowledged(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h = start_agent()
    state = fake_server.state
    state.refuse_reports = 2
    invoke = state.add_task(h.identity.instance_id, script="echo x")
    assert state.wait(lambda s: s.results_for(invoke), timeout=20)
    assert len([r for r in state.reports if r[2]["invoke_id"] == invoke]) == 1


def test_pool_overflow_reports_task_concurrency_limit(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h = start_agent(max_running=1, max_queued=1)
    state = fake_server.state
    instance = h.identity.instance_id
    assert wait_until(lambda: state.lists)
    with state.lock:
        invokes = [state.add_task(instance, script="sleep 0.5; echo ok") for _ in range(3)]
    assert state.wait(lambda s: all(s.results_for(i) for i in invokes), timeout=15)
    kinds = sorted((r["kind"], r["error_code"]) for i in invokes for r in state.results_for(i))
    assert kinds == [("error", "TaskConcurrencyLimit"), ("finish", ""), ("finish", "")]


def test_exit_194_asks_the_service_manager_to_reboot(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h = start_agent()
    state = fake_server.state
    invoke = state.add_task(h.identity.instance_id, script="exit 194")
    assert wait_until(lambda: h.power.actions == ["reboot"], timeout=15)
    assert state.results_for(invoke)[0]["exit_code"] == 194  # reported before the reboot
    invoke = state.add_task(h.identity.instance_id, script="exit 193")
    assert wait_until(lambda: h.power.actions == ["reboot", "power_off"], timeout=15)


def test_stop_invocation_kills_a_running_task(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h = start_agent()
    state = fake_server.state
    invoke = state.add_task(h.identity.instance_id, script="echo start; sleep 60")

    def running_pid() -> int:
        runs = list(h.agent._active.get(invoke, {}).values())
        return runs[0].pid if runs else 0

    assert wait_until(lambda: running_pid() != 0)  # registered first, spawned a moment later
    pgid = running_pid()
    assert group_alive(pgid)
    state.stop(h.identity.instance_id, invoke)
    assert state.wait(lambda s: s.results_for(invoke), timeout=10)
    [result] = state.results_for(invoke)
    assert result["kind"] == "stopped"
    assert base64.b64decode(result["output"]) == b"start\n"
    assert wait_until(lambda: not group_alive(pgid), timeout=5)


def test_reboot_bound_tasks_run_after_a_reboot_not_a_restart(
    tmp_path, fake_server, start_agent
) -> None:  # type: ignore[no-untyped-def]
    state = fake_server.state
    h = start_agent(boot=Boot("boot-a", 1000))
    instance = h.identity.instance_id
    every = state.add_task(instance, script="echo every", repeat_mode="EveryReboot", timed=True)
    once = state.add_task(instance, script="echo once", repeat_mode="NextRebootOnly", timed=True)
    assert wait_until(lambda: every in h.agent._timed and once in h.agent._timed)
    h.stop()
    # a service restart within the same boot: nothing runs
    h = start_agent(prefix=h.prefix, identity=h.identity, boot=Boot("boot-a", 1000))
    assert wait_until(lambda: len(state.lists) >= 2)
    time.sleep(1)
    h.stop()
    assert state.results_for(every) == [] and state.results_for(once) == []
    # a reboot: both run, named after the boot
    h = start_agent(prefix=h.prefix, identity=h.identity, boot=Boot("boot-b", 2000))
    assert state.wait(lambda s: s.results_for(every) and s.results_for(once), timeout=10)
    assert [r["execution_id"] for r in state.results_for(every)] == ["2000"]
    h.stop()
    # another reboot: only EveryReboot runs again
    h = start_agent(prefix=h.prefix, identity=h.identity, boot=Boot("boot-c", 3000))
    assert state.wait(lambda s: len(s.results_for(every)) == 2, timeout=10)
    time.sleep(1)
    assert len(state.results_for(once)) == 1


def test_update_kick_runs_the_updater_but_not_during_a_task(
    tmp_path, fake_server, start_agent
) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "updated"
    cmd = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    h = start_agent(updater_command=cmd)
    h.agent.updates.busy_retry = 0.5
    state = fake_server.state
    instance = h.identity.instance_id
    invoke = state.add_task(instance, script="sleep 2; echo done")
    assert wait_until(lambda: invoke in h.agent._active)
    with state.lock:
        state.update_now.add(instance)
        state.kick(instance, {"type": "update", "version": "9.9.9"})
    time.sleep(1)
    assert not marker.exists()  # a one-shot task is running: the update waits
    assert state.wait(lambda s: s.results_for(invoke), timeout=10)
    assert wait_until(marker.exists, timeout=10)
    assert marker.read_text() == "x"


def test_scheduled_update_runs_the_updater(tmp_path, fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "scheduled"
    cmd = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    start_agent(updater_command=cmd, update_schedule="* * * * * *", update_splay=0.0)
    assert wait_until(marker.exists, timeout=10)


def test_crash_recovery_reports_agent_restarted_and_kills_leftovers(
    tmp_path, fake_server, start_agent
) -> None:  # type: ignore[no-untyped-def]
    from agent.proctree import process_start_stamp

    prefix = tmp_path / "prefix"
    leftover = subprocess.Popen(["sleep", "60"], start_new_session=True)
    store = AgentDatabase(prefix / "state")
    store.claim_execution("t-dead", "0", 1234)
    store.set_process("t-dead", "0", leftover.pid, process_start_stamp(leftover.pid))
    store.close()
    spool = spool_path(prefix / "state", "t-dead", "0")
    spool.parent.mkdir(parents=True)
    spool.write_bytes(b"x" * 30000 + b"printed before the crash\n")
    state = fake_server.state
    state.add_task("ignored", invoke_id="t-dead")
    h = start_agent(prefix=prefix)
    state.tasks[h.identity.instance_id] = state.tasks.pop("ignored")
    assert state.wait(lambda s: s.results_for("t-dead"), timeout=10)
    [result] = state.results_for("t-dead")
    assert result["kind"] == "error" and result["error_code"] == "AgentRestarted"
    assert "restarted" in result["error_message"]
    output = base64.b64decode(result["output"])
    assert len(output) == 24 * 1024 and output.endswith(b"xprinted before the crash\n")
    assert result["dropped"] == 30025 - 24 * 1024
    assert not spool.exists()
    assert leftover.wait(5) == -signal.SIGTERM
    time.sleep(1)
    assert len(state.results_for("t-dead")) == 1  # not run again either


def test_health_file_is_valid_json(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h = start_agent()
    path = h.prefix / "state" / "health.json"
    assert wait_until(lambda: path.exists() and json.loads(path.read_text())["connected"])
    record = json.loads(path.read_text())
    assert set(record) >= {"version", "pid", "started", "connected"}


def test_stop_before_the_first_run_is_acknowledged(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h, state, instance, invoke = scheduled_yearly(fake_server, start_agent, "echo never")
    state.stop(instance, invoke)
    assert state.wait(lambda s: s.results_for(invoke), timeout=10)
    [result] = state.results_for(invoke)
    assert (result["kind"], result["execution_id"], result["start_time"]) == (
        "stopped",
        "stopped",
        0,
    )
    assert invoke not in h.agent._timed
    time.sleep(1)
    assert len([r for r in state.reports if r[2]["invoke_id"] == invoke]) == 1


def test_stop_of_a_finished_one_shot_keeps_its_result(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h = start_agent()
    state = fake_server.state
    instance = h.identity.instance_id
    invoke = state.add_task(instance, script="echo done")
    assert state.wait(lambda s: s.results_for(invoke), timeout=10)
    lists = len(state.lists)
    state.stop(instance, invoke)
    assert wait_until(lambda: len(state.lists) > lists), state.lists  # the stop was seen
    time.sleep(1)
    assert [r["kind"] for r in state.results_for(invoke)] == ["finish"]
