"""The schedule grammar, defined once: parse a frequency and compute when it fires next.

One grammar for the server (InvokeCommand's `Frequency` validation), the agent (timed
invocations) and the updater (the `[update] schedule`), so what the server accepts is exactly
what an agent can schedule. The grammar follows the ECS Cloud Assistant API (docs/schedules.md):

- cron: `sec min hour day month weekday [year] [zone]`, seconds first; `?`, `L`, `W`, `#` and
  month/day names as croniter reads them; evaluated in `zone`, or without one in the system
  time zone of the machine that evaluates it (the VM's, as the real API does: `TZ`, else
  /etc/localtime, else the current UTC offset);
- `rate(<n><s|m|h|d>)`: every n units, 60 s to 7 days, counted from the task's creation;
- `at(<time> [zone])`: once; `<time>` is ISO-8601 (`2026-12-01T03:00:00Z`) or the API's
  `2026-12-01 03:00:00 Asia/Shanghai`; UTC when no zone or offset is given.

Zones are IANA names (`Asia/Shanghai`), `UTC`, or fixed offsets `GMT+8`, `UTC-05:30`.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Union

from common.errors import ConfigError

LOCALTIME = "/etc/localtime"
MIN_RATE = 60  # seconds, as the real API
MAX_RATE = 7 * 86400  # seconds
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^rate\(\s*(\d{1,7})([smhd])\s*\)$")
_AT = re.compile(r"^at\(\s*(.+?)\s*\)$")
_OFFSET_ZONE = re.compile(r"^(?:GMT|UTC)([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)
_YEAR_FIELD = re.compile(r"^[0-9*,/?-]+$")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*,/?#-]+$")
_CRON_HINT = (
    "seconds first, e.g. '0 */10 * * * *' (every 10 minutes) or '0 0 3 * * * Asia/Shanghai'"
)


class InvalidFrequencyError(ConfigError):
    """A frequency or update schedule is not in the schedule grammar."""

    reference = "invalid-frequency"


@dataclass(frozen=True)
class Cron:
    """Seconds-first cron (6 or 7 fields, the 7th a year), evaluated in `tz` (empty: the
    system time zone)."""

    expression: str
    tz: str = ""


@dataclass(frozen=True)
class Rate:
    """Every `seconds`, counted from the task's creation time."""

    seconds: int


@dataclass(frozen=True)
class At:
    """Once, at `when` (Unix seconds)."""

    when: float


Schedule = Union[Cron, Rate, At]


def parse_frequency(text: str) -> Schedule:
    """Parse a frequency (cron, rate or at); InvalidFrequencyError when it is not one."""
    text = text.strip()
    if text.startswith("rate("):
        return parse_rate(text)
    if text.startswith("at("):
        at = _AT.match(text)
        if not at:
            raise InvalidFrequencyError(f"invalid at() expression {text!r}", hint=_AT_HINT)
        return At(parse_instant(at.group(1)))
    return parse_cron(text)


def parse_rate(text: str) -> Rate:
    """Parse `rate(5m)`: 60 s to 7 days, as the real API allows."""
    rate = _RATE.match(text.strip())
    if not rate:
        raise InvalidFrequencyError(
            f"invalid rate expression {text!r}", hint="use rate(<n><s|m|h|d>), e.g. rate(5m)"
        )
    seconds = int(rate.group(1)) * _UNIT_SECONDS[rate.group(2)]
    if not MIN_RATE <= seconds <= MAX_RATE:
        raise InvalidFrequencyError(
            f"rate interval {text!r} is outside 60 s to 7 days",
            hint="choose an interval from rate(60s) to rate(7d)",
        )
    return Rate(seconds)


_AT_HINT = "use at(2026-12-01T03:00:00Z) or at(2026-12-01 11:00:00 Asia/Shanghai)"


def parse_instant(text: str) -> float:
    """An at() time as Unix seconds: ISO-8601 or `date time [zone]`; no zone means UTC."""
    parts = text.strip().split()
    zone: tzinfo | None = None
    if len(parts) == 3:
        zone = parse_zone(parts.pop())
    if len(parts) not in (1, 2):
        raise InvalidFrequencyError(f"invalid at() time {text!r}", hint=_AT_HINT)
    iso = "T".join(parts)
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InvalidFrequencyError(f"invalid at() time {text!r}", hint=_AT_HINT) from exc
    if moment.tzinfo is not None and zone is not None:
        raise InvalidFrequencyError(f"at() time {text!r} has two time zones", hint=_AT_HINT)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone or timezone.utc)
    return moment.timestamp()


def system_zone(environ: Mapping[str, str] | None = None) -> tzinfo:
    """This machine's time zone, read on each call (an operator may change it): `TZ` if it
    names a zone, else /etc/localtime, else the current UTC offset (Windows, a bare root)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = (os.environ if environ is None else environ).get("TZ", "").lstrip(":")
    if name:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
            return timezone.utc if name.upper() in ("UTC", "GMT") else ZoneInfo(name)
    with contextlib.suppress(OSError, ValueError), open(LOCALTIME, "rb") as handle:
        return ZoneInfo.from_file(handle, key="localtime")
    return datetime.now().astimezone().tzinfo or timezone.utc


def parse_zone(name: str) -> tzinfo:
    """A time zone: IANA name, UTC/GMT, or a fixed offset `GMT+8` / `UTC-05:30`."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name.upper() in ("UTC", "GMT", "Z"):
        return timezone.utc
    offset = _OFFSET_ZONE.match(name)
    if offset:
        hours, minutes = int(offset.group(2)), int(offset.group(3) or 0)
        if hours > 14 or minutes > 59:
            raise InvalidFrequencyError(f"time zone offset {name!r} is out of range")
        delta = timedelta(hours=hours, minutes=minutes)
        return timezone(-delta if offset.group(1) == "-" else delta)
    if not re.match(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$", name):
        raise InvalidFrequencyError(f"unknown time zone {name!r}", hint="e.g. Asia/Shanghai")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidFrequencyError(
            f"unknown time zone {name!r}", hint="use an IANA name such as Asia/Shanghai, or GMT+8"
        ) from exc


def parse_cron(text: str) -> Cron:
    """Parse `6 fields [year] [zone]`, seconds first; InvalidFrequencyError if it never fires."""
    fields = text.split()
    tz = ""
    if len(fields) in (7, 8) and not _YEAR_FIELD.match(fields[-1]):
        tz = fields.pop()
        parse_zone(tz)
    if len(fields) not in (6, 7):
        raise InvalidFrequencyError(
            f"cron needs 6 fields (seconds first) and an optional year, got {len(fields)}: "
            f"{text!r}",
            hint=_CRON_HINT,
        )
    if not all(_CRON_FIELD.match(field) for field in fields):
        raise InvalidFrequencyError(f"invalid character in cron {text!r}", hint=_CRON_HINT)
    cron = Cron(" ".join(fields), tz)
    if not _cron_is_valid(cron.expression):
        raise InvalidFrequencyError(f"invalid cron expression {cron.expression!r}", hint=_CRON_HINT)
    return cron


def _cron_is_valid(expression: str) -> bool:
    """True if croniter reads `expression` and it fires at least once from 1970 on."""
    from croniter import croniter  # lazy: keeps the idle agent small

    try:
        if not croniter.is_valid(expression, second_at_beginning=True):
            return False
        start = datetime(1970, 1, 1, tzinfo=timezone.utc)
        croniter(
            expression, start, second_at_beginning=True, max_years_between_matches=150
        ).get_next(float)
    except Exception:  # croniter raises a zoo of types (KeyError, ValueError, its own, …)
        return False
    return True


def next_fire(schedule: Schedule, after: float, created: float = 0.0) -> float | None:
    """The first fire time strictly after `after` (Unix seconds), or None if there is none."""
    if isinstance(schedule, At):
        return schedule.when if schedule.when > after else None
    if isinstance(schedule, Rate):
        if after < created:
            return created + schedule.seconds
        periods = int((after - created) // schedule.seconds) + 1
        return created + periods * schedule.seconds
    return next_cron(schedule, after)


def next_cron(schedule: Cron, after: float) -> float | None:
    """Next fire of a seconds-first cron after `after`, in its zone; None when it never will."""
    from croniter import croniter

    zone = parse_zone(schedule.tz) if schedule.tz else system_zone()
    start = datetime.fromtimestamp(after, tz=zone)
    try:
        it = croniter(
            schedule.expression, start, second_at_beginning=True, max_years_between_matches=150
        )
        return float(it.get_next(float))
    except Exception:  # a year range in the past: croniter gives up with its own error
        return None


def next_update_time(
    text: str, after: float, splay: float, rng: random.Random | None = None
) -> float | None:
    """When the next scheduled update runs (Unix seconds): cron fire + random splay (seconds).

    None when `text` is empty (scheduled updates off) or the cron never fires again.
    """
    if not text.strip():
        return None
    fire = next_cron(parse_cron(text), after)
    if fire is None:
        return None
    return fire + (rng or random.Random()).uniform(0, max(0.0, splay))


def parse_created(text: str) -> float:
    """A task's `created` ISO-8601 stamp as Unix seconds (0 when absent or unreadable)."""
    if not text:
        return 0.0
    try:
        return parse_instant(text)
    except InvalidFrequencyError:
        return 0.0
