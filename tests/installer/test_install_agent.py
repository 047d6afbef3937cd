"""First install of the agent (installer.agent.install_agent) with fake payloads and a local
stand-in repository; service registration for process (real), systemd and SysV (recording
runner: no systemd/init here). The TUF-verified path over HTTP is in tests/updater/test_update_e2e.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from common.config import load_config
from common.errors import LocalStateError, VerificationError
from common.layout import Layout
from common.service import ProcessManager, SystemdManager, SysvManager
from devkit.fakepayload import LocalRepo, make_tarball
from installer.agent import AgentInstall, install_agent, render_config

SPEC = AgentInstall(os="linux", arch="x86_64", health_timeout=10)


def no_native_check(artifact: Path, fmt: str) -> None:
    return None


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, "", "")


@pytest.fixture
def repo(tmp_path: Path) -> LocalRepo:
    return LocalRepo(
        {
            "1.0.0": make_tarball(tmp_path / "d" / "a-1.0.0.tar.gz", "1.0.0"),
            "1.1.0": make_tarball(tmp_path / "d" / "a-1.1.0.tar.gz", "1.1.0", broken=True),
        }
    )


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProcessManager]:
    """The process service manager of tmp_path/prefix, stopped after the test."""
    monkeypatch.delenv("ALIYUN_ASSIST_PYTHON", raising=False)
    manager = ProcessManager(tmp_path / "prefix", stop_timeout=2)
    yield manager
    manager.stop()


def test_install_with_process_manager_starts_a_healthy_agent(
    repo: LocalRepo, tmp_path: Path, service: ProcessManager
) -> None:
    prefix = tmp_path / "prefix"
    result = install_agent(
        Layout(prefix),
        repo,
        service,
        AgentInstall(os="linux", arch="x86_64", version="1.0.0", health_timeout=10),
        verify_native=no_native_check,
        config_text=render_config("process", ["http://127.0.0.1:1/"], "cn-test"),
    )
    assert result["version"] == "1.0.0" and result["healthy"] is True
    assert (prefix / "current").readlink() == Path("versions/1.0.0")
    config = load_config(prefix=prefix)
    assert config.mirror.mirrors == ["http://127.0.0.1:1/"] and config.update.service == "process"
    assert service.main_pid() is not None


def test_install_of_an_agent_that_does_not_start_is_an_error(
    repo: LocalRepo, tmp_path: Path, service: ProcessManager
) -> None:
    prefix = tmp_path / "prefix"
    with pytest.raises(LocalStateError, match="not healthy"):
        install_agent(
            Layout(prefix),
            repo,
            service,
            AgentInstall(os="linux", arch="x86_64", version="1.1.0", health_timeout=5),
            verify_native=no_native_check,
        )


def test_native_verification_failure_installs_nothing(repo: LocalRepo, tmp_path: Path) -> None:
    def refuse(artifact: Path, fmt: str) -> None:
        raise VerificationError("bad signature")

    prefix = tmp_path / "prefix"
    with pytest.raises(VerificationError):
        install_agent(Layout(prefix), repo, ProcessManager(prefix), SPEC, verify_native=refuse)
    assert not (prefix / "current").exists()
    assert list((prefix / "versions").iterdir()) == []


def test_install_registers_systemd_unit_for_the_prefix(repo: LocalRepo, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    runner = Recorder()
    service = SystemdManager(prefix, unit_dir=tmp_path / "units", runner=runner)
    spec = AgentInstall(os="linux", arch="x86_64", version="1.0.0", start=True, health_timeout=0)
    install_agent(Layout(prefix), repo, service, spec, verify_native=no_native_check)
    unit = (tmp_path / "units" / "aliyun-assist.service").read_text()
    assert f"ExecStart={prefix}/current/bin/assist-agent run --prefix {prefix}" in unit
    assert ["systemctl", "enable", "aliyun-assist.service"] in runner.calls
    assert runner.calls[-1] == ["systemctl", "restart", "aliyun-assist.service"]


def test_install_registers_sysv_script(repo: LocalRepo, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    runner = Recorder()
    service = SysvManager(prefix, init_dir=tmp_path / "init.d", runner=runner)
    spec = AgentInstall(os="linux", arch="x86_64", version="1.0.0", health_timeout=0)
    install_agent(Layout(prefix), repo, service, spec, verify_native=no_native_check)
    assert f'PREFIX="{prefix}"' in (tmp_path / "init.d" / "aliyun-assist").read_text()
    assert runner.calls[-1] == [str(tmp_path / "init.d" / "aliyun-assist"), "restart"]
