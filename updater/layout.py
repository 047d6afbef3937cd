"""The installed prefix (DESIGN.md §5): one place that knows where things live."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.version import version_sort_key

AGENT_PACKAGE = "aliyun-assist"


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
    def tuf_dir(self) -> Path:
        return self.state_dir / "tuf"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def health_file(self) -> Path:
        return self.state_dir / "health.json"

    @property
    def current(self) -> Path:
        return self.prefix / "current"

    @property
    def previous(self) -> Path:
        return self.prefix / "previous"

    def version_dir(self, version: str) -> Path:
        return self.versions_dir / version

    def keys_dir(self) -> Path:
        """Pinned native-signature keys of the running installation."""
        return self.current / "share" / "keys"

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
