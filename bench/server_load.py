"""The load generator of bench_server.py: a minimal keep-alive HTTP/1.1 client on asyncio streams
(on a 2-core host a full client library would spend more CPU than the server it measures), and a
fleet of registered agents whose keys it holds."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import time
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common import protocol, sessions
from common.protocol import sign_request
from server.rpc import sign_params

ACTIVATION_LIMIT = 1000  # CreateActivation's InstanceCount maximum
INVOKE_LIMIT = 100  # InstanceId.N per InvokeCommand (the real API's limit, the server's default)


class Conn:
    """One keep-alive connection; reopened when the server has closed it while it sat idle."""

    def __init__(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.port = port
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(port, reader, writer)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """One request and its answer. A connection the server closed before answering (its
        header or idle timeout ran out while the generator was busy elsewhere: 10,000
        connections take longer to open than the server's 15 s header timeout) is reopened
        and the request sent again, as an HTTP client does with a stale keep-alive connection;
        the server closes only connections with no request under way, so nothing ran twice."""
        try:
            return await self._exchange(raw)
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise  # cut mid-answer: not a stale connection
            self.close()
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", self.port, limit=1 << 22
            )
            return await self._exchange(raw)

    async def _exchange(self, raw: bytes) -> tuple[int, bytes]:
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


class Agent:
    """A registered agent's key, and its session once opened (Fleet.open_sessions)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.session: sessions.Session | None = None


def signed_request(
    agent: Agent,
    instance_id: str,
    method: str,
    path: str,
    body: bytes = b"",
    query: str = "",
) -> bytes:
    """The request as the agent sends it: in its session if it has one, else Ed25519-signed."""
    if agent.session is not None:
        headers = sessions.mac_request(agent.session, instance_id, method, path, query, body)
    else:
        headers = sign_request(agent.key, instance_id, method, path, query, body)
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


async def open_many(port: int, count: int, step: int = 500) -> list[Conn]:
    """`count` connections, opened `step` at a time (a burst of thousands overflows backlogs)."""
    conns: list[Conn] = []
    for start in range(0, count, step):
        conns += await asyncio.gather(*(Conn.open(port) for _ in range(min(step, count - start))))
    return conns


class Fleet:
    """A server, an account, and registered agents (keys held here)."""

    def __init__(self, port: int, key_id: str, secret: str) -> None:
        self.port = port
        self.key_id = key_id
        self.secret = secret
        self.agents: list[tuple[str, Agent]] = []
        self.workers = 1  # the server's worker processes (assist-server serve --workers)
        # the operator's own process for InvokeCommand bursts (Fleet.invoke_all), when started
        self.operator_process: concurrent.futures.ProcessPoolExecutor | None = None

    def start_operator(self) -> None:
        """Start (and warm) the operator's process; stop_operator() ends it."""
        self.operator_process = concurrent.futures.ProcessPoolExecutor(1)
        self.operator_process.submit(int).result()

    def stop_operator(self) -> None:
        if self.operator_process is not None:
            self.operator_process.shutdown()
            self.operator_process = None

    def operator(self, action: str, **params: Any) -> bytes:
        signed = sign_params({"Action": action, **params}, self.key_id, self.secret, "POST")
        body = urlencode(signed).encode()
        return build_request(
            "POST", "/", body, {"Content-Type": "application/x-www-form-urlencoded"}
        )

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        conn = await Conn.open(self.port)
        try:
            status, body = await conn.send(self.operator(action, Format="JSON", **params))
        finally:
            conn.close()
        if status != 200:
            raise RuntimeError(f"{action}: HTTP {status} {body[:300]!r}")
        return dict(json.loads(body))

    async def register(self, count: int) -> None:
        """`count` agents, over as many activations as CreateActivation's limit needs."""
        requests: list[tuple[bytes, Ed25519PrivateKey]] = []
        for start in range(0, count, ACTIVATION_LIMIT):
            size = min(ACTIVATION_LIMIT, count - start)
            act = await self.call("CreateActivation", InstanceCount=size, TimeToLiveInHours=24)
            requests += [
                registration(act["ActivationId"], act["ActivationCode"]) for _ in range(size)
            ]
        conns = [await Conn.open(self.port) for _ in range(16)]

        async def worker(conn: Conn) -> None:
            while requests:
                raw, key = requests.pop()
                status, body = await conn.send(raw)
                if status != 200:
                    raise RuntimeError(f"register: HTTP {status} {body[:200]!r}")
                self.agents.append((json.loads(body)["instance_id"], Agent(key)))

        await asyncio.gather(*(worker(c) for c in conns))
        for c in conns:
            c.close()

    async def open_sessions(self) -> None:
        """Every agent opens its session, as a real agent does before its first request."""
        pending = list(self.agents)
        conns = [await Conn.open(self.port) for _ in range(16)]

        async def worker(conn: Conn) -> None:
            while pending:
                iid, agent = pending.pop()
                own = X25519PrivateKey.generate()
                body = json.dumps(sessions.open_request(own)).encode()
                raw = signed_request(agent, iid, "POST", "/luban/api/v1/session", body)
                status, answer = await conn.send(raw)
                if status != 200:
                    raise RuntimeError(f"session: HTTP {status} {answer[:200]!r}")
                agent.session = sessions.session_from(own, json.loads(answer), iid)

        await asyncio.gather(*(worker(c) for c in conns))
        for c in conns:
            c.close()

    async def invoke_all(self, command_id: str, parallel: int = 8) -> dict[str, str]:
        """InvokeCommand on every agent, INVOKE_LIMIT instances per call, `parallel` calls at a
        time, from the operator's own process (start_operator): an operator's SDK does not share
        the event loop that reads 10,000 agents' answers, and here it did, so its next call
        waited for this process rather than for the server. The invoke id each instance got."""
        ids = [iid for iid, _ in self.agents]
        if self.operator_process is None:
            return await invoke_chunks(
                self.port, self.key_id, self.secret, command_id, ids, parallel
            )
        loop = asyncio.get_running_loop()
        job = (self.port, self.key_id, self.secret, command_id, ids, parallel)
        return await loop.run_in_executor(self.operator_process, run_invoke_chunks, job)

    async def all_succeeded(self, invoke_ids: set[str]) -> None:
        for invoke_id in sorted(invoke_ids):
            check = await self.call("DescribeInvocations", InvokeId=invoke_id)
            status = check["Invocations"]["Invocation"][0]["InvocationStatus"]
            if status != "Success":
                raise RuntimeError(f"ingestion lost reports: {invoke_id} is {status}")

    def finish_reports(self, owner: dict[str, str], output: str = "") -> list[bytes]:
        """One signed finish report per agent for the invocation it got."""
        return [
            signed_request(
                key, iid, "POST", "/luban/api/v1/task/finish", finish_body(owner[iid], output)
            )
            for iid, key in self.agents
        ]

    def finish_batches(self, owners: list[dict[str, str]], output: str = "") -> list[bytes]:
        """One signed task/reports request per agent carrying its finish report of each
        invocation in `owners`: what an agent's outbox sends when they are due together."""
        requests = []
        for iid, key in self.agents:
            items = [
                {"path": "/v1/task/finish", "body": finish_fields(owner[iid], output)}
                for owner in owners
            ]
            body = json.dumps({"reports": items}).encode()
            requests.append(signed_request(key, iid, "POST", "/luban/api/v1/task/reports", body))
        return requests


def run_invoke_chunks(job: tuple[int, str, str, str, list[str], int]) -> dict[str, str]:
    """invoke_chunks in a process of its own (the operator's)."""
    return asyncio.run(invoke_chunks(*job))


async def invoke_chunks(
    port: int, key_id: str, secret: str, command_id: str, ids: list[str], parallel: int
) -> dict[str, str]:
    """InvokeCommand on `ids`, INVOKE_LIMIT per call, `parallel` calls at a time, each on a
    connection of its own; the invoke id each instance got."""
    fleet = Fleet(port, key_id, secret)
    owner: dict[str, str] = {}
    gate = asyncio.Semaphore(parallel)

    async def one(chunk: list[str]) -> None:
        params = {f"InstanceId.{n}": iid for n, iid in enumerate(chunk, 1)}
        async with gate:
            answer = await fleet.call("InvokeCommand", CommandId=command_id, **params)
        owner.update((iid, answer["InvokeId"]) for iid in chunk)

    chunks = [ids[i : i + INVOKE_LIMIT] for i in range(0, len(ids), INVOKE_LIMIT)]
    await asyncio.gather(*(one(c) for c in chunks))
    return owner


def finish_body(invoke_id: str, output: str) -> bytes:
    return json.dumps(finish_fields(invoke_id, output)).encode()


def finish_fields(invoke_id: str, output: str) -> dict[str, Any]:
    return {
        "invoke_id": invoke_id,
        "execution_id": "0",
        "start_time": 1,
        "end_time": 2,
        "exit_code": 0,
        "output": output,
        "dropped": 0,
        "error_code": "",
        "error_message": "",
    }


def registration(activation_id: str, code: str) -> tuple[bytes, Ed25519PrivateKey]:
    """A register request proving the activation code (never sending it), and the agent's key."""
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    nonce, now = protocol.new_nonce(), int(time.time())
    mac_key = protocol.activation_mac_key(activation_id, protocol.activation_secret(code))
    body = json.dumps(
        {
            "activation_id": activation_id,
            "public_key": public,
            "nonce": nonce,
            "timestamp": now,
            "proof": protocol.agent_proof(mac_key, activation_id, public, "", nonce, now),
            "os_type": "linux",
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    return build_request("POST", "/luban/api/instance/register", body, headers), key


async def healthz_all(port: int, workers: int) -> list[dict[str, Any]]:
    """/healthz of each of the server's `workers` worker processes: asked on fresh connections
    (each lands on whichever worker accepts it first: a busy one may take none for a while)
    until every replica id has answered, for up to 30 s."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        answer = await healthz(port)
        seen[answer["replica"]] = answer
        if len(seen) == workers:
            return list(seen.values())
        await asyncio.sleep(0.005)
    raise RuntimeError(f"only {len(seen)} of {workers} workers answered /healthz in 30 s")


async def healthz(port: int) -> dict[str, Any]:
    conn = await Conn.open(port)
    try:
        _, body = await conn.send(build_request("GET", "/healthz"))
    finally:
        conn.close()
    return dict(json.loads(body))
