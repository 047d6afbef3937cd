"""When timed invocations fire: pure functions over frequency strings and clocks.

Frequencies come from the server as in the original product: a 6-field cron with seconds
first and an optional IANA timezone (`0 */10 * * * * Asia/Shanghai`), `rate(5m)`, or
`at(2026-12-01T03:00:00Z)`. Reboot-bound modes (`NextRebootOnly`, `EveryReboot`) fire once per
boot, told apart from a mere service restart by the kernel's boot id.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Union

from common.errors import ConfigError

_RATE = re.compile(r"^rate\(\s*(\d+)\s*([smhd])\s*\)$")
_AT = re.compile(r"^at\(\s*(.+?)\s*\)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidFrequencyError(ConfigError):
    """A timed invocation's frequency cannot be understood."""

    reference = "invalid-frequency"


@dataclass(frozen=True)
class Cron:
    """Seconds-first cron, evaluated in `tz` (empty: UTC)."""

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
    """Parse a frequency string into a schedule; raise InvalidFrequencyError if it is not one."""
    text = text.strip()
    rate = _RATE.match(text)
    if rate:
        seconds = int(rate.group(1)) * _UNIT_SECONDS[rate.group(2)]
        if seconds <= 0:
            raise InvalidFrequencyError(f"rate must be positive: {text!r}")
        return Rate(seconds)
    at = _AT.match(text)
    if at:
        return At(parse_instant(at.group(1)))
    return parse_cron(text)


def parse_instant(text: str) -> float:
    """Parse an ISO-8601 instant (a trailing Z means UTC; no zone means UTC) to Unix seconds."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InvalidFrequencyError(
            f"invalid at() time {text!r}", hint="use ISO-8601, e.g. at(2026-12-01T03:00:00Z)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_cron(text: str) -> Cron:
    """Split `6 fields [timezone]` and validate the expression with croniter."""
    from croniter import croniter  # lazy: keeps the idle agent small

    fields = text.split()
    tz = ""
    if len(fields) == 7:
        tz = fields.pop()
        load_zone(tz)
    if len(fields) != 6:
        raise InvalidFrequencyError(
            f"cron needs 6 fields (seconds first), got {len(fields)}: {text!r}",
            hint="e.g. '0 */10 * * * *' for every 10 minutes",
        )
    expression = " ".join(fields)
    if not croniter.is_valid(expression, second_at_beginning=True):
        raise InvalidFrequencyError(f"invalid cron expression {expression!r}")
    return Cron(expression, tz)


def load_zone(name: str) -> timezone | object:
    """Return the tzinfo for an IANA zone name, or raise InvalidFrequencyError."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidFrequencyError(f"unknown timezone {name!r}") from exc


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


def next_cron(schedule: Cron, after: float) -> float:
    """Next fire of a seconds-first cron after `after`, in the schedule's timezone."""
    from croniter import croniter

    zone = load_zone(schedule.tz) if schedule.tz else timezone.utc
    start = datetime.fromtimestamp(after, tz=zone)  # type: ignore[arg-type]
    it = croniter(schedule.expression, start, second_at_beginning=True)
    return float(it.get_next(float))


def parse_created(text: str) -> float:
    """A task's `created` ISO-8601 stamp as Unix seconds (0 when absent or unreadable)."""
    if not text:
        return 0.0
    try:
        return parse_instant(text)
    except InvalidFrequencyError:
        return 0.0


@dataclass(frozen=True)
class Boot:
    """Which boot of the machine this is."""

    boot_id: str
    boot_time: int  # Unix seconds


def read_boot(proc: Path = Path("/proc")) -> Boot:
    """Read the kernel's boot id and boot time; fall back to the uptime clock elsewhere."""
    boot_time = 0
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("btime "):
                boot_time = int(line.split()[1])
                break
    except OSError:
        pass
    if not boot_time:
        boot_time = int(time.time() - time.monotonic())
    try:
        boot_id = (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = f"btime-{boot_time}"
    return Boot(boot_id, boot_time)


def should_run_on_boot(mode: str, first_seen_boot: str, current: Boot, runs_so_far: int) -> bool:
    """Decide whether a reboot-bound task runs in this boot.

    A task runs only in a boot after the one it was first seen in (a service restart within the
    same boot never counts); NextRebootOnly runs at most once, EveryReboot once per boot (the
    caller names the run after the boot time, so a second start in one boot finds it done).
    """
    if first_seen_boot == current.boot_id:
        return False
    if mode == "NextRebootOnly":
        return runs_so_far == 0
    return mode == "EveryReboot"
