"""Test and demo helpers: a real `assist-server serve` subprocess and a scripted fake agent.

with start_server(tmp_path) as srv:
    key_id, secret = srv.create_access_key()
    act_id, code = srv.create_activation(key_id, secret)
    agent = FakeAgent.register(srv.url, act_id, code)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common.protocol import sign_request as sign_agent_request  # the X-Assist-* headers
from common.sessions import SESSION_PATH, Session, mac_request, open_request, session_from
from server.rpc import sign_params

REPO_ROOT = Path(__file__).resolve().parent.parent
SESSION_URL = "/luban/api" + SESSION_PATH


def stop_group(
    proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10
) -> None:
    """Signal the process group of a child started with start_new_session, KILL it after
    `timeout`, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_http(
    url: str,
    proc: subprocess.Popen[Any],
    timeout: float,
    error: type[Exception] = RuntimeError,
) -> None:
    """Until `url` answers 200; `error` if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(f"{url}: process exited {proc.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise error(f"{url} did not answer within {timeout:.0f}s")


PORT_SPAN = 1500  # ports of one test worker's own range, below Linux's ephemeral ports
PORT_SLOTS = 12  # ranges from 10000 up: 11 for pytest workers gw0-gw10, one for the rest
_port_cursor: dict[int, int] = {}  # pid -> the last port offset it handed out


def free_port() -> int:
    """An unused TCP port on 127.0.0.1, never handed out twice by this process.

    Taken from a range of this pytest worker's own (10000 + 1500 x N for worker gwN, N < 11;
    26500-27999 outside pytest), below the ports the kernel hands to `bind(0)` and outgoing
    connections (32768 and up by default): a port the kernel picked, closed and returned
    could be picked again by another test's process before ours listened on it (CI once ran a
    module's tests against another's server). Each process (a forked child too) starts at its
    own place in the range, from its pid, and moves on from there."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    slot = int(worker[2:]) % (PORT_SLOTS - 1) if worker[2:].isdigit() else PORT_SLOTS - 1
    low = 10_000 + slot * PORT_SPAN
    pid = os.getpid()
    for _ in range(PORT_SPAN):
        _port_cursor[pid] = _port_cursor.get(pid, pid * 7) + 1
        port = low + _port_cursor[pid] % PORT_SPAN
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{low + PORT_SPAN - 1}")


class ServerHandle:
    """A running `assist-server serve` subprocess."""

    def __init__(
        self, process: subprocess.Popen[bytes], url: str, db_url: str, log_path: Path
    ) -> None:
        self.process = process
        self.url = url
        self.db_url = db_url
        self.log_path = log_path

    def create_access_key(self, account: str = "default") -> tuple[str, str]:
        """A new AccessKey for `account`, written to this server's database.

        Same code path as `assist-server accesskey create`, run in-process (in a thread, so
        it works from inside an event loop too) because a subprocess per key is slow.
        """
        result: list[tuple[str, str]] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                result.append(asyncio.run(_create_key(self.db_url, account)))
            except BaseException as exc:  # handed back to the caller below
                errors.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    def call(
        self, action: str, key_id: str, secret: str, method: str = "POST", **params: Any
    ) -> requests.Response:
        """One signed operator API request (signature v1)."""
        signed = sign_params({"Action": action, **params}, key_id, secret, method)
        if method == "GET":
            return requests.get(self.url + "/", params=signed, timeout=30)
        return requests.post(self.url + "/", data=signed, timeout=30)

    def create_activation(
        self, key_id: str, secret: str, count: int = 10, region: str = ""
    ) -> tuple[str, str]:
        """CreateActivation (in `region`, else the default one) through the API; returns
        (ActivationId, ActivationCode). Its instances belong to that region."""
        extra = {"RegionId": region} if region else {}
        response = self.call("CreateActivation", key_id, secret, InstanceCount=count, **extra)
        response.raise_for_status()
        data = response.json()
        return data["ActivationId"], data["ActivationCode"]

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def _create_key(db_url: str, account: str) -> tuple[str, str]:
    from server.store import Store
    from server.store import queries as q

    store = Store(db_url)
    try:
        return await store.write(lambda conn: q.create_access_key(conn, account))
    finally:
        await store.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on TCP `port` (read from /proc: a
    healthz answer on a port from free_port() may come from another test's server that took
    the same port first)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                listening = fields[3] == "0A"
                if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
    return False


def launch_server(
    data_dir: str | os.PathLike[str],
    db_url: str | None = None,
    extra_args: list[str] | None = None,
    port: int | None = None,
    scheme: str = "http",
    python_args: list[str] | None = None,
    nofile: int | None = None,
) -> ServerHandle:
    """Start `assist-server serve` on a free loopback port and wait until it answers.
    `python_args` go to the interpreter before `-m server.cli` (e.g. `-m cProfile -o FILE`);
    with `nofile`, under that open-files limit (soft and hard, like `prlimit --nofile=N:N`).
    A port from free_port() that another process takes first is replaced by another one."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    db = db_url or f"sqlite:///{data / 'assist.db'}"
    for _ in range(4):
        handle = _launch(
            data, db, extra_args or [], port or free_port(), scheme, python_args, nofile
        )
        if isinstance(handle, ServerHandle):
            return handle
        if port:  # the caller's own port: nothing else to try
            break
    raise RuntimeError(f"assist-server found its port taken by another process:\n{handle}")


def _launch(
    data: Path,
    db: str,
    extra_args: list[str],
    port: int,
    scheme: str,
    python_args: list[str] | None,
    nofile: int | None,
) -> ServerHandle | str:
    """The started server, or its log when another process answers on `port` (ours then
    exits: the address is in use)."""
    log_path = data / f"server-{port}.log"
    log_file = log_path.open("wb")
    cmd = [
        sys.executable,
        *(python_args or []),
        "-m",
        "server.cli",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--db",
        db,
        *extra_args,
    ]
    if nofile:
        cmd = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *cmd]
    process = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=_env()
    )
    log_file.close()
    handle = ServerHandle(process, f"{scheme}://127.0.0.1:{port}", db, log_path)

    def answers() -> bool:
        with warnings.catch_warnings():  # a test certificate is not trusted; only liveness
            warnings.simplefilter("ignore")
            return requests.get(handle.url + "/healthz", timeout=1, verify=False).ok

    if wait_listening(process, port, answers, handle.log, "assist-server", 30):
        return handle
    return handle.log()


def wait_listening(
    process: subprocess.Popen[Any],
    port: int,
    answers: Callable[[], bool],
    output: Callable[[], str],
    what: str,
    timeout: float,
) -> bool:
    """Until `process` answers (`answers()` true, a failed request false) on `port` and is the
    one listening there: True; False when it exited because another process holds the port.
    RuntimeError with its `output()` when it exited otherwise or (killed then) did not answer
    within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = output()
            if "already in use" in said:
                return False
            raise RuntimeError(f"{what} exited {process.returncode}:\n{said}")
        try:
            answered = answers()
        except requests.RequestException:
            answered = False
        if answered and listens_on(process.pid, port):
            return True
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s:\n{output()}")


@contextlib.contextmanager
def start_server(
    data_dir: str | os.PathLike[str], db_url: str | None = None, extra_args: list[str] | None = None
) -> Iterator[ServerHandle]:
    """Context manager around launch_server; stops the server on exit."""
    handle = launch_server(data_dir, db_url, extra_args)
    try:
        yield handle
    finally:
        handle.stop()


class FakeAgent:
    """A scripted agent speaking the real agent API (until the real agent exists)."""

    def __init__(self, url: str, instance_id: str, key: Ed25519PrivateKey) -> None:
        self.url = url.rstrip("/")
        self.instance_id = instance_id
        self.key = key
        self.session = requests.Session()
        self.in_session: Session | None = None  # requests go in it once open_session ran

    @classmethod
    def register(
        cls,
        url: str,
        activation_id: str,
        activation_code: str,
        instance_id: str = "",
        key: Ed25519PrivateKey | None = None,
        os_type: str = "linux",
    ) -> FakeAgent:
        """Register with an activation and a fresh Ed25519 key."""
        key = key or Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        body = {
            "activation_id": activation_id,
            "activation_code": activation_code,
            "public_key": base64.b64encode(public).decode("ascii"),
            "instance_name": "fake",
            "hostname": socket.gethostname(),
            "os_type": os_type,
            "agent_version": "0.0.0-fake",
        }
        if instance_id:
            body["instance_id"] = instance_id
        response = requests.post(url + "/luban/api/instance/register", json=body, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"register failed: {response.status_code} {response.text}")
        return cls(url, response.json()["instance_id"], key)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: str = "",
        timeout: float = 30,
        **sign: Any,
    ) -> requests.Response:
        """A signed request, in the agent's session if it opened one; `sign` may pin
        timestamp/nonce (for replay tests)."""
        raw = b"" if body is None else json.dumps(body).encode("utf-8")
        if self.in_session is not None:
            headers = mac_request(
                self.in_session, self.instance_id, method, path, query, raw, **sign
            )
        else:
            headers = sign_agent_request(
                self.key, self.instance_id, method, path, query, raw, **sign
            )
        headers["Content-Type"] = "application/json"
        url = self.url + path + (f"?{query}" if query else "")
        return self.session.request(method, url, data=raw or None, headers=headers, timeout=timeout)

    def post(self, path: str, body: Any, **sign: Any) -> dict[str, Any]:
        response = self.request("POST", path, body, **sign)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text}")
        return dict(response.json())

    def open_session(self) -> Session:
        """Open a session (an Ed25519-signed handshake); later requests go in it."""
        own = X25519PrivateKey.generate()
        self.in_session = None
        answer = self.post(SESSION_URL, open_request(own))
        self.in_session = session_from(own, answer, self.instance_id)
        return self.in_session

    def tasks(self, reason: str = "poll") -> dict[str, Any]:
        return self.post("/luban/api/v1/task/list", {"reason": reason})

    def poll(self, timeout: int = 25) -> list[dict[str, Any]]:
        response = self.request(
            "GET", "/luban/api/v1/notify", query=f"timeout={timeout}", timeout=timeout + 10
        )
        if response.status_code != 200:
            raise RuntimeError(f"notify: {response.status_code} {response.text}")
        return list(response.json()["events"])

    def heartbeat(self) -> dict[str, Any]:
        return self.post(
            "/luban/api/heart-beat",
            {
                "agent_version": "0.0.0-fake",
                "uptime": 1,
                "boot_time": int(time.time()),
                "running": 0,
            },
        )

    def report(
        self,
        kind: str,
        invoke_id: str,
        output: bytes = b"",
        exit_code: int | None = 0,
        execution_id: str = "0",
        **extra: Any,
    ) -> dict[str, Any]:
        now = int(time.time() * 1000)
        body = {
            "invoke_id": invoke_id,
            "execution_id": execution_id,
            "start_time": now - 5,
            "end_time": now,
            "exit_code": exit_code,
            "output": base64.b64encode(output).decode("ascii"),
            "dropped": 0,
            "error_code": "",
            "error_message": "",
            **extra,
        }
        return self.post(f"/luban/api/v1/task/{kind}", body)

    def run_shell_tasks(self) -> int:
        """Run every listed one-shot RunShellScript for real and report it; return the count."""
        done = 0
        for task in self.tasks("kick")["run"]:
            if task["timed"]:
                continue
            script = base64.b64decode(task["content"]).decode("utf-8")
            proc = subprocess.run(
                ["sh", "-c", script], capture_output=True, timeout=task["timeout"]
            )
            self.report("finish", task["invoke_id"], proc.stdout, proc.returncode)
            done += 1
        return done
