"""When timed invocations fire: the shared schedule grammar, and reboot detection.

Frequencies are parsed and evaluated by common/schedule.py, the one grammar the server validates
with (docs/schedules.md); it is re-exported here for the daemon. Reboot-bound modes
(`NextRebootOnly`, `EveryReboot`) fire once per boot, told apart from a mere service restart by
the kernel's boot id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from common.schedule import (
    At,
    Cron,
    InvalidFrequencyError,
    Rate,
    Schedule,
    next_fire,
    next_update_time,
    parse_created,
    parse_frequency,
)

__all__ = [
    "At",
    "Boot",
    "Cron",
    "InvalidFrequencyError",
    "Rate",
    "Schedule",
    "next_fire",
    "next_update_time",
    "parse_created",
    "parse_frequency",
    "read_boot",
    "should_run_on_boot",
]


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
