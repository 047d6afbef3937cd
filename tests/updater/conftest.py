"""Fixtures for updater tests: a prefix with a fake agent installed and running (process manager)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.service import ProcessManager
from devkit.fakepayload import install_version, make_tarball


@pytest.fixture
def prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """<tmp>/prefix with fake agent 1.0.0 as current, started by the process manager."""
    monkeypatch.delenv("ALIYUN_ASSIST_PYTHON", raising=False)
    monkeypatch.delenv("ASSIST_UPDATE_CRASH_AT", raising=False)
    root = tmp_path / "prefix"
    install_version(root, "1.0.0", current=True)
    service = ProcessManager(root, stop_timeout=3)
    service.start()
    yield root
    ProcessManager(root, stop_timeout=1).stop()


@pytest.fixture
def artifacts(tmp_path: Path) -> dict[str, Path]:
    """Fake tar.gz artifacts: 1.1.0 good, 1.2.0 broken (its agent exits at start)."""
    out = tmp_path / "dist"
    return {
        "1.0.0": make_tarball(out / "aliyun-assist-1.0.0-linux-x86_64.tar.gz", "1.0.0"),
        "1.1.0": make_tarball(out / "aliyun-assist-1.1.0-linux-x86_64.tar.gz", "1.1.0"),
        "1.2.0": make_tarball(
            out / "aliyun-assist-1.2.0-linux-x86_64.tar.gz", "1.2.0", broken=True
        ),
    }
