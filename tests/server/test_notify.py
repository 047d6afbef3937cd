"""Notifier: one live poll per instance; no event is lost to a poll nobody reads."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.notify import (
    BUS_LIMITS,
    MAX_BUFFERED,
    NOTIFY_LIMITS,
    SYNC_KICK,
    WAKE_BATCH,
    Notifier,
    _payloads,
)

TASK = {"type": "task"}
STOP = {"type": "stop"}


async def settle() -> None:
    """Let every ready task run up to its next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_newer_poll_dismisses_the_older_and_gets_the_event() -> None:
    async def scenario() -> None:
        hub = Notifier()
        old = asyncio.create_task(hub.wait("mi-1", 30))
        await settle()
        new = asyncio.create_task(hub.wait("mi-1", 30))
        await settle()
        assert old.done() and old.result() == []  # dismissed empty-handed
        assert hub.waiting() == 1
        hub.deliver(["mi-1"], TASK)
        assert await asyncio.wait_for(new, 5) == [TASK]
        assert hub.waiting() == 0 and hub._slots == {}

    asyncio.run(scenario())


def test_events_of_a_woken_but_dismissed_poll_go_to_the_new_one() -> None:
    async def scenario() -> None:
        hub = Notifier()
        old = asyncio.create_task(hub.wait("mi-1", 30))
        await settle()
        hub.deliver(["mi-1"], TASK)  # woken, but not yet run...
        new = hub.wait("mi-1", 30)  # ...when the restarted agent's poll starts (run it by hand)
        try:
            new.send(None)
        except StopIteration as answered:  # it answered without parking
            assert answered.value == [TASK]
        else:
            raise AssertionError("the new poll parked instead of taking the events")
        assert await asyncio.wait_for(old, 5) == []

    asyncio.run(scenario())


def test_cancelled_poll_leaves_its_events_for_the_next() -> None:
    async def scenario() -> None:
        hub = Notifier()
        gone = asyncio.create_task(hub.wait("mi-1", 30))
        await settle()
        hub.deliver(["mi-1"], TASK)
        hub.deliver(["mi-1"], TASK)  # a repeated kick is one kick
        gone.cancel()  # the client disconnected before its answer went out
        await settle()
        assert gone.cancelled() and hub.waiting() == 0
        hub.deliver(["mi-1"], STOP)
        assert await hub.wait("mi-1", 0) == [TASK, STOP]
        assert await hub.wait("mi-1", 0) == []  # taken once

    asyncio.run(scenario())


def test_instances_do_not_dismiss_each_other() -> None:
    async def scenario() -> None:
        hub = Notifier()
        one = asyncio.create_task(hub.wait("mi-1", 30))
        two = asyncio.create_task(hub.wait("mi-2", 30))
        await settle()
        assert hub.waiting() == 2
        hub.deliver(["mi-2"], TASK)
        assert await asyncio.wait_for(two, 5) == [TASK]
        assert not one.done()
        one.cancel()
        await settle()

    asyncio.run(scenario())


def test_late_ending_dismissed_poll_does_not_orphan_a_newer_poll() -> None:
    async def scenario() -> None:
        hub = Notifier()
        old = asyncio.create_task(hub.wait("mi-1", 30))
        await settle()
        hub.deliver(["mi-1"], TASK)
        taker = hub.wait("mi-1", 30)  # dismisses `old`, takes the event, ends at once
        try:
            taker.send(None)
        except StopIteration as answered:
            assert answered.value == [TASK]
        newest = asyncio.create_task(hub.wait("mi-1", 30))
        await settle()  # `old` ends after `newest` parked
        assert old.done() and old.result() == []
        assert hub.waiting() == 1
        hub.deliver(["mi-1"], STOP)
        assert await asyncio.wait_for(newest, 5) == [STOP]

    asyncio.run(scenario())


def test_a_kick_wakes_its_polls_a_batch_per_loop_turn_and_every_one_of_them() -> None:
    """What else the loop has to do (an InvokeCommand's database answers) runs between the
    batches: no turn wakes more than WAKE_BATCH polls, and no poll is left parked."""

    async def scenario() -> None:
        hub = Notifier()
        ids = [f"mi-{n}" for n in range(3 * WAKE_BATCH + 5)]
        polls = [asyncio.create_task(hub.wait(i, 30)) for i in ids]
        await settle()
        assert hub.waiting() == len(ids)
        hub.deliver(ids, TASK)
        assert sum(p.done() for p in polls) == 0  # nothing is woken inside deliver
        woken = []
        for _ in range(12):
            await asyncio.sleep(0)
            woken.append(sum(p.done() for p in polls))
        steps = [b - a for a, b in zip([0, *woken], woken)]
        assert max(steps) <= WAKE_BATCH and woken[-1] == len(ids)
        assert all(p.result() == [TASK] for p in polls)
        assert hub.waiting() == 0 and hub._slots == {}

    asyncio.run(scenario())


def kick(n: int) -> dict[str, Any]:
    return {"type": "task", "tasks": [{"invoke_id": f"t-{n}", "content": "ZWNobyAxMjM="}]}


def test_kicks_buffered_for_an_instance_that_does_not_poll_stay_few() -> None:
    """An instance that does not poll while an operator keeps invoking on it (offline, stuck)
    holds at most MAX_BUFFERED events: past that its kicks and stops become one kick without
    tasks (the agent then lists its tasks), and its update and settings events stay. Its next
    poll gets them; one under the bound gets every kick as it came."""

    async def scenario() -> None:
        hub = Notifier()
        update = {"type": "update"}
        for n in range(1000):
            hub.deliver(["mi-1"], kick(n))
            hub.deliver(["mi-1"], STOP)
            if n == 500:
                hub.deliver(["mi-1"], update)
            assert len(hub._slots["mi-1"].events) <= MAX_BUFFERED
        events = await hub.wait("mi-1", 30)
        assert update in events and SYNC_KICK in events
        assert events.index(SYNC_KICK) < len(events) - 1  # kicks after the last collapse follow
        assert events[-1] == kick(999)
        assert hub._slots == {}

        few = [kick(n) for n in range(MAX_BUFFERED)]
        for event in few:
            hub.deliver(["mi-2"], event)
        assert await hub.wait("mi-2", 30) == few

    asyncio.run(scenario())


# --- the workers' bus of a SQLite server (server/bus.py) ----------------------------------


@pytest.fixture
def bus_dir() -> Iterator[Path]:
    """A short directory for the bus (a Unix socket's path holds at most 107 bytes, and
    pytest's tmp_path under xdist is longer)."""
    path = Path(tempfile.mkdtemp(prefix="bus-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_workers_on_one_bus_wake_each_others_polls_and_forget_each_others_keys(
    bus_dir: Path,
) -> None:
    async def scenario() -> None:
        a, b = Notifier(bus_dir=str(bus_dir)), Notifier(bus_dir=str(bus_dir))
        forgotten: list[Any] = []
        b.on_forget = forgotten.append
        await a.start()
        await b.start()
        try:
            assert {p.name for p in bus_dir.iterdir()} == {
                f"{a.replica[:16]}.sock",
                f"{b.replica[:16]}.sock",
            }
            assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in bus_dir.iterdir())
            poll = asyncio.create_task(b.wait("mi-1", 30))
            await settle()
            kick = {"type": "task", "tasks": [{"invoke_id": "t-1"}]}
            await a.publish(["mi-1"], kick)
            assert await asyncio.wait_for(poll, 5) == [kick]  # the task travelled with it
            await a.forget(["mi-1", "mi-2"])
            for _ in range(100):
                if forgotten:
                    break
                await asyncio.sleep(0.01)
            assert forgotten == [["mi-1", "mi-2"]]
        finally:
            await a.close()
            await b.close()
        assert list(bus_dir.iterdir()) == []  # each worker removed its socket

    asyncio.run(scenario())


def test_a_fan_out_to_thousands_crosses_the_bus_whole(bus_dir: Path) -> None:
    """A kick to 20,000 instances is split into datagrams; every one of them arrives (the
    receiving worker's queue holds 10 datagrams: the sender waits for room, it drops none)."""
    ids = [f"i-{n:020d}" for n in range(20_000)]

    async def scenario() -> int:
        a, b = Notifier(bus_dir=str(bus_dir)), Notifier(bus_dir=str(bus_dir))
        await a.start()
        await b.start()
        try:
            for round_ in range(3):
                await a.publish(ids, {"type": "task", "round": round_})
            for _ in range(500):
                if sum(len(s.events) for s in b._slots.values()) == 3 * len(ids):
                    break
                await asyncio.sleep(0.01)
            return sum(len(s.events) for s in b._slots.values())
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(scenario()) == 3 * len(ids)


def test_a_worker_gone_without_cleaning_up_is_dropped_from_the_bus(bus_dir: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(bus_dir / "gone.sock"))
    dead.close()  # its file stays, as a killed worker's does

    async def scenario() -> list[Any]:
        a, b = Notifier(bus_dir=str(bus_dir)), Notifier(bus_dir=str(bus_dir))
        await a.start()
        await b.start()
        try:
            poll = asyncio.create_task(b.wait("mi-1", 30))
            await settle()
            await a.publish(["mi-1"], TASK)
            return await asyncio.wait_for(poll, 5)
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(scenario()) == [TASK]
    assert not (bus_dir / "gone.sock").exists()


def test_fan_out_payloads_stay_under_their_limits_and_name_every_instance() -> None:
    ids = [f"i-{'x' * (n % 40)}{n}" for n in range(5000)]
    kick = {"type": "task", "tasks": [{"invoke_id": "t-1"}]}
    for limits in (NOTIFY_LIMITS, BUS_LIMITS):
        payloads = _payloads("r", ids, kick, limits)
        assert all(len(p.encode()) <= limits[0] for p in payloads)
        named = [i for p in payloads for i in json.loads(p)["i"]]
        assert named == ids
        assert all(json.loads(p)["e"] == kick for p in payloads)
