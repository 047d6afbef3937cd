"""make_updater for the updater tests, importable by name (`from updaterkit import make_updater`):
`from conftest import …` resolves to whichever conftest module was imported first when several
test folders run in one pytest session."""

from __future__ import annotations

from pathlib import Path

from common.layout import Layout
from common.platform import detect_platform
from common.service import ProcessManager
from devkit.fakepayload import LocalRepo
from updater.engine import Updater, UpdateSettings


def make_updater(prefix: Path, repo: LocalRepo, **settings: object) -> Updater:
    plat = detect_platform()
    values = {"health_timeout": 5.0, "settle": 0.3, **settings}
    return Updater(
        Layout(prefix),
        repo,
        ProcessManager(prefix, stop_timeout=3),
        UpdateSettings(os="linux", arch=plat.arch, format="tar.gz", **values),  # type: ignore[arg-type]
    )
