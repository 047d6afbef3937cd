"""The install prefix on a VM: the one place that knows where things live (docs/agent-state.md).

    <prefix>/versions/<ver>/   unpacked payloads; current -> versions/<ver>, previous -> …
    <prefix>/state/            0700: health.json, region-id, agent.pid, tuf/, cache/, the agent's
                               identity and outbox, the updater's journal
    <prefix>/config/assist.toml
    <prefix>/log/              agent.log, update.log

Config, installer, updater, agent and the service managers all take their paths from `Layout`.
A file only one module reads and writes (the journal, the outbox database, the identity) keeps
its name next to that module; the path of every file two components share is here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from common.version import version_sort_key

AGENT_PACKAGE = "aliyun-assist"  # the agent's package name in the release repository
HEALTH_FILE = "health.json"
REGION_FILE = "region-id"
PID_FILE = "agent.pid"
STAGING_PREFIX = ".staging-"  # versions/.staging-*: a payload being unpacked by the updater


def swap_temp_name(name: str, pid: int) -> str:
    """The temp link that a swap of `name` (current/previous) renames over it."""
    return f".{name}.{pid}.tmp"


def is_swap_temp(name: str) -> bool:
    """Whether `name` is a swap's temp link (left behind when a swap was killed)."""
    return name.startswith((".current.", ".previous.")) and name.endswith(".tmp")


class Under:
    """A path under the install prefix, declared by its parts (a read-only attribute of Layout)."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    @overload
    def __get__(self, layout: None, owner: type) -> Under: ...

    @overload
    def __get__(self, layout: Layout, owner: type) -> Path: ...

    def __get__(self, layout: Layout | None, owner: type) -> Under | Path:
        return self if layout is None else layout.prefix.joinpath(*self.parts)


@dataclass(frozen=True)
class Layout:
    """Paths under an install prefix."""

    prefix: Path

    versions_dir = Under("versions")
    state_dir = Under("state")
    log_dir = Under("log")
    config_file = Under("config", "assist.toml")
    current = Under("current")
    previous = Under("previous")
    tuf_dir = Under("state", "tuf")
    cache_dir = Under("state", "cache")
    health_file = Under("state", HEALTH_FILE)  # the agent writes, updater and status read
    region_file = Under("state", REGION_FILE)  # detected once from the metadata service
    pid_file = Under("state", PID_FILE)  # the agent's pid under the `process` manager
    agent_log = Under("log", "agent.log")
    update_log = Under("log", "update.log")

    def version_dir(self, version: str) -> Path:
        return self.versions_dir / version

    def launcher(self, name: str) -> Path:
        """A console script of the current version (`assist-agent`, `assist-update`)."""
        return self.current / "bin" / name

    def shared(self, name: str) -> Path:
        """A file of the current version's share/ (service unit, init script, keys, root.json)."""
        return self.current / "share" / name

    def keys_dir(self) -> Path:
        """Pinned native-signature keys of the running installation."""
        return self.shared("keys")

    def ensure(self) -> None:
        """Create the directories every command expects."""
        for path in (self.versions_dir, self.state_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)
        if os.name != "nt" and self.state_dir.stat().st_uid == os.getuid():
            os.chmod(self.state_dir, 0o700)  # task output and keys live here (docs/agent-state.md)


def installed_versions(layout: Layout) -> list[str]:
    """Version directories present (staging leftovers excluded), in version order."""
    if not layout.versions_dir.is_dir():
        return []
    names = [
        e.name
        for e in layout.versions_dir.iterdir()
        if e.is_dir() and not e.name.startswith(".") and not e.is_symlink()
    ]
    return sorted(names, key=version_sort_key)


def is_runnable(layout: Layout, version: str) -> bool:
    """A version directory that has its launcher."""
    bin_dir = layout.version_dir(version) / "bin"
    if os.name == "nt":  # pragma: no cover - Windows launchers are .cmd files
        return (bin_dir / "assist-agent.cmd").is_file()
    launcher = bin_dir / "assist-agent"
    return launcher.is_file() and os.access(launcher, os.X_OK)
