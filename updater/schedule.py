"""Scheduled updates: seconds-first cron (like timed invocations) plus a random splay.

The agent asks `next_update_time` when to run `assist-update apply`; `assist-update schedule
--wait` does the same from a shell. Hosts that prefer the system cron can use its 5-field form
and let the updater add the splay: `0 3 * * * root assist-update apply --splay 3600`.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from croniter import CroniterBadCronError, croniter

from common.errors import ConfigError


def next_update_time(
    schedule: str, now: datetime, splay: float, rng: random.Random | None = None
) -> datetime | None:
    """When the next scheduled update should run (None if disabled); splay in seconds."""
    if not schedule.strip():
        return None
    fields = schedule.split()
    if len(fields) != 6:
        raise ConfigError(
            f"update schedule {schedule!r} must have 6 fields, seconds first",
            hint="e.g. '0 0 3 * * *' for 03:00 every day",
        )
    try:
        fire = croniter(schedule, now, second_at_beginning=True).get_next(datetime)
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise ConfigError(f"bad update schedule {schedule!r}: {exc}") from exc
    delay = (rng or random.Random()).uniform(0, max(0.0, splay))
    return fire + timedelta(seconds=delay)
