"""The service-manager seam for power actions asked for by exit codes 193 (off) and 194 (reboot)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Protocol

log = logging.getLogger(__name__)


class PowerManager(Protocol):
    """Something that can power the machine off or reboot it."""

    def power_off(self) -> None: ...

    def reboot(self) -> None: ...


class SystemPower:
    """The real machine: systemctl when present, else shutdown; Windows: shutdown.exe."""

    def _run(self, argv: list[str]) -> None:
        log.warning("power action requested by a task: %s", " ".join(argv))
        subprocess.run(argv, check=False, stdin=subprocess.DEVNULL)

    def power_off(self) -> None:
        """Power the machine off."""
        if os.name == "nt":  # pragma: no cover - Windows only
            self._run(["shutdown", "/s", "/t", "0"])
        elif shutil.which("systemctl"):
            self._run(["systemctl", "poweroff"])
        else:
            self._run(["shutdown", "-h", "now"])

    def reboot(self) -> None:
        """Reboot the machine."""
        if os.name == "nt":  # pragma: no cover - Windows only
            self._run(["shutdown", "/r", "/t", "0"])
        elif shutil.which("systemctl"):
            self._run(["systemctl", "reboot"])
        else:
            self._run(["shutdown", "-r", "now"])


class RecordingPower:
    """A fake for tests and dry runs: records the actions instead of doing them."""

    def __init__(self) -> None:
        self.actions: list[str] = []

    def power_off(self) -> None:
        """Record a power-off."""
        self.actions.append("power_off")

    def reboot(self) -> None:
        """Record a reboot."""
        self.actions.append("reboot")
