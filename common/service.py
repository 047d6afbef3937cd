"""Service-manager seam: register, start, stop, restart the agent; find its main pid.

Managers: `systemd` (unit file + systemctl), `sysv` (init script + update-rc.d/chkconfig),
`windows` (sc.exe; only exercised here through a fake runner, Windows cannot run on this host),
`process` (pidfile under state/, detached child; used by tests and the demo) and `none`.

Interpreter override for the process manager: when `ALIYUN_ASSIST_PYTHON` (or the launcher's own
`ASSIST_PYTHON`) is set, or `python=` is given, the agent's sh launcher is run with
ASSIST_PYTHON=<that interpreter>, so a payload built with --no-vendor runs with an interpreter that
already has the dependencies (tests, the demo). The launcher still sets PYTHONPATH to the payload.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from common.atomic import atomic_write_text
from common.errors import ToolError, UsageError
from common.layout import Layout
from common.platform import pid_runs

log = logging.getLogger(__name__)
TOOL_TIMEOUT = 600.0  # seconds a service/package tool may take before it counts as hung

PYTHON_ENV = "ALIYUN_ASSIST_PYTHON"
LAUNCHER_PYTHON_ENV = "ASSIST_PYTHON"  # read by the payload's bin/ launchers
PAYLOAD_DEFAULT_PREFIX = "/usr/local/share/aliyun-assist"  # baked into the payload's unit/init
SERVICE_NAME = "aliyun-assist"
WINDOWS_SERVICE = "AliyunAssistService"
MANAGERS = ("systemd", "sysv", "windows", "process", "none")

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_tool(
    argv: Sequence[str], missing_hint: str = "is this the right --service?"
) -> subprocess.CompletedProcess[str]:
    """Run a service or package tool, raising ToolError with its output tail when it fails, is
    missing (with `missing_hint`) or hangs past TOOL_TIMEOUT."""
    try:
        try:
            proc = subprocess.run(
                list(argv), capture_output=True, text=True, check=False, timeout=TOOL_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"{argv[0]} did not finish within {TOOL_TIMEOUT:.0f} s") from exc
    except FileNotFoundError as exc:
        raise ToolError(f"{argv[0]} is not installed", hint=missing_hint) from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-400:]
        raise ToolError(f"{' '.join(argv)} failed ({proc.returncode}): {tail}")
    return proc


def render_for_prefix(text: str, prefix: Path) -> str:
    """A unit/init script from the payload, rewritten for the actual install prefix."""
    return text.replace("@PREFIX@", str(prefix)).replace(PAYLOAD_DEFAULT_PREFIX, str(prefix))


class ServiceManager(Protocol):
    """What the installer and updater need from a service manager."""

    name: str

    def install(self) -> None: ...
    def uninstall(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def main_pid(self) -> int | None: ...


class ProcessManager:
    """A detached child with a pidfile: the manager tests and the demo use."""

    name = "process"

    def __init__(self, prefix: Path, *, python: str | None = None, stop_timeout: float = 10.0):
        self.prefix = prefix
        env_python = os.environ.get(PYTHON_ENV) or os.environ.get(LAUNCHER_PYTHON_ENV)
        self.python = python if python is not None else env_python or None
        self.stop_timeout = stop_timeout

    @property
    def pidfile(self) -> Path:
        return Layout(self.prefix).pid_file

    def command(self) -> list[str]:
        """The agent's command line: the payload's launcher."""
        return [
            str(Layout(self.prefix).launcher("assist-agent")),
            "run",
            "--prefix",
            str(self.prefix),
        ]

    def install(self) -> None:
        """Nothing to register for a plain process."""

    def uninstall(self) -> None:
        self.stop()

    def start(self) -> None:
        """Spawn the agent detached (own session), output to log/agent.log, record its pid."""
        if self.main_pid():
            return
        env = dict(os.environ)
        if self.python:
            env[LAUNCHER_PYTHON_ENV] = self.python
        agent_log = Layout(self.prefix).agent_log
        agent_log.parent.mkdir(parents=True, exist_ok=True)
        with open(agent_log, "ab") as out:
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(self.prefix),
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        atomic_write_text(self.pidfile, f"{proc.pid}\n")
        log.info("started agent pid %d", proc.pid)

    def stop(self) -> None:
        """TERM the recorded pid, KILL it after stop_timeout, forget the pidfile."""
        pid = self.main_pid()
        if pid:
            ours = str(self.prefix)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while pid_runs(pid, ours) and time.monotonic() < deadline:
                time.sleep(0.01)
            if pid_runs(pid, ours):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while pid_runs(pid, ours):
                    time.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()

    def restart(self) -> None:
        self.stop()
        self.start()

    def main_pid(self) -> int | None:
        pid = self._read_pid()
        return pid if pid and pid_runs(pid, str(self.prefix)) else None

    def _read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None


class SystemdManager:
    """A systemd unit from the payload's share/aliyun-assist.service (Restart=on-failure)."""

    name = "systemd"

    def __init__(
        self,
        prefix: Path,
        *,
        unit_dir: Path = Path("/etc/systemd/system"),
        runner: Runner = run_tool,
    ):
        self.prefix = prefix
        self.unit_dir = unit_dir
        self.run = runner
        self.unit = f"{SERVICE_NAME}.service"

    def install(self) -> None:
        """Copy the unit, reload systemd, enable it."""
        source = Layout(self.prefix).shared(self.unit)
        if not source.is_file():
            raise ToolError(f"payload has no {self.unit}", hint="reinstall the agent")
        text = render_for_prefix(source.read_text(encoding="utf-8"), self.prefix)
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.unit_dir / self.unit, text)
        self.run(["systemctl", "daemon-reload"])
        self.run(["systemctl", "enable", self.unit])

    def uninstall(self) -> None:
        with contextlib.suppress(ToolError):
            self.run(["systemctl", "disable", "--now", self.unit])
        with contextlib.suppress(FileNotFoundError):
            (self.unit_dir / self.unit).unlink()
        self.run(["systemctl", "daemon-reload"])

    def start(self) -> None:
        self.run(["systemctl", "start", self.unit])

    def stop(self) -> None:
        self.run(["systemctl", "stop", self.unit])

    def restart(self) -> None:
        self.run(["systemctl", "restart", self.unit])

    def main_pid(self) -> int | None:
        out = self.run(["systemctl", "show", "-p", "MainPID", "--value", self.unit]).stdout.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None


class SysvManager:
    """A SysV init script from the payload's share/aliyun-assist.init."""

    name = "sysv"

    def __init__(
        self, prefix: Path, *, init_dir: Path = Path("/etc/init.d"), runner: Runner = run_tool
    ):
        self.prefix = prefix
        self.init_dir = init_dir
        self.run = runner
        self.script = init_dir / SERVICE_NAME

    def install(self) -> None:
        """Copy the init script and enable it with update-rc.d or chkconfig."""
        source = Layout(self.prefix).shared(f"{SERVICE_NAME}.init")
        if not source.is_file():
            raise ToolError(f"payload has no {SERVICE_NAME}.init", hint="reinstall the agent")
        text = render_for_prefix(source.read_text(encoding="utf-8"), self.prefix)
        self.init_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.script, text, mode=0o755)
        if shutil.which("update-rc.d"):
            self.run(["update-rc.d", SERVICE_NAME, "defaults"])
        elif shutil.which("chkconfig"):
            self.run(["chkconfig", "--add", SERVICE_NAME])

    def uninstall(self) -> None:
        with contextlib.suppress(ToolError):
            self.stop()
        with contextlib.suppress(FileNotFoundError):
            self.script.unlink()

    def start(self) -> None:
        self.run([str(self.script), "start"])

    def stop(self) -> None:
        self.run([str(self.script), "stop"])

    def restart(self) -> None:
        self.run([str(self.script), "restart"])

    def main_pid(self) -> int | None:
        try:
            text = Layout(self.prefix).pid_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and pid_runs(int(text), str(self.prefix)) else None


class WindowsManager:
    """A Windows service through sc.exe (tests use a fake runner: no Windows here)."""

    name = "windows"

    def __init__(self, prefix: Path, *, runner: Runner = run_tool):
        self.prefix = prefix
        self.run = runner

    def install(self) -> None:
        launcher = Layout(self.prefix).launcher("assist-agent.exe")
        binpath = f'"{launcher}" run --prefix "{self.prefix}"'
        self.run(["sc.exe", "create", WINDOWS_SERVICE, f"binPath= {binpath}", "start= auto"])
        self.run(["sc.exe", "failure", WINDOWS_SERVICE, "reset= 86400", "actions= restart/5000"])

    def uninstall(self) -> None:
        with contextlib.suppress(ToolError):
            self.stop()
        self.run(["sc.exe", "delete", WINDOWS_SERVICE])

    def start(self) -> None:
        self.run(["sc.exe", "start", WINDOWS_SERVICE])

    def stop(self) -> None:
        self.run(["sc.exe", "stop", WINDOWS_SERVICE])

    def restart(self) -> None:
        with contextlib.suppress(ToolError):
            self.stop()
        self.start()

    def main_pid(self) -> int | None:
        out = self.run(["sc.exe", "queryex", WINDOWS_SERVICE]).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "PID" and value.strip().isdigit() and int(value) > 0:
                return int(value)
        return None


class NoManager:
    """No service integration: nothing is started or stopped."""

    name = "none"

    def __init__(self, prefix: Path):
        self.prefix = prefix

    def install(self) -> None: ...
    def uninstall(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...

    def main_pid(self) -> int | None:
        return None


def make_service(name: str, prefix: Path, *, runner: Runner | None = None) -> ServiceManager:
    """The service manager called `name` for `prefix`."""
    if name == "process":
        return ProcessManager(prefix)
    if name == "none":
        return NoManager(prefix)
    run = runner or run_tool
    if name == "systemd":
        return SystemdManager(prefix, runner=run)
    if name == "sysv":
        return SysvManager(prefix, runner=run)
    if name == "windows":
        return WindowsManager(prefix, runner=run)
    raise UsageError(f"unknown service manager {name!r}", hint=f"use one of {', '.join(MANAGERS)}")


def default_service_name() -> str:
    """systemd when it runs, else SysV, Windows on Windows, else a plain process."""
    if sys.platform == "win32":
        return "windows"
    if Path("/run/systemd/system").is_dir():
        return "systemd"
    if Path("/etc/init.d").is_dir() and (shutil.which("update-rc.d") or shutil.which("chkconfig")):
        return "sysv"
    return "process"
