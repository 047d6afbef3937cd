"""Scheduled updates for `assist-update schedule`: the shared grammar (docs/schedules.md).

The agent and this command both ask common/schedule.py's `next_update_time`; this wrapper only
speaks datetimes. Hosts that prefer the system cron can use its 5-field form and let the updater
add the splay: `0 3 * * * root assist-update apply --splay 3600`.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

from common import schedule as grammar


def next_update_time(
    schedule: str, now: datetime, splay: float, rng: random.Random | None = None
) -> datetime | None:
    """When the next scheduled update should run (None if disabled); splay in seconds."""
    when = grammar.next_update_time(schedule, now.timestamp(), splay, rng)
    return None if when is None else datetime.fromtimestamp(when, tz=timezone.utc)
