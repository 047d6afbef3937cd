"""Suite-wide fixtures: the loopback-only network guard, and environment for real tools."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/ holds the shared helpers; the project root goes before it, or the test folders named after
# our packages (tests/common, tests/agent, …) would be imported as namespace packages in their
# place whenever pytest is started as a script (`.venv/bin/pytest`) rather than `python -m pytest`.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
import netguard  # noqa: E402

TESTS_DIR = Path(__file__).parent
REPO_ROOT = TESTS_DIR.parent
# Non-Python tools (curl, apt, dnf) get a proxy that goes nowhere for any non-loopback host.
BLACKHOLE_PROXY = "http://127.0.0.1:9"
LOOPBACK_NO_PROXY = "127.0.0.1,localhost,::1"


def pytest_configure(config: pytest.Config) -> None:
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    log = log_dir / f"assist-netguard-{os.getpid()}.log"
    log.write_text("")
    os.environ[netguard.LOG_ENV] = str(log)
    site = str(TESTS_DIR / "netguard_site")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in [site, str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p
    )
    # Defaults that would reach the real world are pointed at loopback for every subprocess too.
    os.environ["ALIYUN_ASSIST_REGION"] = os.environ.get("ALIYUN_ASSIST_REGION", "cn-test")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        os.environ.pop(var, None)
    netguard.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove this run's guard log when nothing was refused (keep it as evidence otherwise)."""
    log = Path(os.environ.get(netguard.LOG_ENV, ""))
    if log.name.startswith("assist-netguard-") and log.is_file() and log.stat().st_size == 0:
        log.unlink()


@pytest.fixture(autouse=True)
def _network_guard() -> Iterator[None]:
    """Fail any test during which this process or a Python child tried a non-loopback address."""
    log = Path(os.environ[netguard.LOG_ENV])
    start = log.stat().st_size if log.exists() else 0
    yield
    if log.exists() and log.stat().st_size > start:
        with log.open(encoding="utf-8") as handle:
            handle.seek(start)
            tried = handle.read()
        pytest.fail("test tried to reach a non-loopback address:\n" + tried[:4000], pytrace=False)


@pytest.fixture
def tool_env() -> dict[str, str]:
    """Environment for external tools: proxies that refuse everything but loopback."""
    env = dict(os.environ)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env[var] = BLACKHOLE_PROXY
    env["no_proxy"] = env["NO_PROXY"] = LOOPBACK_NO_PROXY
    return env


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[Any]:
    """A loopback HTTP server over `tmp_path / "www"` (created empty)."""
    from devkit.httpserver import StaticServer

    root = tmp_path / "www"
    root.mkdir()
    with StaticServer(root) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _stop_leftover_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the run, kill what a test left running from its temporary directory (an
    agent, an updater): leftovers loaded the machine long after the run ended."""
    from devkit.polling import stop_processes_mentioning

    yield
    for line in stop_processes_mentioning(str(tmp_path_factory.getbasetemp()), quiet=0.5):
        print(f"killed a process a test left running: {line[:300]}", file=sys.stderr)


@pytest.fixture(scope="session", autouse=True)
def _stop_stray_gpg_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """gpg and dnf (librepo) start a gpg-agent per GNUPGHOME; stop those under this run's tmp."""
    from devkit.polling import process_cmdlines

    yield
    base = str(tmp_path_factory.getbasetemp()).encode()
    for pid, cmdline in process_cmdlines():
        # the homedir may be a short alias (pkgbuild.keys.gnupg_home) of a directory under base
        homes = [os.path.realpath(arg) for arg in cmdline.split(b"\0") if arg.startswith(b"/")]
        if cmdline.startswith(b"gpg-agent") and any(home.startswith(base) for home in homes):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
