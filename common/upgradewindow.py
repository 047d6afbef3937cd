"""Agent upgrade windows, defined once: the server validates ModifyCloudAssistantSettings with
this module and the agent decides with it when a scheduled self-update may run.

A window is `HH:MM-HH:MM` in a time zone (IANA name, `UTC`, or `GMT+8:00`; the zones of
common/schedule.py); a window whose end is earlier than its start wraps midnight
(`22:00-02:00`). The start is inside, the end outside. Each window lasts at least an hour and
windows do not overlap (the ECS API's AgentUpgradeConfig rules), so a day holds at most 24.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone, tzinfo
from typing import Any

from common.errors import ConfigError
from common.schedule import InvalidFrequencyError, parse_zone

MIN_WINDOW = 60  # minutes a window lasts at least
MAX_WINDOWS = 24  # an hour each, not overlapping: a day holds at most 24
DAY = 24 * 60  # minutes
_WINDOW = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$")


class InvalidWindowError(ConfigError):
    """An upgrade window, a set of them or their time zone breaks the rules above."""

    reference = "invalid-upgrade-window"


@dataclass(frozen=True)
class Window:
    """From `start` to `end`, minutes after local midnight; wraps midnight when end < start."""

    start: int
    end: int

    @property
    def minutes(self) -> int:
        """How long the window lasts."""
        return (self.end - self.start) % DAY

    def holds(self, minute: float) -> bool:
        """True if `minute` (after local midnight, fractions allowed) is inside."""
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return (
            f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        )


def parse_window(text: str) -> Window:
    """`HH:MM-HH:MM` as a Window; InvalidWindowError when malformed or shorter than an hour."""
    match = _WINDOW.match(text.strip())
    if not match:
        raise InvalidWindowError(
            f"upgrade window {text!r} is not HH:MM-HH:MM", hint="e.g. 02:00-03:00 or 22:00-01:00"
        )
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    window = Window(h1 * 60 + m1, h2 * 60 + m2)
    if window.minutes < MIN_WINDOW:
        raise InvalidWindowError(
            f"upgrade window {text!r} lasts less than {MIN_WINDOW} minutes",
            hint="each window lasts at least an hour",
        )
    return window


def parse_windows(texts: list[str]) -> list[Window]:
    """Several windows: each valid, at most MAX_WINDOWS, none overlapping another."""
    if len(texts) > MAX_WINDOWS:
        raise InvalidWindowError(f"at most {MAX_WINDOWS} upgrade windows, got {len(texts)}")
    windows = [parse_window(t) for t in texts]
    taken: dict[int, Window] = {}
    for window in windows:
        for step in range(window.minutes):
            minute = (window.start + step) % DAY
            other = taken.setdefault(minute, window)
            if other is not window:
                raise InvalidWindowError(f"upgrade windows {other} and {window} overlap")
    return windows


def zone_of(name: str) -> tzinfo:
    """The time zone of the windows (empty: UTC); InvalidWindowError when unknown."""
    if not name:
        return timezone.utc
    try:
        return parse_zone(name)
    except InvalidFrequencyError as exc:
        raise InvalidWindowError(exc.message, hint=exc.hint) from exc


def minute_of_day(when: float, zone: tzinfo) -> float:
    """Minutes after local midnight at Unix time `when` in `zone`."""
    local = datetime.fromtimestamp(when, tz=zone)
    return local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60


def open_at(windows: list[Window], zone: tzinfo, when: float) -> Window | None:
    """The window holding Unix time `when`, or None."""
    minute = minute_of_day(when, zone)
    return next((w for w in windows if w.holds(minute)), None)


def next_opening(windows: list[Window], zone: tzinfo, after: float) -> tuple[float, Window] | None:
    """The first time a window opens strictly after `after` (Unix s), with that window."""
    day = datetime.fromtimestamp(after, tz=zone).date()
    best: tuple[float, Window] | None = None
    for offset in range(3):
        date = day + timedelta(days=offset)
        for window in windows:
            local = time(window.start // 60, window.start % 60)
            start = datetime.combine(date, local, tzinfo=zone).timestamp()
            if start > after and (best is None or start < best[0]):
                best = (start, window)
    return best


@dataclass(frozen=True)
class UpgradePolicy:
    """AgentUpgradeConfig as an agent obeys it (docs/agent-protocol.md, update_check).

    `disabled` (DisableUpgrade): no scheduled update at all. `enabled` (custom settings on): a
    scheduled update runs only inside one of `windows`, read in `time_zone`. Neither: the
    agent's own [update] schedule, as without a server setting.
    """

    enabled: bool = False
    windows: tuple[Window, ...] = ()
    time_zone: str = "UTC"
    disabled: bool = False

    @classmethod
    def from_wire(cls, value: Any) -> UpgradePolicy:
        """The `upgrade_config` object of a signed update_check answer; ValueError if malformed."""
        if not isinstance(value, dict):
            raise ValueError("upgrade_config must be an object")
        enabled, disabled = value.get("enabled"), value.get("disable_upgrade", False)
        texts, zone = value.get("allowed_upgrade_windows"), value.get("time_zone", "UTC")
        if not isinstance(enabled, bool) or not isinstance(disabled, bool):
            raise ValueError("enabled and disable_upgrade must be booleans")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("allowed_upgrade_windows must be a list of strings")
        if not isinstance(zone, str):
            raise ValueError("time_zone must be a string")
        try:
            windows = parse_windows(texts)
            zone_of(zone)
        except InvalidWindowError as exc:
            raise ValueError(exc.message) from exc
        if enabled and not windows:
            raise ValueError("enabled upgrade settings need at least one window")
        return cls(enabled, tuple(windows), zone or "UTC", disabled)

    def to_wire(self) -> dict[str, Any]:
        """The object agents receive in update_check (and keep in state/upgrade-policy.json)."""
        return {
            "enabled": self.enabled,
            "allowed_upgrade_windows": [str(w) for w in self.windows],
            "time_zone": self.time_zone,
            "disable_upgrade": self.disabled,
        }

    def gate(self, when: float) -> float | None:
        """When a scheduled update due at `when` may run: `when` itself if allowed, the next
        window opening if not, None if never (disabled)."""
        if self.disabled:
            return None
        if not self.enabled:
            return when
        zone = zone_of(self.time_zone)
        if open_at(list(self.windows), zone, when) is not None:
            return when
        opening = next_opening(list(self.windows), zone, when)
        return opening[0] if opening else None

    def window_left(self, when: float) -> float:
        """Seconds from `when` until the window holding it closes (0 outside every window)."""
        zone = zone_of(self.time_zone)
        window = open_at(list(self.windows), zone, when)
        if window is None:
            return 0.0
        minute = minute_of_day(when, zone)
        return ((window.end - minute) % DAY) * 60.0
