"""`make soak`: a soak-and-faults run of the whole system on loopback.

    .venv/bin/python -m bench.soak [--duration 600] [--agents 300] [--rate 5] [--seed N]

Real processes under one temporary directory: `assist-server serve` (SQLite), a release origin
and a regional mirror (`assist-mirror serve`), a few real agents installed with `assist-install
agent` from the mirror, and the bulk of the fleet as in-process agents (bench/soak_host.py, the
real agent daemon speaking the real agent protocol, many per host process). For --duration
seconds a steady stream of InvokeCommand calls (signed operator API requests) goes to random
instances while the real agents are updated with `assist-update apply` from the mirror, and the
server, the mirror and random agent hosts are SIGKILLed and restarted at random moments. Then,
after a final drain, one JSON report on stdout and a short table on stderr: invocations sent,
results received, duplicates, lost, update outcomes. Exit code 1 if anything was lost or
duplicated. Every process and the directory are removed at the end, also on Ctrl-C.

What is counted: an invocation is *sent* when InvokeCommand answered its InvokeId (one per
target instance); rows the server stored for a call that got no answer (killed mid-request)
count as created-unconfirmed and must finish too. *Lost*: sent or stored, but not in a terminal
status after the drain (default 180 s, below the agent's 300 s task-list safety net, so a lost
wake-up shows). *Duplicated*: an execution with more than one terminal row on the server, a
terminal report the server accepted as first more than once (every in-process agent logs the
server's answers), or a script that started twice (each run appends to runs.txt). Repeats the
server acknowledged as `duplicate: true` (at-least-once delivery after a crash) are reported but
are not duplicates.

Knobs also as env: SOAK_DURATION, SOAK_AGENTS, SOAK_RATE, SOAK_SEED, SOAK_REAL_AGENTS,
SOAK_DRAIN.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from common.cli import interrupts_as_exceptions
from devkit.agent import write_loopback_config
from devkit.release import mirror_sync_args
from devkit.server import free_port, stop_group, wait_http

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

BIN = Path(sys.executable).parent
WHEEL_CACHE = REPO_ROOT / ".cache" / "wheels"
TERMINAL = ("Success", "Failed", "Timeout", "Error", "Invalid", "Stopped", "Terminated", "Aborted")
VERSIONS = ("1.0.0", "1.1.0", "1.2.0")
BATCH = 10  # instances per InvokeCommand call


class SoakError(Exception):
    """The soak could not set itself up."""


class SoakStopped(Exception):
    """A process was about to start while the soak is stopping."""


@dataclass
class Counters:
    """What the soak did, filled from several threads (guarded by `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    invoke_calls: int = 0
    invoke_calls_failed: int = 0
    confirmed: dict[str, list[str]] = field(default_factory=dict)  # invoke_id -> instances
    kills: collections.Counter[str] = field(default_factory=collections.Counter)
    restarts: collections.Counter[str] = field(default_factory=collections.Counter)
    updates: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def event(self, text: str, began: float) -> None:
        """Remember one fault or update with its time into the run."""
        with self.lock:
            self.events.append(f"{time.monotonic() - began:7.1f}s {text}")


def child_env(work: Path) -> dict[str, str]:
    """Environment for the console scripts: this checkout first, no real region, own config."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    env["XDG_CONFIG_HOME"] = str(work / "xdg")
    env.pop("ALIYUN_ASSIST_SERVER_HOST", None)
    return env


class Soak:
    """The processes, the fleet and the counters of one soak run."""

    def __init__(self, args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.work = work
        self.stack = stack
        self.rng = random.Random(args.seed)
        self.env = child_env(work)
        self.counters = Counters()
        self.began = time.monotonic()
        self.lock = threading.RLock()  # guards process handles during kills/restarts
        self.server_port = free_port()
        self.mirror_port = free_port()
        self.origin_port = free_port()
        self.server_url = f"http://127.0.0.1:{self.server_port}"
        self.mirror_url = f"http://127.0.0.1:{self.mirror_port}/"
        self.origin_url = f"http://127.0.0.1:{self.origin_port}/"
        self.db_path = work / "server" / "assist.db"
        self.keys = work / "keys"
        self.runs_file = work / "runs.txt"
        self.answers_file = work / "answers.jsonl"
        self.server: subprocess.Popen[bytes] | None = None
        self.mirror: subprocess.Popen[bytes] | None = None
        self.hosts: list[subprocess.Popen[str] | None] = []
        self.host_args: list[list[str]] = []
        self.real_prefixes: list[Path] = []
        self.instances: list[str] = []
        self.real_instances: list[str] = []
        self.where: dict[str, str] = {}  # instance id -> host-N / real-N
        self.key_id = ""
        self.secret = ""
        self.command_id = ""
        self.stopping = threading.Event()
        self.proc_lock = threading.Lock()
        self.children: list[subprocess.Popen[Any]] = []
        self.threads: list[threading.Thread] = []
        stack.callback(self.stop_everything)

    # ---- processes --------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in its own session, its output appended to NAME.log.

        Every process is registered for stop_everything(); none starts once the soak stops.
        """
        with self.proc_lock:
            if self.stopping.is_set():
                raise SoakStopped(name)
            with (self.work / f"{name}.log").open("ab") as log:
                proc = subprocess.Popen(
                    argv,
                    env=self.env,
                    cwd=self.work,
                    stderr=kwargs.pop("stderr", log),
                    stdout=kwargs.pop("stdout", log),
                    start_new_session=True,
                    **kwargs,
                )
            self.children.append(proc)
            return proc

    def run(
        self, *argv: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run one console script to completion."""
        cmd = [str(BIN / argv[0]), *argv[1:]]
        proc = self.spawn(argv[0], cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc, signal.SIGKILL, 15)
            out, err = proc.communicate()
        if check and proc.returncode != 0:
            raise SoakError(f"{' '.join(argv[:2])} exited {proc.returncode}: {err[-2000:]}")
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def start_server(self) -> None:
        """assist-server serve on the soak's fixed port and database."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            str(BIN / "assist-server"),
            "serve",
            "--listen",
            f"127.0.0.1:{self.server_port}",
            "--db",
            f"sqlite:///{self.db_path}",
            "--heartbeat-interval",
            "30",
        ]
        self.server = self.spawn("server", argv)
        wait_http(self.server_url + "/healthz", self.server, 60, SoakError)

    def start_mirror(self) -> None:
        """assist-mirror serve of the regional mirror on its fixed port."""
        root = self.work / "mirror"
        argv = [
            str(BIN / "assist-mirror"),
            "serve",
            "--root",
            str(root),
            "--listen",
            f"127.0.0.1:{self.mirror_port}",
        ]
        self.mirror = self.spawn("mirror", argv)
        wait_http(self.mirror_url + "metadata/timestamp.json", self.mirror, 60, SoakError)

    def start_host(self, index: int) -> list[str]:
        """Start (or restart) agent host `index`; its instance ids once every agent runs."""
        argv = [sys.executable, "-m", "bench.soak_host", *self.host_args[index]]
        proc = self.spawn(f"host-{index}", argv, stdout=subprocess.PIPE, text=True)
        ids = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "READY":
                break
            ids.append(line.strip())
        else:
            raise SoakError(f"agent host {index} exited {proc.wait()} before READY")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain, never block it
        for instance in ids:
            self.where[instance] = f"host-{index}"
        self.hosts[index] = proc
        return ids

    def stop_everything(self) -> None:
        """Stop every process the soak started: updaters, agents, mirror, server, stragglers."""
        with self.proc_lock:
            self.stopping.set()
            children = list(self.children)
        for proc in children:  # one-shot commands first (an updater could start an agent)
            argv0 = proc.args[0] if isinstance(proc.args, list) else proc.args
            if Path(str(argv0)).name.startswith("assist-") and proc.stdout is not None:
                stop_group(proc, signal.SIGKILL, 15)
        for prefix in self.real_prefixes:
            stop_real_agent(prefix)
        for proc in reversed(children):
            stop_group(proc, signal.SIGTERM, 15)
        for pid in pids_mentioning(self.work):  # e.g. an agent an updater started meanwhile
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for thread in self.threads:
            thread.join(timeout=30)

    # ---- set-up -----------------------------------------------------------------------------

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        """One signed operator API request; SoakError on a refusal."""
        from server.rpc import sign_params

        signed = sign_params({"Action": action, **params}, self.key_id, self.secret, "POST")
        response = requests.post(self.server_url + "/", data=signed, timeout=30)
        if response.status_code != 200:
            raise SoakError(f"{action}: {response.status_code} {response.text[:300]}")
        return dict(response.json())

    def set_up_server(self) -> None:
        """Server, AccessKey, the soak command."""
        from devkit.server import ServerHandle

        self.start_server()
        assert self.server is not None
        handle = ServerHandle(
            self.server, self.server_url, f"sqlite:///{self.db_path}", self.work / "server.log"
        )
        self.key_id, self.secret = handle.create_access_key("soak")
        script = (
            f'echo "{{{{ACS::InstanceId}}}} {{{{ACS::InvokeId}}}}" >> {self.runs_file}\n'
            "sleep 0.3\necho ok\n"
        )
        created = self.call(
            "CreateCommand",
            CommandContent=base64.b64encode(script.encode()).decode(),
            Type="RunShellScript",
            Name="soak",
            Timeout=60,
        )
        self.command_id = str(created["CommandId"])

    def set_up_releases(self) -> None:
        """Three signed releases published to an origin, synced to the regional mirror."""
        vendor = (
            ["--wheel-cache", str(WHEEL_CACHE), "--no-runtime"]  # agents run on this python
            if any(WHEEL_CACHE.glob("*.whl"))
            else ["--no-vendor"]
        )
        self.run("assist-pkgbuild", "keygen", "--out", str(self.keys))
        made = []
        for version in VERSIONS:
            out = self.run(
                "assist-pkgbuild",
                "build",
                "--version",
                version,
                *vendor,
                "--keys",
                str(self.keys),
                "--formats",
                "tar.gz",
                "--out",
                str(self.work / "dist"),
                "--json",
            )
            made += [item["path"] for item in json.loads(out.stdout)]
        origin = self.work / "origin"
        self.run("assist-pkgbuild", "init", "--repo", str(origin), "--keys", str(self.keys))
        self.run(
            "assist-pkgbuild", "publish", "--repo", str(origin), "--keys", str(self.keys), *made
        )
        argv = [
            str(BIN / "assist-mirror"),
            "serve",
            "--root",
            str(origin),
            "--listen",
            f"127.0.0.1:{self.origin_port}",
        ]
        origin_proc = self.spawn("origin", argv)
        try:
            wait_http(self.origin_url + "metadata/timestamp.json", origin_proc, 60, SoakError)
            self.run(
                "assist-mirror",
                *mirror_sync_args(self.origin_url, self.work / "mirror", self.keys),
                "--public-url",
                self.mirror_url,
            )
        finally:
            stop_group(origin_proc, signal.SIGTERM, 15)
        self.start_mirror()

    def set_up_real_agents(self) -> None:
        """A few agents installed from the mirror with assist-install, registered, running."""
        if not self.args.real_agents:
            return
        activation = self.call("CreateActivation", InstanceCount=self.args.real_agents + 5)
        for i in range(self.args.real_agents):
            prefix = self.work / f"real-{i}"
            write_agent_config(prefix, self.mirror_url, self.origin_url, self.server_url)
            registered = self.run(
                "assist-agent",
                "register",
                "--server",
                self.server_url,
                "--prefix",
                str(prefix),
                "--activation-id",
                activation["ActivationId"],
                "--activation-code",
                activation["ActivationCode"],
                "--instance-name",
                f"real-{i}",
                "--json",
            )
            self.real_instances.append(json.loads(registered.stdout)["instance_id"])
            self.where[self.real_instances[-1]] = f"real-{i}"
            self.real_prefixes.append(prefix)
            self.run(
                "assist-install",
                "agent",
                "--prefix",
                str(prefix),
                "--version",
                VERSIONS[0],
                "--trust-root",
                str(self.keys / "root.json"),
                "--service",
                "process",
                "--json",
            )

    def set_up_fleet(self) -> None:
        """The in-process agents, `--per-host` to a host process, started in parallel."""
        count = self.args.agents - len(self.real_instances)
        activation = self.call("CreateActivation", InstanceCount=max(1, count) + 10)
        per_host = self.args.per_host
        for h in range((count + per_host - 1) // per_host):
            n = min(per_host, count - h * per_host)
            self.host_args.append(
                [
                    self.server_url,
                    activation["ActivationId"],
                    activation["ActivationCode"],
                    str(n),
                    str(self.work / f"host-{h}"),
                    str(self.answers_file),
                ]
            )
            self.hosts.append(None)
        with ThreadPool(len(self.hosts)) as pool:
            for ids in pool.map(self.start_host, range(len(self.hosts))):
                self.instances += ids
        self.instances += self.real_instances

    # ---- the run ----------------------------------------------------------------------------

    def invoke_loop(self, until: float) -> None:
        """A steady stream of InvokeCommand calls, BATCH random instances each, at --rate."""
        interval = BATCH / self.args.rate
        rng = random.Random(self.rng.random())
        next_at = time.monotonic()
        while not self.stopping.is_set() and time.monotonic() < until:
            targets = rng.sample(self.instances, min(BATCH, len(self.instances)))
            params = {f"InstanceId.{i + 1}": t for i, t in enumerate(targets)}
            try:
                answer = self.call(
                    "InvokeCommand", CommandId=self.command_id, Timed="false", **params
                )
            except (SoakError, requests.RequestException, ValueError):
                with self.counters.lock:
                    self.counters.invoke_calls += 1
                    self.counters.invoke_calls_failed += 1
            else:
                with self.counters.lock:
                    self.counters.invoke_calls += 1
                    self.counters.confirmed[str(answer["InvokeId"])] = targets
            next_at += interval
            self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def fault_plan(self) -> list[tuple[float, str]]:
        """Random moments (seconds into the run) to kill the server, the mirror, agent hosts."""
        d = self.args.duration
        plan = [(self.rng.uniform(0.15, 0.5) * d, "server")]  # at least one server kill
        plan += [(self.rng.uniform(0.05, 0.85) * d, "server") for _ in range(int(d // 90))]
        plan += [(self.rng.uniform(0.05, 0.85) * d, "mirror") for _ in range(max(1, int(d // 150)))]
        plan += [(self.rng.uniform(0.05, 0.85) * d, "host") for _ in range(max(1, int(d // 40)))]
        return sorted(plan)

    def fault_loop(self, plan: list[tuple[float, str]]) -> None:
        """SIGKILL each planned target at its moment, restart it after a short random outage."""
        for at, what in plan:
            if self.stopping.wait(max(0.0, self.began + at - time.monotonic())):
                return
            outage = self.rng.uniform(0.5, 4.0)
            with self.lock:
                if what == "server":
                    stop_group(self.server, signal.SIGKILL, 15)
                    self.counters.event(f"SIGKILL server (down {outage:.1f}s)", self.began)
                    time.sleep(outage)
                    self.start_server()
                elif what == "mirror":
                    stop_group(self.mirror, signal.SIGKILL, 15)
                    self.counters.event(f"SIGKILL mirror (down {outage:.1f}s)", self.began)
                    time.sleep(outage)
                    self.start_mirror()
                else:
                    index = self.rng.randrange(len(self.hosts))
                    stop_group(self.hosts[index], signal.SIGKILL, 15)
                    self.counters.event(
                        f"SIGKILL agent host {index} (down {outage:.1f}s)", self.began
                    )
                    time.sleep(outage)
                    self.start_host(index)
            with self.counters.lock:
                self.counters.kills[what] += 1
                self.counters.restarts[what] += 1

    def update_loop(self, index: int, plan: list[tuple[float, str]], until: float) -> None:
        """`assist-update apply --version V` of real agent `index` at planned moments; retry failures."""
        prefix = self.real_prefixes[index]
        for at, version in plan:
            if self.stopping.wait(max(0.0, self.began + at - time.monotonic())):
                return
            while not self.stopping.is_set() and time.monotonic() < until:
                outcome = self.apply_update(prefix, version)
                self.counters.event(
                    f"real-{index} update to {version}: {outcome['outcome']}", self.began
                )
                with self.counters.lock:
                    self.counters.updates.append({"agent": f"real-{index}", **outcome})
                if outcome["outcome"] != "failed":
                    break
                self.stopping.wait(10)

    def apply_update(self, prefix: Path, version: str) -> dict[str, Any]:
        """One `assist-update apply`; its outcome: applied, rolled_back or failed."""
        started = time.monotonic()
        proc = self.run(
            "assist-update",
            "apply",
            "--prefix",
            str(prefix),
            "--trust-root",
            str(self.keys / "root.json"),
            "--version",
            version,
            "--health-timeout",
            "30",
            "--settle",
            "3",
            check=False,
        )
        outcome = {0: "applied", 3: "rolled_back"}.get(proc.returncode, "failed")
        status = self.run("assist-update", "status", "--prefix", str(prefix), "--json", check=False)
        try:
            current = json.loads(status.stdout).get("current")
        except ValueError:
            current = None
        return {
            "version": version,
            "outcome": outcome,
            "exit": proc.returncode,
            "current": current,
            "seconds": round(time.monotonic() - started, 1),
            "error": proc.stderr.strip().splitlines()[-1]
            if proc.returncode and proc.stderr.strip()
            else "",
        }

    def soak(self) -> None:
        """Invocations, faults and updates for --duration seconds."""
        self.began = time.monotonic()
        self.began_wall = time.time()
        until = self.began + self.args.duration
        jobs: list[tuple[str, Any, tuple[Any, ...]]] = [
            ("invoke", self.invoke_loop, (until,)),
            ("faults", self.fault_loop, (self.fault_plan(),)),
        ]
        d = self.args.duration
        for i in range(len(self.real_prefixes)):
            plan = [(d * (0.2 + 0.1 * i), VERSIONS[1]), (d * (0.55 + 0.1 * i), VERSIONS[2])]
            jobs.append((f"update-{i}", self.update_loop, (i, plan, until)))
        for name, target, args in jobs:
            thread = threading.Thread(
                target=self.guarded, args=(target, *args), name=name, daemon=True
            )
            self.threads.append(thread)
            thread.start()
        for thread in self.threads:
            thread.join()  # an update in flight finishes; no new one starts after the duration
        if self.counters.errors:
            raise SoakError("; ".join(self.counters.errors))

    def guarded(self, target: Any, *args: Any) -> None:
        """Run a soak thread; a failure is recorded (and ends the run), a stop is quiet."""
        try:
            target(*args)
        except SoakStopped:
            pass
        except Exception as exc:
            if not self.stopping.is_set():
                with self.counters.lock:
                    self.counters.errors.append(f"{threading.current_thread().name}: {exc}")

    def drain(self) -> float:
        """Wait (up to --drain seconds) until every invocation the server knows is finished."""
        started = time.monotonic()
        deadline = started + self.args.drain
        while time.monotonic() < deadline:
            if not self.unfinished():
                break
            time.sleep(1)
        return time.monotonic() - started

    def unfinished(self) -> int:
        marks = ",".join("?" * len(TERMINAL))
        with contextlib.closing(
            sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        ) as db:
            row = db.execute(
                f"SELECT COUNT(*) FROM invocation_instances ii JOIN invocations inv "
                f"ON inv.invoke_id = ii.invoke_id WHERE inv.command_id = ? "
                f"AND ii.status NOT IN ({marks})",
                (self.command_id, *TERMINAL),
            ).fetchone()
        return int(row[0])

    def explain_lost(self, invoke_id: str, instance: str) -> dict[str, Any]:
        """What the server and the agent's trace say about one lost execution."""
        with contextlib.closing(
            sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        ) as db:
            row = db.execute(
                "SELECT ii.status, ii.active, ii.delivered, inv.created_ms FROM invocation_instances ii "
                "JOIN invocations inv ON inv.invoke_id = ii.invoke_id "
                "WHERE ii.invoke_id = ? AND ii.instance_id = ?",
                (invoke_id, instance),
            ).fetchone()
        where = self.where.get(instance, "?")
        detail: dict[str, Any] = {"invoke_id": invoke_id, "instance": instance, "agent": where}
        if row is None:
            detail["server"] = "no row: InvokeCommand answered but the invocation is not stored"
            return detail
        created = row[3] / 1000
        detail.update(
            status=row[0],
            active=bool(row[1]),
            delivered=bool(row[2]),
            created_at_s=round(created - self.began_wall, 2),
        )
        trace = self.work / where / "trace.jsonl"
        if trace.exists():
            lines = []
            for line in trace.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if (
                        rec.get("instance") == instance
                        and created - 30 <= rec["t0"] <= created + 60
                    ):
                        rec["t0"] = round(rec["t0"] - self.began_wall, 3)
                        rec["t1"] = round(rec["t1"] - self.began_wall, 3)
                        lines.append(rec)
            detail["agent_calls_around"] = lines[:40]
        return detail

    def dump_host_stacks(self) -> None:
        """Ask every agent host to write its threads' stacks to its log (faulthandler)."""
        for proc in self.hosts:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGUSR1)

    # ---- the report -------------------------------------------------------------------------

    def report(self, drained: float) -> dict[str, Any]:
        """Everything counted, from the server's database, the agents' answers and the run log."""
        with contextlib.closing(
            sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        ) as db:
            rows = db.execute(
                "SELECT ii.invoke_id, ii.instance_id, ii.status, ii.error_code FROM invocation_instances ii "
                "JOIN invocations inv ON inv.invoke_id = ii.invoke_id WHERE inv.command_id = ?",
                (self.command_id,),
            ).fetchall()
            terminal_execs = db.execute(
                "SELECT e.invoke_id, e.instance_id, COUNT(*) FROM executions e JOIN invocations inv "
                "ON inv.invoke_id = e.invoke_id WHERE inv.command_id = ? AND e.terminal "
                "GROUP BY e.invoke_id, e.instance_id HAVING COUNT(*) > 1",
                (self.command_id,),
            ).fetchall()
        in_db = {(r[0], r[1]): (r[2], r[3]) for r in rows}
        confirmed = {
            (inv, inst) for inv, targets in self.counters.confirmed.items() for inst in targets
        }
        known = confirmed | set(in_db)
        finished = {k for k, (status, _) in in_db.items() if status in TERMINAL}
        lost = sorted(known - finished)
        missing_in_db = sorted(confirmed - set(in_db))
        statuses = collections.Counter(status for status, _ in in_db.values())
        error_codes = collections.Counter(code for _, code in in_db.values() if code)
        answered = read_answers(self.answers_file)
        accepted_twice = sorted(k for k, n in answered["accepted"].items() if n > 1)
        runs = read_runs(self.runs_file)
        ran_twice = sorted(k for k, n in runs.items() if n > 1)
        updates = collections.Counter(u["outcome"] for u in self.counters.updates)
        duplicates = len(terminal_execs) + len(accepted_twice) + len(ran_twice)
        return {
            "duration_s": self.args.duration,
            "agents": len(self.instances),
            "real_agents": len(self.real_instances),
            "seed": self.args.seed,
            "rate_per_s": self.args.rate,
            "invoke_calls": self.counters.invoke_calls,
            "invoke_calls_failed": self.counters.invoke_calls_failed,
            "invocations_sent": len(confirmed),
            "invocations_created_unconfirmed": len(set(in_db) - confirmed),
            "results_received": len(finished),
            "statuses": dict(statuses),
            "error_codes": dict(error_codes),
            "lost": len(lost),
            "lost_details": [self.explain_lost(inv, inst) for inv, inst in lost[:10]],
            "confirmed_missing_in_server": len(missing_in_db),
            "duplicated": duplicates,
            "duplicates": {
                "server_terminal_executions_gt1": [list(map(str, r)) for r in terminal_execs[:10]],
                "reports_accepted_twice": [list(k) for k in accepted_twice[:10]],
                "scripts_run_twice": [list(k) for k in ran_twice[:10]],
            },
            "repeat_reports_acknowledged_as_duplicate": answered["repeats"],
            "script_runs": sum(runs.values()),
            "kills": dict(self.counters.kills),
            "restarts": dict(self.counters.restarts),
            "updates": {
                "applied": updates["applied"],
                "rolled_back": updates["rolled_back"],
                "failed": updates["failed"],
                "attempts": self.counters.updates,
            },
            "drain_s": round(drained, 1),
            "events": self.counters.events,
        }


class ThreadPool:
    """A tiny context-managed thread pool (concurrent.futures with a `with` block)."""

    def __init__(self, workers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max(1, workers))

    def __enter__(self) -> Any:
        return self.pool

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)


def write_agent_config(prefix: Path, mirror_url: str, origin_url: str, server_url: str) -> None:
    """A real agent's config: the loopback mirror, no update schedule, the soak's server."""
    write_loopback_config(prefix, mirror_url, origin_url, server_url, "heartbeat = 30.0\n")


def stop_real_agent(prefix: Path) -> None:
    """Stop an installed agent through its pidfile (the `process` service manager)."""
    pidfile = prefix / "state" / "agent.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def pids_mentioning(path: Path) -> list[int]:
    """Live processes (not this one) whose command line names `path`: the soak's own children."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(path).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def read_answers(path: Path) -> dict[str, Any]:
    """Per execution, how many terminal reports the server accepted as first; repeats acked."""
    accepted: collections.Counter[tuple[str, str, str]] = collections.Counter()
    repeats = 0
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec["duplicate"]:
                    repeats += 1
                else:
                    accepted[(rec["instance"], rec["invoke"], rec["execution"])] += 1
    return {"accepted": accepted, "repeats": repeats}


def read_runs(path: Path) -> collections.Counter[tuple[str, str]]:
    """How many times each (instance, invocation) script actually started."""
    runs: collections.Counter[tuple[str, str]] = collections.Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                runs[(parts[0], parts[1])] += 1
    return runs


def format_table(report: dict[str, Any]) -> str:
    """The short human summary for stderr."""
    rows = [
        ("agents (real)", f"{report['agents']} ({report['real_agents']})"),
        ("duration / drain", f"{report['duration_s']} s / {report['drain_s']} s"),
        ("invocations sent", report["invocations_sent"]),
        ("results received", report["results_received"]),
        ("lost", report["lost"]),
        ("duplicated", report["duplicated"]),
        ("repeat reports acked", report["repeat_reports_acknowledged_as_duplicate"]),
        ("invoke calls failed", report["invoke_calls_failed"]),
        ("kills", ", ".join(f"{k} {v}" for k, v in sorted(report["kills"].items())) or "-"),
        (
            "updates",
            "applied {applied}, rolled back {rolled_back}, failed {failed}".format(
                **report["updates"]
            ),
        ),
        ("statuses", ", ".join(f"{k} {v}" for k, v in sorted(report["statuses"].items()))),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=(__doc__ or "").splitlines()[0]
    )
    # option, type, default (SOAK_<OPTION> in the environment overrides it), help
    for option, kind, default, text in (
        ("--duration", float, 600, "seconds of load and faults"),
        ("--agents", int, 300, "instances in all"),
        ("--real-agents", int, 2, "installed with assist-install and updated"),
        ("--rate", float, 5, "invocations per second"),
        ("--seed", int, int(time.time()), "random seed"),
        ("--drain", float, 180, "max seconds to wait for the last results"),
    ):
        variable = "SOAK_" + option[2:].upper().replace("-", "_")
        parser.add_argument(option, type=kind, default=kind(env(variable, default)), help=text)
    parser.add_argument(
        "--per-host", type=int, default=25, help="in-process agents per host process"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Set up, soak, drain, report; 1 if anything was lost or duplicated."""
    args = parse_args(argv)
    args.real_agents = max(0, min(args.real_agents, args.agents))
    work = Path(tempfile.mkdtemp(prefix="assist-soak-"))
    sys.stderr.write(
        f"soak: seed {args.seed}, {args.agents} agents, {args.duration:.0f}s, work {work}\n"
    )
    try:
        with interrupts_as_exceptions(), contextlib.ExitStack() as stack:
            soak = Soak(args, work, stack)
            soak.set_up_server()
            soak.set_up_releases()
            soak.set_up_real_agents()
            soak.set_up_fleet()
            sys.stderr.write(f"soak: {len(soak.instances)} agents up; soaking\n")
            soak.soak()
            drained = soak.drain()
            if soak.unfinished():
                soak.dump_host_stacks()
            report = soak.report(drained)
    except SoakError as exc:
        sys.stderr.write(f"soak: FAILED to run: {exc}\n")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("soak: interrupted; everything stopped\n")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 130
    print(json.dumps(report, indent=2))
    sys.stderr.write(format_table(report) + "\n")
    if args.keep:
        sys.stderr.write(f"soak: work directory kept at {work}\n")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if report["lost"] or report["duplicated"] else 0


if __name__ == "__main__":
    sys.exit(main())
