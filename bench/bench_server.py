"""Control-plane benchmarks: API throughput, long-poll fan-out, result ingestion, idle cost.

    .venv/bin/python bench/bench_server.py            # BENCH_AGENTS=1000,10000 by default
    BENCH_AGENTS=10000 .venv/bin/python -m bench server

Each figure is measured on SQLite and, when it answers on 127.0.0.1:5432, on PostgreSQL (a fresh
database, dropped afterwards even when the run fails), for each fleet size of BENCH_AGENTS, next
to a baseline measured in the same run: the bare HTTP stack (uvicorn + Starlette, same settings)
answering a hello-world route. Figure names end in _<db>_<agents>.

- server_api_rate: signed agent heartbeats per second of one agent (Ed25519 check; nonce insert
  and row update in the replica's batched write) against hello-world requests per second, same
  concurrency.
- server_fanout_p99: every agent long-polls; InvokeCommand to all of them (INVOKE_LIMIT = 100
  instances per call, the real API's limit, 8 calls at a time); seconds from the first call
  until each agent holds its task (the kick carries it; without it, a task list). p99 per round,
  median of BENCH_FANOUT_ROUNDS rounds; baseline: the bare stack answering as many concurrent
  hello-world requests. Absolute target: p99 < 1 s.
- server_ingest_rate: signed terminal reports stored per second (agents x
  BENCH_INGEST_INVOCATIONS reports per round, one request each, median of BENCH_INGEST_ROUNDS
  rounds); every invocation is checked Success afterwards. Absolute targets: >= 5,000/s
  SQLite, >= 2,000/s PG.
- server_ingest_batched: the same reports, each agent's BENCH_INGEST_INVOCATIONS in one
  task/reports request (what the agent's outbox sends when several are due: tasks that ended
  together, a backlog after an outage). Same targets.
- server_idle_writes: database rows written per idle long-poll (nonce, last-seen) while every
  agent polls with timeout=BENCH_IDLE_POLL for BENCH_IDLE_SECONDS; extra keys give the batched
  transactions per second and the polls answered per second.

Agents open a session first and send their requests in it (an HMAC, as the agent does:
common/sessions.py); BENCH_SESSIONS=0 signs every request with Ed25519 instead.
The server runs as an operator would run it on this 2-core box: `--workers 2` on SQLite (both
cores; the workers share the file's write lock and a local bus), one process on PostgreSQL
(PostgreSQL itself needs the other core: `--workers 2` measured no faster there, docs/scale.md).
BENCH_SERVER_WORKERS=N runs `assist-server serve --workers N` on both. Each figure names its
`workers`; the server's CPU counts every worker.
BENCH_SERVER_PROFILE=DIR runs each server under cProfile (DIR/<db>-<agents>.prof).
BENCH_SERVER_FIGURES=fanout,idle (default: api,fanout,idle,ingest) measures only those figures:
at 10,000 agents the ingestion rounds alone take minutes. The fan-out figure also gives the CPU
seconds the server and this load generator (same 2 cores) spent per round.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import figures  # noqa: E402
from bench.server_load import (  # noqa: E402
    Conn,
    Fleet,
    build_request,
    burst,
    healthz_all,
    open_many,
    rate,
    signed_request,
)
from devkit.postgres import PG_HOST, pg_admin  # noqa: E402
from devkit.server import free_port, launch_server  # noqa: E402

SIZES = [int(n) for n in os.environ.get("BENCH_AGENTS", "1000,10000").split(",") if n.strip()]
FANOUT_ROUNDS = int(os.environ.get("BENCH_FANOUT_ROUNDS", "3"))
INGEST_INVOCATIONS = int(os.environ.get("BENCH_INGEST_INVOCATIONS", "3"))
INGEST_ROUNDS = int(os.environ.get("BENCH_INGEST_ROUNDS", "3"))
RATE_SECONDS = float(os.environ.get("BENCH_RATE_SECONDS", "3"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
IDLE_POLL = int(os.environ.get("BENCH_IDLE_POLL", "5"))
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "15"))
PROFILE_DIR = os.environ.get("BENCH_SERVER_PROFILE", "")
FIGURES = os.environ.get("BENCH_SERVER_FIGURES", "api,fanout,idle,ingest").split(",")
# assist-server serve --workers, per backend (BENCH_SERVER_WORKERS=N: N on both)
WORKERS = {
    name: int(os.environ.get("BENCH_SERVER_WORKERS", default))
    for name, default in (("sqlite", "2"), ("postgres", "1"))
}


def emit(bench: str, *args: Any, **extra: Any) -> None:
    """figures.emit, naming the server's worker processes (names end _<db>_<agents>)."""
    figures.emit(bench, *args, workers=WORKERS[bench.split("_")[-2]], **extra)


PARK_DEADLINE = 50.0  # seconds for every agent to park its poll (polls ask for timeout=60)
# BENCH_BACKENDS=sqlite,postgres (default both) picks the storage backends measured
INGEST_TARGET = {"sqlite": 5000.0, "postgres": 2000.0}
SESSIONS = os.environ.get("BENCH_SESSIONS", "1") != "0"  # 0: every request Ed25519-signed
POLL_QUERY = "timeout=60&shared=1"  # as the agent polls: a kick's answer may be shared

HELLO_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def hello(request):
    return JSONResponse({"hello": "world"})
app = Starlette(routes=[Route("/", hello)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
            backlog=4096, timeout_keep_alive=75)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def all_parked(fleet: Fleet, runners: list[asyncio.Task[None]]) -> None:
    """Wait until every agent's poll is parked; fail at once if one of them failed (a 503, an
    answer without events), or when parking outlasts PARK_DEADLINE (the first polls would time
    out empty meanwhile): waiting for a count that can no longer be reached hung the run."""
    deadline = time.perf_counter() + PARK_DEADLINE
    while (waiting := await parked(fleet)) < len(fleet.agents):
        for runner in runners:
            if runner.done():
                runner.result()  # raises what went wrong
                raise RuntimeError("an agent's poll was answered before the kick")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {waiting} of {len(fleet.agents)} polls parked")
        await asyncio.sleep(0.1)


async def parked(fleet: Fleet) -> int:
    """Polls parked on all of the server's workers."""
    return sum(h["waiting"] for h in await healthz_all(fleet.port, fleet.workers))


async def batched_writes(fleet: Fleet) -> dict[str, int]:
    """The batched nonce and last-seen writes of all of the server's workers so far."""
    counts = [h["batched_writes"] for h in await healthz_all(fleet.port, fleet.workers)]
    return {key: sum(c[key] for c in counts) for key in ("rows", "flushes")}


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process `pid` and its live children (the server's
    workers), or of this process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(cpu_seconds(int(child)) for child in children)


async def fanout_round(
    fleet: Fleet, command_id: str, conns: list[Conn], server_pid: int
) -> tuple[list[float], float, float]:
    """Everyone long-polls; InvokeCommand to all; seconds until each agent holds its task, and
    the CPU seconds the server and this load generator spent from the first call until then."""
    t0 = 0.0
    latencies: list[float] = []
    owner: dict[str, str] = {}
    started = asyncio.Event()

    async def agent(conn: Conn, instance_id: str, key: Any) -> None:
        poll = signed_request(key, instance_id, "GET", "/luban/api/v1/notify", query=POLL_QUERY)
        status, body = await conn.send(poll)
        answered = time.perf_counter()
        events = json.loads(body).get("events") if status == 200 else None
        if not events:
            raise RuntimeError(f"poll: {status} {body[:200]!r}")
        await started.wait()
        carried = {t["invoke_id"] for e in events for t in e.get("tasks", [])}
        if owner[instance_id] not in carried:  # an older server: the kick says only "list"
            listing = signed_request(
                key, instance_id, "POST", "/luban/api/v1/task/list", b'{"reason": "kick"}'
            )
            status, body = await conn.send(listing)
            if not any(t["invoke_id"] == owner[instance_id] for t in json.loads(body)["run"]):
                raise RuntimeError("the task was not listed")
            answered = time.perf_counter()
        latencies.append(answered - t0)

    runners = [
        asyncio.create_task(agent(c, iid, key)) for c, (iid, key) in zip(conns, fleet.agents)
    ]
    await all_parked(fleet, runners)
    # This process stands in for 10,000 machines: a collection of its own heap during the round
    # (~0.2 s with 10,000 connections' objects) delayed its reading of the answers, and counted
    # as the server's latency (in the first round of most runs)
    gc.collect()
    gc.disable()
    try:
        cpu = (cpu_seconds(server_pid), cpu_seconds())
        t0 = time.perf_counter()
        owner.update(await fleet.invoke_all(command_id))
        started.set()
        await asyncio.gather(*runners)
        server_cpu, own_cpu = cpu_seconds(server_pid) - cpu[0], cpu_seconds() - cpu[1]
    finally:
        gc.enable()
    await burst(fleet.port, fleet.finish_reports(owner), CONCURRENCY)  # a clean next round
    return latencies, server_cpu, own_cpu


async def idle_cost(fleet: Fleet, conns: list[Conn]) -> dict[str, float]:
    """Every agent polls with timeout=IDLE_POLL for IDLE_SECONDS: what the database gets."""
    polls = 0
    deadline = time.perf_counter() + IDLE_SECONDS

    async def agent(conn: Conn, instance_id: str, key: Any) -> None:
        nonlocal polls
        while time.perf_counter() < deadline:
            query = f"timeout={IDLE_POLL}&shared=1"
            raw = signed_request(key, instance_id, "GET", "/luban/api/v1/notify", query=query)
            status, body = await conn.send(raw)
            if status != 200:
                raise RuntimeError(f"idle poll: {status} {body[:200]!r}")
            polls += 1

    before = await batched_writes(fleet)
    start = time.perf_counter()
    await asyncio.gather(*(agent(c, iid, k) for c, (iid, k) in zip(conns, fleet.agents)))
    elapsed = time.perf_counter() - start
    after = await batched_writes(fleet)
    return {
        "polls_per_s": polls / elapsed,
        "rows_per_poll": (after["rows"] - before["rows"]) / max(polls, 1),
        "transactions_per_s": (after["flushes"] - before["flushes"]) / elapsed,
    }


async def measure_backend(
    name: str, agents: int, port: int, key_id: str, secret: str, hello_port: int, server_pid: int
) -> None:
    """Register the fleet, then measure the figures BENCH_SERVER_FIGURES names."""
    tag = f"{name}_{agents}"
    fleet = Fleet(port, key_id, secret)
    fleet.workers = WORKERS[name]
    await fleet.register(agents)
    if SESSIONS:
        await fleet.open_sessions()
    command_id = (
        await fleet.call(
            "CreateCommand", Name="bench", Type="RunShellScript", CommandContent="ZWNobyAxMjM="
        )
    )["CommandId"]
    if {"fanout", "idle"} & set(FIGURES):
        conns = await open_many(port, agents)
        if "fanout" in FIGURES:
            await fanout(tag, fleet, command_id, conns, hello_port, server_pid)
        if "idle" in FIGURES:
            await idle_figure(tag, fleet, conns)
        for c in conns:
            c.close()
    if {"api", "ingest"} & set(FIGURES):  # the ingestion's baseline is the API rate's
        hello_rate = await api_rate(tag, fleet, hello_port)
        if "ingest" in FIGURES:
            await ingestion(name, tag, fleet, command_id, hello_rate)


async def api_rate(tag: str, fleet: Fleet, hello_port: int) -> float:
    """Signed heartbeats vs hello-world requests per second, interleaved; the hello rate."""
    iid, key = fleet.agents[0]
    hb = json.dumps({"agent_version": "bench", "uptime": 1, "boot_time": 1, "running": 0}).encode()
    ours, base = [], []
    for _ in range(3):
        base.append(
            await rate(hello_port, lambda: build_request("GET", "/"), RATE_SECONDS, CONCURRENCY)
        )
        ours.append(
            await rate(
                fleet.port,
                lambda: signed_request(key, iid, "POST", "/luban/api/heart-beat", hb),
                RATE_SECONDS,
                CONCURRENCY,
            )
        )
    hello_rate = statistics.median(base)
    emit(
        f"server_api_rate_{tag}",
        statistics.median(ours),
        hello_rate,
        "req/s",
        ">= 0.2",
        runs=ours,
        baseline_runs=base,
        request="POST /luban/api/heart-beat (signed)",
    )
    return hello_rate


async def fanout(
    tag: str, fleet: Fleet, command_id: str, conns: list[Conn], hello_port: int, server_pid: int
) -> None:
    """FANOUT_ROUNDS fan-out rounds: the median of their p99s, and the CPU they cost."""
    latencies: list[float] = []
    p99s, server_cpu, generator_cpu = [], [], []
    fleet.start_operator()  # the InvokeCommands come from a process of their own
    try:
        for _ in range(FANOUT_ROUNDS):
            round_latencies, server, generator = await fanout_round(
                fleet, command_id, conns, server_pid
            )
            latencies.extend(round_latencies)
            p99s.append(percentile(round_latencies, 0.99))
            server_cpu.append(server)
            generator_cpu.append(generator)
    finally:
        fleet.stop_operator()
    agents = len(fleet.agents)
    hello_conns = min(agents, 1000)
    hello_burst = statistics.median(
        [
            await burst(hello_port, [build_request("GET", "/")] * agents, hello_conns)
            for _ in range(3)
        ]
    )
    p99 = statistics.median(p99s)
    emit(
        f"server_fanout_p99_{tag}",
        p99,
        hello_burst,
        "s",
        "p99 < 1 s (absolute)",
        target_met=p99 < 1.0,
        agents=agents,
        p50=percentile(latencies, 0.5),
        max=max(latencies),
        rounds_p99=p99s,
        server_cpu_s=server_cpu,
        load_generator_cpu_s=generator_cpu,
    )


async def idle_figure(tag: str, fleet: Fleet, conns: list[Conn]) -> None:
    idle = await idle_cost(fleet, conns)
    emit(
        f"server_idle_writes_{tag}",
        idle["transactions_per_s"] / max(idle["polls_per_s"], 1e-9),
        1.0,  # before: every poll wrote its nonce (and last-seen) in a transaction of its own
        "transactions/poll",
        "<= 0.5",
        poll_timeout=IDLE_POLL,
        polls_per_s=idle["polls_per_s"],
        transactions_per_s=idle["transactions_per_s"],
        rows_per_poll=idle["rows_per_poll"],
    )


async def ingestion(name: str, tag: str, fleet: Fleet, command_id: str, hello_rate: float) -> None:
    """Bursts of signed terminal reports, several rounds, median rate: one request per report
    (an agent with one report due), and each agent's INGEST_INVOCATIONS reports in one
    task/reports request (what its outbox sends when they are due together)."""
    for batched in (False, True):
        rates: list[float] = []
        reports = 0
        for _ in range(INGEST_ROUNDS):
            owners = [await fleet.invoke_all(command_id) for _ in range(INGEST_INVOCATIONS)]
            if batched:
                requests = fleet.finish_batches(owners, "MTIzCg==")
            else:
                requests = [r for owner in owners for r in fleet.finish_reports(owner, "MTIzCg==")]
            elapsed = await burst(fleet.port, requests, CONCURRENCY)
            reports = len(fleet.agents) * len(owners)
            rates.append(reports / elapsed)
            await fleet.all_succeeded({i for owner in owners for i in owner.values()})
        ingest = statistics.median(rates)
        emit(
            f"server_ingest_{'batched' if batched else 'rate'}_{tag}",
            ingest,
            hello_rate,
            "reports/s",
            f">= {INGEST_TARGET[name]:.0f} reports/s (absolute)",
            target_met=ingest >= INGEST_TARGET[name],
            reports=reports,
            reports_per_request=INGEST_INVOCATIONS if batched else 1,
            runs=rates,
        )


def pg_database() -> str | None:
    """A fresh PostgreSQL database for this run, or None when none is reachable."""

    name = f"assist_bench_{uuid.uuid4().hex[:10]}"
    try:
        pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        print(f"PostgreSQL figures skipped: {exc}", file=sys.stderr)
        return None
    return f"postgresql://postgres@{PG_HOST}/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_backend(name: str, url: str | None, agents: int, tmp: Path, hello_port: int) -> None:
    """One server on `url` (None: a SQLite file), one fleet of `agents`, every figure."""
    python_args = []
    if PROFILE_DIR:
        Path(PROFILE_DIR).mkdir(parents=True, exist_ok=True)
        python_args = ["-m", "cProfile", "-o", str(Path(PROFILE_DIR) / f"{name}-{agents}.prof")]
    handle = launch_server(
        tmp / f"{name}-{agents}",
        db_url=url,
        # every agent parks a poll; several workers only on PostgreSQL (SQLite refuses them)
        extra_args=[
            "--max-connections",
            str(agents + 1000),
            "--workers",
            str(WORKERS[name]),
        ],
        python_args=python_args,
    )
    try:
        key_id, secret = handle.create_access_key("bench")
        port = int(handle.url.rsplit(":", 1)[1])
        asyncio.run(
            measure_backend(name, agents, port, key_id, secret, hello_port, handle.process.pid)
        )
    finally:
        handle.stop()


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(
        128 + signum
    )  # unwinds through the finally blocks: servers stopped, DB dropped


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    hello_port = free_port()
    hello = subprocess.Popen([sys.executable, "-c", HELLO_APP, str(hello_port)])
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    wanted = os.environ.get("BENCH_BACKENDS", "sqlite,postgres").split(",")
    try:
        time.sleep(1.0)
        for agents in SIZES:
            if "sqlite" in wanted:
                run_backend("sqlite", None, agents, tmp, hello_port)
            pg = pg_database() if "postgres" in wanted else None
            if pg:
                try:
                    run_backend("postgres", pg, agents, tmp, hello_port)
                finally:
                    drop_database(pg)
    finally:
        hello.terminate()
        hello.wait()


if __name__ == "__main__":
    main()
