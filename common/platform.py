"""Platform detection: os, arch, package format, init system."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_ARCH_ALIASES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "i386": "i386",
    "i686": "i386",
    "x86": "i386",
}

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i386": "i386"}


@dataclass(frozen=True)
class PlatformInfo:
    """What kind of machine this is, as far as installing software is concerned."""

    os: str  # linux | windows | darwin
    arch: str  # x86_64 | aarch64 | i386
    package_format: str  # deb | rpm | exe | tar.gz
    init_system: str  # systemd | sysv | windows | none

    @property
    def deb_arch(self) -> str:
        return DEB_ARCH.get(self.arch, self.arch)


def normalize_arch(machine: str) -> str:
    """Map uname/Windows/Debian arch names to ours (x86_64, aarch64, i386)."""
    return _ARCH_ALIASES.get(machine.lower(), machine.lower())


def detect_package_format(os_name: str, root: Path = Path("/")) -> str:
    """Pick the native package format: exe on Windows, deb/rpm by the package database."""
    if os_name == "windows":
        return "exe"
    if (root / "var/lib/dpkg/status").exists() and shutil.which("dpkg"):
        return "deb"
    if (root / "var/lib/rpm").exists() and shutil.which("rpm"):
        return "rpm"
    return "tar.gz"


def detect_init_system(os_name: str, root: Path = Path("/")) -> str:
    """Pick the service manager: systemd when it runs, else SysV when present."""
    if os_name == "windows":
        return "windows"
    if (root / "run/systemd/system").is_dir():
        return "systemd"
    if (root / "etc/init.d").is_dir():
        return "sysv"
    return "none"


def detect_platform() -> PlatformInfo:
    """Describe the running machine."""
    os_name = {"win32": "windows", "darwin": "darwin"}.get(sys.platform, "linux")
    arch = normalize_arch(platform.machine() or os.environ.get("PROCESSOR_ARCHITECTURE", ""))
    return PlatformInfo(
        os=os_name,
        arch=arch,
        package_format=detect_package_format(os_name),
        init_system=detect_init_system(os_name),
    )


def pid_alive(pid: int) -> bool:
    """True when `pid` runs and is not a zombie (our own dead children are reaped)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def pid_runs(pid: int, argument: str) -> bool:
    """True when `pid` is alive and, where procfs shows command lines, has `argument` among its
    arguments (the agent is started with `--prefix PREFIX`).

    A pidfile outlives a killed process and pids are reused (pid_max is often 32768): without this
    check a stale pidfile would have us signal an unrelated process.
    """
    if not pid_alive(pid):
        return False
    if not Path("/proc/self/cmdline").exists():
        return True  # no procfs (macOS, Windows): liveness is all there is to check
    # A process in the middle of execve (the launcher script exec'ing python) shows an empty
    # cmdline for a moment; a kernel thread shows one for good. Look again briefly before
    # deciding: calling a live agent dead would start a second one.
    deadline = time.monotonic() + 0.5
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False  # exited meanwhile
        if raw or time.monotonic() > deadline or not pid_alive(pid):
            return os.fsencode(argument) in raw.split(b"\0")
        time.sleep(0.005)
