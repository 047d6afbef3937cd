"""Control-plane benchmarks: API throughput, long-poll fan-out, result ingestion.

    .venv/bin/python bench/bench_server.py

Each figure is measured on SQLite and, when it answers on 127.0.0.1:5432, on PostgreSQL, next to
a baseline measured in the same run: the bare HTTP stack (uvicorn + Starlette, same settings)
answering a hello-world route.

- server_api_rate_<db>: signed agent heartbeats per second (Ed25519 check, nonce insert, row
  update, one transaction each) against hello-world requests per second, same concurrency.
- server_fanout_p99_<db>: BENCH_AGENTS (default 1000) agents long-poll; one InvokeCommand to all of
  them; seconds until each agent holds its task (woken, then task/list answered). p99 over
  BENCH_FANOUT_ROUNDS rounds; baseline: the time the bare stack needs to answer as many concurrent
  hello-world requests. Absolute target: p99 < 1 s.
- server_ingest_rate_<db>: signed terminal reports stored per second (BENCH_AGENTS x
  BENCH_INGEST_INVOCATIONS reports per round, median of BENCH_INGEST_ROUNDS rounds); baseline:
  hello-world rate. Absolute target (SQLite): >= 2,000 reports/s.

The load generator is a minimal keep-alive HTTP/1.1 client on asyncio streams: on a 2-core host
a full client library would spend more CPU than the server it measures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bench.figures import emit  # noqa: E402
from common.protocol import sign_request  # noqa: E402
from devkit.postgres import PG_HOST, pg_admin  # noqa: E402
from devkit.server import free_port, launch_server  # noqa: E402
from server.rpc import sign_params  # noqa: E402

AGENTS = int(os.environ.get("BENCH_AGENTS", "1000"))
FANOUT_ROUNDS = int(os.environ.get("BENCH_FANOUT_ROUNDS", "3"))
INGEST_INVOCATIONS = int(os.environ.get("BENCH_INGEST_INVOCATIONS", "3"))
INGEST_ROUNDS = int(os.environ.get("BENCH_INGEST_ROUNDS", "3"))
RATE_SECONDS = float(os.environ.get("BENCH_RATE_SECONDS", "3"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
# BENCH_BACKENDS=sqlite,postgres (default both) picks the storage backends measured

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


# --- a minimal HTTP/1.1 keep-alive client -------------------------------------------------------


class Conn:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


def build_request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    query: str = "",
) -> bytes:
    target = path + (f"?{query}" if query else "")
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    for key, value in (headers or {}).items():
        lines.append(f"{key}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def signed_request(
    key: Ed25519PrivateKey,
    instance_id: str,
    method: str,
    path: str,
    body: bytes = b"",
    query: str = "",
) -> bytes:
    headers = sign_request(key, instance_id, method, path, query, body)
    headers["Content-Type"] = "application/json"
    return build_request(method, path, body, headers, query)


async def rate(port: int, make: Any, seconds: float, concurrency: int) -> float:
    """Requests per second with `concurrency` keep-alive connections for `seconds`."""
    conns = [await Conn.open(port) for _ in range(concurrency)]
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(conn: Conn) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            status, body = await conn.send(make())
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return done / elapsed


async def burst(port: int, requests: list[bytes], concurrency: int) -> float:
    """Seconds to get answers to all `requests` over `concurrency` connections."""
    conns = [await Conn.open(port) for _ in range(concurrency)]
    queue = list(reversed(requests))

    async def worker(conn: Conn) -> None:
        while queue:
            status, body = await conn.send(queue.pop())
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return elapsed


# --- the scenario --------------------------------------------------------------------------


class Fleet:
    """A server, an account, and AGENTS registered agents (keys held here)."""

    def __init__(self, port: int, key_id: str, secret: str) -> None:
        self.port = port
        self.key_id = key_id
        self.secret = secret
        self.agents: list[tuple[str, Ed25519PrivateKey]] = []

    def operator(self, action: str, **params: Any) -> bytes:
        signed = sign_params({"Action": action, **params}, self.key_id, self.secret, "POST")
        from urllib.parse import urlencode

        body = urlencode(signed).encode()
        return build_request(
            "POST", "/", body, {"Content-Type": "application/x-www-form-urlencoded"}
        )

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        conn = await Conn.open(self.port)
        try:
            status, body = await conn.send(self.operator(action, **params))
        finally:
            conn.close()
        if status != 200:
            raise RuntimeError(f"{action}: HTTP {status} {body[:300]!r}")
        return dict(json.loads(body))

    async def register(self, count: int) -> None:
        act = await self.call("CreateActivation", InstanceCount=count, TimeToLiveInHours=24)
        keys = [Ed25519PrivateKey.generate() for _ in range(count)]
        requests = []
        for key in keys:
            public = key.public_key().public_bytes_raw()
            body = json.dumps(
                {
                    "activation_id": act["ActivationId"],
                    "activation_code": act["ActivationCode"],
                    "public_key": base64.b64encode(public).decode(),
                    "os_type": "linux",
                }
            ).encode()
            requests.append(
                build_request(
                    "POST",
                    "/luban/api/instance/register",
                    body,
                    {"Content-Type": "application/json"},
                )
            )
        conns = [await Conn.open(self.port) for _ in range(16)]
        pending = list(enumerate(requests))

        async def worker(conn: Conn) -> None:
            while pending:
                index, raw = pending.pop()
                status, body = await conn.send(raw)
                if status != 200:
                    raise RuntimeError(f"register: HTTP {status} {body[:200]!r}")
                self.agents.append((json.loads(body)["instance_id"], keys[index]))

        await asyncio.gather(*(worker(c) for c in conns))
        for c in conns:
            c.close()

    def instance_params(self) -> dict[str, str]:
        return {f"InstanceId.{i}": iid for i, (iid, _) in enumerate(self.agents, 1)}

    def finish_reports(self, invoke_id: str, output: str = "") -> list[bytes]:
        """Every agent's signed `task/finish` (exit 0, base64 `output`) for one invocation."""
        report = {"invoke_id": invoke_id, "execution_id": "0", "exit_code": 0, "output": output}
        body = json.dumps(report).encode()
        return [
            signed_request(key, iid, "POST", "/luban/api/v1/task/finish", body)
            for iid, key in self.agents
        ]


async def waiting(port: int) -> int:
    conn = await Conn.open(port)
    try:
        _, body = await conn.send(build_request("GET", "/healthz"))
    finally:
        conn.close()
    return int(json.loads(body)["waiting"])


async def fanout_round(fleet: Fleet, command_id: str) -> list[float]:
    """Everyone long-polls; one InvokeCommand; seconds until each agent has its task."""
    conns = [await Conn.open(fleet.port) for _ in fleet.agents]
    t0 = 0.0
    latencies: list[float] = []
    invoke_box: dict[str, str] = {}
    started = asyncio.Event()

    async def agent(conn: Conn, instance_id: str, key: Ed25519PrivateKey) -> None:
        poll = signed_request(key, instance_id, "GET", "/luban/api/v1/notify", query="timeout=30")
        status, body = await conn.send(poll)
        if status != 200 or not json.loads(body)["events"]:
            raise RuntimeError(f"poll: {status} {body[:200]!r}")
        await started.wait()
        listing = signed_request(
            key, instance_id, "POST", "/luban/api/v1/task/list", b'{"reason": "kick"}'
        )
        status, body = await conn.send(listing)
        tasks = json.loads(body)["run"]
        if not any(t["invoke_id"] == invoke_box["id"] for t in tasks):
            raise RuntimeError("the task was not listed")
        latencies.append(time.perf_counter() - t0)

    runners = [
        asyncio.create_task(agent(c, iid, key)) for c, (iid, key) in zip(conns, fleet.agents)
    ]
    while await waiting(fleet.port) < len(fleet.agents):
        await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    body = await fleet.call("InvokeCommand", CommandId=command_id, **fleet.instance_params())
    invoke_box["id"] = body["InvokeId"]
    started.set()
    await asyncio.gather(*runners)
    for c in conns:
        c.close()
    # acknowledge the tasks so the next round starts clean
    await burst(fleet.port, fleet.finish_reports(invoke_box["id"]), CONCURRENCY)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def measure_backend(name: str, port: int, key_id: str, secret: str, hello_port: int) -> None:
    fleet = Fleet(port, key_id, secret)
    await fleet.register(AGENTS)
    command_id = (
        await fleet.call(
            "CreateCommand", Name="bench", Type="RunShellScript", CommandContent="ZWNobyAxMjM="
        )
    )["CommandId"]
    # API throughput: signed heartbeats vs hello-world, interleaved
    iid, key = fleet.agents[0]
    hb = json.dumps({"agent_version": "bench", "uptime": 1, "boot_time": 1, "running": 0}).encode()
    ours, base = [], []
    for _ in range(3):
        base.append(
            await rate(hello_port, lambda: build_request("GET", "/"), RATE_SECONDS, CONCURRENCY)
        )
        ours.append(
            await rate(
                port,
                lambda: signed_request(key, iid, "POST", "/luban/api/heart-beat", hb),
                RATE_SECONDS,
                CONCURRENCY,
            )
        )
    hello_rate = statistics.median(base)
    emit(
        f"server_api_rate_{name}",
        statistics.median(ours),
        hello_rate,
        "req/s",
        ">= 0.2",
        runs=ours,
        baseline_runs=base,
        request="POST /luban/api/heart-beat (signed)",
    )

    # long-poll fan-out
    latencies: list[float] = []
    p99s = []
    for _ in range(FANOUT_ROUNDS):
        round_latencies = await fanout_round(fleet, command_id)
        latencies.extend(round_latencies)
        p99s.append(percentile(round_latencies, 0.99))
    hello_burst = statistics.median(
        [
            await burst(hello_port, [build_request("GET", "/")] * AGENTS, min(AGENTS, 1000))
            for _ in range(3)
        ]
    )
    p99 = statistics.median(p99s)
    emit(
        f"server_fanout_p99_{name}",
        p99,
        hello_burst,
        "s",
        "p99 < 1 s (absolute)",
        target_met=p99 < 1.0,
        agents=AGENTS,
        p50=percentile(latencies, 0.5),
        max=max(latencies),
        rounds_p99=p99s,
    )

    # result ingestion: a burst of signed terminal reports, several rounds, median rate
    rates: list[float] = []
    reports_per_round = 0
    for _ in range(INGEST_ROUNDS):
        invoke_ids = []
        for _ in range(INGEST_INVOCATIONS):
            body = await fleet.call(
                "InvokeCommand", CommandId=command_id, **fleet.instance_params()
            )
            invoke_ids.append(body["InvokeId"])
        reports = [
            signed_request(
                k,
                i,
                "POST",
                "/luban/api/v1/task/finish",
                json.dumps(
                    {
                        "invoke_id": inv,
                        "execution_id": "0",
                        "start_time": 1,
                        "end_time": 2,
                        "exit_code": 0,
                        "output": "MTIzCg==",
                        "dropped": 0,
                        "error_code": "",
                        "error_message": "",
                    }
                ).encode(),
            )
            for inv in invoke_ids
            for i, k in fleet.agents
        ]
        elapsed = await burst(port, reports, CONCURRENCY)
        rates.append(len(reports) / elapsed)
        reports_per_round = len(reports)
        check = await fleet.call("DescribeInvocations", InvokeId=invoke_ids[-1])
        status = check["Invocations"]["Invocation"][0]["InvocationStatus"]
        if status != "Success":
            raise RuntimeError(f"ingestion lost reports: {status}")
    ingest = statistics.median(rates)
    target = ">= 2000 reports/s (absolute)" if name == "sqlite" else "(no absolute target)"
    emit(
        f"server_ingest_rate_{name}",
        ingest,
        hello_rate,
        "reports/s",
        target,
        target_met=ingest >= 2000 if name == "sqlite" else None,
        reports=reports_per_round,
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


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    hello_port = free_port()
    hello = subprocess.Popen([sys.executable, "-c", HELLO_APP, str(hello_port)])
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    try:
        time.sleep(1.0)
        wanted = os.environ.get("BENCH_BACKENDS", "sqlite,postgres").split(",")
        backends: list[tuple[str, str | None]] = [("sqlite", None)] if "sqlite" in wanted else []
        pg = pg_database() if "postgres" in wanted else None
        if pg:
            backends.append(("postgres", pg))
        for name, url in backends:
            handle = launch_server(
                tmp / name, db_url=url, extra_args=["--max-invoke-instances", str(max(AGENTS, 100))]
            )
            try:
                key_id, secret = handle.create_access_key("bench")
                port = int(handle.url.rsplit(":", 1)[1])
                asyncio.run(measure_backend(name, port, key_id, secret, hello_port))
            finally:
                handle.stop()
        if pg:
            drop_database(pg)
    finally:
        hello.terminate()
        hello.wait()


if __name__ == "__main__":
    main()
