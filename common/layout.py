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

from common.version import version_sort_key

AGENT_PACKAGE = "aliyun-assist"  # the agent's package name in the release repository
HEALTH_FILE = "health.json"
REGION_FILE = "region-id"
PID_FILE = "agent.pid"


@dataclass(frozen=True)
class Layout:
    """Paths under an install prefix."""

    prefix: Path

    @property
    def versions_dir(self) -> Path:
        return self.prefix / "versions"

    @property
    def state_dir(self) -> Path:
        return self.prefix / "state"

    @property
    def log_dir(self) -> Path:
        return self.prefix / "log"

    @property
    def config_file(self) -> Path:
        return self.prefix / "config" / "assist.toml"

    @property
    def tuf_dir(self) -> Path:
        return self.state_dir / "tuf"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def health_file(self) -> Path:
        """Written by the running agent, read by the updater and `assist-agent status`."""
        return self.state_dir / HEALTH_FILE

    @property
    def region_file(self) -> Path:
        """The region detected once from the metadata service."""
        return self.state_dir / REGION_FILE

    @property
    def pid_file(self) -> Path:
        """The agent's pid under the `process` service manager."""
        return self.state_dir / PID_FILE

    @property
    def agent_log(self) -> Path:
        return self.log_dir / "agent.log"

    @property
    def update_log(self) -> Path:
        return self.log_dir / "update.log"

    @property
    def current(self) -> Path:
        return self.prefix / "current"

    @property
    def previous(self) -> Path:
        return self.prefix / "previous"

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
