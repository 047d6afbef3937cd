"""Full garbage collections on the server's schedule (server/collector.py): none of CPython's
automatic ones while it runs, one every interval, the thresholds given back after. The real
collector of this process, watched through gc.callbacks."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from server.collector import FullCollections


@pytest.fixture
def full_collections() -> Iterator[list[int]]:
    """A list that gets a 2 each time a full collection starts."""
    seen: list[int] = []

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            seen.append(2)

    gc.callbacks.append(watch)
    try:
        yield seen
    finally:
        gc.callbacks.remove(watch)


def survivors() -> list[list[int]]:
    """Enough long-lived container objects to start CPython's automatic full collection (the
    old generation grows by far more than a quarter)."""
    return [[i] for i in range(2 * max(len(gc.get_objects()), 200_000))]


pytestmark = pytest.mark.skipif(
    gc.get_threshold()[2] == 0, reason="this interpreter's collector has no third threshold"
)


def test_without_the_schedule_cpython_collects_fully_on_its_own(
    full_collections: list[int],
) -> None:
    kept = survivors()
    assert full_collections, "the allocation below must be one that triggers a full collection"
    del kept


def test_the_schedule_replaces_automatic_full_collections(full_collections: list[int]) -> None:
    before = gc.get_threshold()

    async def main() -> tuple[int, int, int]:
        schedule = FullCollections(interval=0.3)
        schedule.start()
        runner = asyncio.create_task(schedule.run())
        try:
            kept = survivors()
            automatic = len(full_collections)
            await asyncio.sleep(1.0)
            del kept
            return automatic, len(full_collections), schedule.runs
        finally:
            runner.cancel()
            schedule.stop()

    automatic, total, runs = asyncio.run(main())
    assert automatic == 0
    assert 1 <= runs <= 4 and total == runs  # 0.3 s apart, each collection of 1M+ objects
    assert gc.get_threshold() == before


def test_overlapping_schedules_give_the_thresholds_back_once_both_stop() -> None:
    before = gc.get_threshold()
    first, second = FullCollections(), FullCollections()
    first.start()
    second.start()
    first.stop()
    assert gc.get_threshold()[2] > before[2]  # the second still runs
    second.stop()
    second.stop()  # a second stop changes nothing
    assert gc.get_threshold() == before
