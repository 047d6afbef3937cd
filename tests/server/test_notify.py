"""Notifier: one live poll per instance; no event is lost to a poll nobody reads."""

from __future__ import annotations

import asyncio

from server.notify import WAKE_BATCH, Notifier

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
