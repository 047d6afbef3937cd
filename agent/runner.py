"""Running one execution of a task: script file, interpreter, user, directory, timeout, output.

Each execution runs in its own session (POSIX: a new process group whose id is the child's pid),
with stdin from /dev/null and stdout+stderr on one pipe, run by its type's interpreter or by its
Launcher (agent/launcher.py). A timeout or a stop ends the script's process (TerminationMode
Process) or its whole process tree (ProcessTree; agent/proctree.py): SIGTERM, a grace period,
then SIGKILL. When the script's own process exits while a child
it forked still holds the pipe, the output is read for a short linger and the execution is
reported with the script's exit code; the child is left alone (scripts start services that way).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.launcher import LauncherError, launcher_argv, script_suffix
from agent.output import Chunk, OutputCollector
from agent.proctree import (
    KILL,
    MARKER_ENV,
    ProcessTree,
    process_start_stamp,
    terminate_process,
)

log = logging.getLogger(__name__)

IS_WINDOWS = os.name == "nt"
POWER_OFF_EXIT = 193
REBOOT_EXIT = 194


@dataclass
class Task:
    """A task as the server lists it (docs/agent-protocol.md, Task)."""

    invoke_id: str
    command_id: str = ""
    command_name: str = ""
    type: str = "RunShellScript"
    content: bytes = b""
    working_dir: str = ""
    username: str = ""
    launcher: str = ""  # a command line to run the script under (agent/launcher.py)
    # Process | ProcessTree: what a timeout or a stop kills. A server from before this field
    # sends none: the whole tree, as the agent always did.
    termination_mode: str = "ProcessTree"
    timeout: int = 60  # seconds
    repeat_mode: str = "Once"
    frequency: str = ""
    timed: bool = False
    revision: int = 1
    created: str = ""

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Task:
        """Build a Task from the server's JSON, decoding the base64 content."""
        try:
            content = base64.b64decode(str(raw.get("content") or ""), validate=False)
        except ValueError:
            content = b""
        return cls(
            invoke_id=str(raw["invoke_id"]),
            command_id=str(raw.get("command_id") or ""),
            command_name=str(raw.get("command_name") or ""),
            type=str(raw.get("type") or "RunShellScript"),
            content=content,
            working_dir=str(raw.get("working_dir") or ""),
            username=str(raw.get("username") or ""),
            launcher=str(raw.get("launcher") or ""),
            termination_mode=str(raw.get("termination_mode") or "ProcessTree"),
            timeout=int(raw.get("timeout") or 60),
            repeat_mode=str(raw.get("repeat_mode") or "Once"),
            frequency=str(raw.get("frequency") or ""),
            timed=bool(raw.get("timed")),
            revision=int(raw.get("revision") or 1),
            created=str(raw.get("created") or ""),
        )


@dataclass
class Outcome:
    """How an execution ended: the protocol's terminal report kind and its fields."""

    kind: str  # finish | timeout | error | stopped | invalid
    start_time: int  # ms
    end_time: int  # ms
    exit_code: int | None = None
    output: bytes = b""
    dropped: int = 0
    error_code: str = ""
    error_message: str = ""


@dataclass
class RunLimits:
    """Knobs of one execution."""

    output_quota: int = 24 * 1024  # bytes of final output kept
    chunk_size: int = 8 * 1024  # bytes per streamed chunk
    chunk_interval: float = 1.0  # seconds between streamed chunks
    kill_grace: float = 3.0  # seconds between SIGTERM and SIGKILL
    linger: float = 0.5  # seconds to keep reading after the script exited
    work_dir: Path = field(default_factory=lambda: Path("/tmp"))  # where script files go
    task_umask: int | None = None  # umask of task processes (None: the agent's own)


class TaskRejected(Exception):
    """The task cannot run here; carries the protocol kind and error code."""

    def __init__(self, kind: str, code: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message


def now_ms() -> int:
    """Wall clock in milliseconds."""
    return int(time.time() * 1000)


def substitute_builtins(content: bytes, values: dict[str, str]) -> bytes:
    """Replace {{ACS::InstanceId}}-style built-in parameters in the script."""
    for name, value in values.items():
        content = content.replace(f"{{{{ACS::{name}}}}}".encode(), value.encode("utf-8"))
    return content


def interpreter_for(task_type: str, script: Path, windows: bool = IS_WINDOWS) -> list[str]:
    """The command line that runs `script`; TaskRejected when the type cannot run here."""
    if task_type == "RunShellScript" and not windows:
        return ["/bin/sh", str(script)]
    if task_type == "RunBatScript" and windows:
        return ["cmd", "/c", str(script)]
    if task_type == "RunPowerShellScript" and windows:
        return [
            "powershell",
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-File",
            str(script),
        ]
    system = "Windows" if windows else "Linux"
    if task_type in ("RunShellScript", "RunBatScript", "RunPowerShellScript"):
        raise TaskRejected(
            "invalid", "CommandNotApplicable", f"{task_type} cannot run on {system} instances"
        )
    raise TaskRejected("invalid", "CommandNotApplicable", f"unknown command type {task_type!r}")


@dataclass
class RunAs:
    """The account an execution runs as (None fields: the agent's own)."""

    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None
    home: str = ""
    name: str = ""


def own_account() -> RunAs:
    """The account the agent runs as."""
    import pwd

    try:
        own = pwd.getpwuid(os.getuid())
    except KeyError:
        return RunAs(home="/")
    return RunAs(home=own.pw_dir, name=own.pw_name)


def resolve_user(username: str) -> RunAs:
    """Look up `username`; TaskRejected(UserNotExist) if there is no such account."""
    if IS_WINDOWS:  # pragma: no cover - Windows only
        if username:
            # running as another account needs its password: not supported by this agent
            raise TaskRejected(
                "invalid", "UserNotExist", "running as another user is not supported on Windows"
            )
        return RunAs(home=os.environ.get("USERPROFILE", ""))
    if not username:
        return own_account()
    import pwd

    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        raise TaskRejected(
            "invalid", "UserNotExist", f"user {username!r} does not exist on this instance"
        ) from None
    if entry.pw_uid == os.getuid():
        return RunAs(home=entry.pw_dir, name=entry.pw_name)
    if os.getuid() != 0:
        raise TaskRejected(
            "error",
            "ExecutionException",
            f"cannot run as {username!r}: the agent does not run as root",
        )
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return RunAs(entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, entry.pw_name)


def resolve_working_dir(working_dir: str, run_as: RunAs) -> str:
    """The directory to run in; TaskRejected(DirectoryNotExists) when it does not exist."""
    if not working_dir:
        home = run_as.home
        return home if home and os.path.isdir(home) else "/"
    if not os.path.isdir(working_dir):
        raise TaskRejected(
            "invalid", "DirectoryNotExists", f"working directory {working_dir!r} does not exist"
        )
    return working_dir


def normalize_exit(returncode: int) -> int:
    """A signal death (-N) as the shell reports it (128+N)."""
    return 128 - returncode if returncode < 0 else returncode


class Execution:
    """One run of one task; `run()` blocks until it ended, `stop()` may be called from elsewhere."""

    def __init__(
        self,
        task: Task,
        execution_id: str,
        builtins: dict[str, str],
        limits: RunLimits,
        on_start: Callable[[int, str], None] | None = None,
        on_chunk: Callable[[Chunk], None] | None = None,
        on_output: Callable[[bytes], None] | None = None,
    ) -> None:
        self.task = task
        self.execution_id = execution_id
        self.builtins = builtins
        self.limits = limits
        self.on_start = on_start
        self.on_chunk = on_chunk
        self.on_output = on_output
        self.start_time = now_ms()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self.pid = 0
        self.marker = secrets.token_hex(12)  # in the task's environment: finds its processes
        self._tree: ProcessTree | None = None

    def stop(self) -> None:
        """Ask the execution to kill its process group and end as Stopped."""
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def run(self) -> Outcome:
        """Run the task to its end and say how it ended."""
        try:
            return self._run()
        except TaskRejected as exc:
            return Outcome(exc.kind, self.start_time, now_ms(), None, b"", 0, exc.code, exc.message)
        finally:
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _run(self) -> Outcome:
        task = self.task
        if self._stop.is_set():
            return Outcome("stopped", self.start_time, now_ms(), None)
        run_as = resolve_user(task.username)
        cwd = resolve_working_dir(task.working_dir, run_as)
        script = self._write_script(run_as)
        try:
            argv = interpreter_for(task.type, script)
            if task.launcher:
                try:
                    argv = launcher_argv(task.launcher, script)
                except LauncherError as exc:
                    raise TaskRejected("invalid", "InvalidLauncher", str(exc)) from None
            proc = self._spawn(argv, cwd, run_as)
            try:
                return self._supervise(proc)
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
        finally:
            try:
                script.unlink()
                if run_as.uid is not None:
                    script.parent.rmdir()
            except OSError:
                pass

    def _write_script(self, run_as: RunAs) -> Path:
        """Write the script (built-ins substituted) where its user can read it.

        Scripts for another account go to a private directory of that account under the system
        temp dir, so the agent's own directories need not be traversable by other users.
        """
        if run_as.uid is not None and run_as.gid is not None:
            work = Path(tempfile.mkdtemp(prefix="assist-task-"))
            os.chown(work, run_as.uid, run_as.gid)
        else:
            work = self.limits.work_dir
            work.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{self.task.invoke_id}-{self.execution_id}{script_suffix(self.task.type, self.task.launcher)}"
        path = work / name.replace(os.sep, "_")
        content = substitute_builtins(self.task.content, self.builtins)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        if run_as.uid is not None and run_as.gid is not None:
            os.chown(path, run_as.uid, run_as.gid)
        return path

    def _spawn(self, argv: list[str], cwd: str, run_as: RunAs) -> subprocess.Popen[bytes]:
        """Start the interpreter in its own session; TaskRejected if it cannot start."""
        env = dict(os.environ)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env[MARKER_ENV] = self.marker
        if run_as.name:
            env.update(HOME=run_as.home or "/", USER=run_as.name, LOGNAME=run_as.name)
        kwargs: dict[str, Any] = {}
        if IS_WINDOWS:  # pragma: no cover - Windows only
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True
            if self.limits.task_umask is not None:
                # the agent's own umask is 077; tasks get the one the agent was started with
                kwargs["umask"] = self.limits.task_umask
            if run_as.uid is not None:
                kwargs.update(user=run_as.uid, group=run_as.gid, extra_groups=run_as.groups)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                close_fds=True,
                **kwargs,
            )
        except OSError as exc:
            raise TaskRejected(
                "error", "ExecutionException", f"cannot start {argv[0]}: {exc.strerror or exc}"
            ) from exc
        self.pid = proc.pid
        self._tree = ProcessTree(proc.pid, self.marker)
        if self.on_start is not None:
            self.on_start(proc.pid, process_start_stamp(proc.pid))
        return proc

    def _supervise(self, proc: subprocess.Popen[bytes]) -> Outcome:
        """Pump output, stream chunks, enforce the timeout, and build the outcome."""
        assert proc.stdout is not None
        limits = self.limits
        collector = OutputCollector(limits.output_quota, limits.chunk_size)
        out_fd = proc.stdout.fileno()
        selector = selectors.DefaultSelector()
        selector.register(out_fd, selectors.EVENT_READ, "out")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        pidfd = _open_pidfd(proc.pid)
        if pidfd is not None:
            selector.register(pidfd, selectors.EVENT_READ, "exit")
        start = time.monotonic()
        deadline = start + max(1, self.task.timeout)
        next_chunk = start + limits.chunk_interval
        eof = False
        exited_at: float | None = None
        ended_by = ""  # "" | timeout | stopped
        try:
            while True:
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and (eof or now - exited_at >= limits.linger):
                    break
                if not ended_by and now >= deadline:
                    ended_by = "timeout"
                elif not ended_by and self._stop.is_set():
                    ended_by = "stopped"
                if ended_by and exited_at is None:
                    self._terminate(proc)
                    proc.wait()
                    continue
                if now >= next_chunk:
                    self._emit_chunk(collector)
                    next_chunk = now + limits.chunk_interval
                wait = min(deadline, next_chunk) - now
                if exited_at is not None:
                    wait = min(wait, exited_at + limits.linger - now)
                elif pidfd is None:
                    wait = min(wait, 0.05)  # no pidfd: notice the exit by polling
                for key, _ in selector.select(max(0.0, wait)):
                    if key.data == "out":
                        data = _read(out_fd)
                        if data:
                            collector.feed(data)
                            if self.on_output is not None:
                                self.on_output(data)
                        else:
                            eof = True
                            selector.unregister(out_fd)
                    elif key.data == "exit" and pidfd is not None:
                        selector.unregister(pidfd)
                        proc.poll()
                    else:
                        _read(self._wake_r)
        finally:
            selector.close()
            if pidfd is not None:
                os.close(pidfd)
        if ended_by and self._tree is not None and self.task.termination_mode != "Process":
            self._tree.signal(KILL)  # whatever the tree started while it was dying
        # no last chunk: the terminal report carries the tail
        returncode = normalize_exit(proc.wait())
        kind = ended_by or "finish"
        message = ""
        if ended_by == "timeout":
            message = (
                f"the task ran longer than its timeout of {self.task.timeout} s and was killed"
            )
        elif ended_by == "stopped":
            what = "process was" if self.task.termination_mode == "Process" else "processes were"
            message = f"the task was stopped by the operator and its {what} killed"
        return Outcome(
            kind,
            self.start_time,
            now_ms(),
            returncode,
            collector.tail,
            collector.dropped,
            "ExecutionTimeout" if ended_by == "timeout" else "",
            message,
        )

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """End the execution's process (Process) or its whole tree (ProcessTree)."""
        if self.task.termination_mode == "Process" or self._tree is None:
            terminate_process(proc.pid, self.limits.kill_grace, proc.poll)
        else:
            self._tree.terminate(self.limits.kill_grace, proc.poll)

    def _emit_chunk(self, collector: OutputCollector) -> None:
        """Hand the next output chunk to the streamer, if any."""
        chunk = collector.take_chunk()
        if chunk is not None and self.on_chunk is not None:
            self.on_chunk(chunk)


def _open_pidfd(pid: int) -> int | None:
    """A pollable descriptor that becomes readable when `pid` exits (Linux >= 5.3)."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None or sys.platform != "linux":
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None


def _read(fd: int) -> bytes:
    """Read what is available on `fd` (b"" at end of file)."""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
