"""A STAND-IN for assist-server's agent API, for client-level tests of the agent only.

It follows docs/agent-protocol.md faithfully (Ed25519 signatures, timestamp window, nonce
replay, first terminal report wins, chunks once per offset, long-poll notify) but keeps
everything in memory. End-to-end tests use the real server (devkit/server.py) instead; this
exists so the agent's behaviour under faults (server down, duplicates) can be checked precisely.
"""

from __future__ import annotations

import base64
import http.server
import itertools
import json
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common import protocol

if TYPE_CHECKING:
    from agent.identity import Identity

TERMINAL = ("finish", "timeout", "error", "stopped", "invalid")
_ids = itertools.count(1)


class FakeState:
    """Everything the stand-in server knows."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.activations: dict[str, str] = {}
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.nonces: set[str] = set()
        self.tasks: dict[str, dict[str, dict[str, Any]]] = {}  # instance -> invoke -> task
        self.stopped: dict[str, set[str]] = {}
        self.stop_acked: set[str] = set()
        self.terminal: dict[tuple[str, str, str], dict[str, Any]] = {}  # first report wins
        self.reports: list[tuple[str, str, dict[str, Any]]] = []  # every terminal report seen
        self.chunks: dict[tuple[str, str, str], dict[int, bytes]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.heartbeats: list[tuple[str, dict[str, Any]]] = []
        self.lists: list[tuple[str, str]] = []
        self.update_now: set[str] = set()
        self.refuse_reports = 0  # answer 503 to the next N report posts
        self.refuse_running = False  # answer 503 to every streamed-output post
        self.take_batches = True  # answer task/reports (False: NotFound, as an older server)
        self.batches: list[int] = []  # the number of reports in each task/reports request
        self.refuse_items: dict[str, list[int]] = {}  # invoke id -> statuses for its next reports
        self.empty_wakes: set[str] = set()  # answer the instance's pending poll early, empty
        self.signing_key = Ed25519PrivateKey.generate()  # the control plane's response key
        self.carry_tasks = False  # kicks carry their task, as assist-server's do
        self.poll_beats = False  # long-poll answers count as heartbeats, as assist-server's do
        self.beat_interval = 60  # next_interval answered to heartbeats

    def add_task(self, instance: str, **fields: Any) -> str:
        """Queue a task for `instance` and kick it; returns the invoke id."""
        invoke = fields.pop("invoke_id", None) or f"t-{next(_ids):06d}"
        content = fields.pop("script", None)
        task = {
            "invoke_id": invoke,
            "command_id": f"c-{invoke[2:]}",
            "command_name": "test",
            "type": "RunShellScript",
            "content": base64.b64encode((content or "echo 123\n").encode()).decode(),
            "working_dir": "",
            "username": "",
            "timeout": 60,
            "repeat_mode": "Once",
            "frequency": "",
            "timed": False,
            "revision": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        task.update(fields)
        with self.lock:
            self.tasks.setdefault(instance, {})[invoke] = task
            self.kick(
                instance,
                {"type": "task", "tasks": [task]} if self.carry_tasks else {"type": "task"},
            )
        return invoke

    def stop(self, instance: str, invoke: str) -> None:
        """The operator stops an invocation."""
        with self.lock:
            self.stopped.setdefault(instance, set()).add(invoke)
            self.kick(instance, {"type": "stop"})

    def kick(self, instance: str, event: dict[str, Any]) -> None:
        """Raise a notify event (caller holds the lock)."""
        self.events.setdefault(instance, []).append(event)
        self.lock.notify_all()

    def results_for(self, invoke: str) -> list[dict[str, Any]]:
        """Terminal reports accepted (first per execution) for an invocation."""
        with self.lock:
            return [dict(v, kind=v["_kind"]) for k, v in self.terminal.items() if k[1] == invoke]

    def wait(self, predicate: Any, timeout: float = 20.0) -> bool:
        """Wait until predicate(state) is true."""
        deadline = time.time() + timeout
        with self.lock:
            while not predicate(self):
                left = deadline - time.time()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.2))
        return True


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def _send(self, status: int, value: Any) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        instance = self.headers.get(protocol.HEADER_INSTANCE, "")
        nonce = self.headers.get(protocol.HEADER_NONCE, "")
        if instance and nonce:  # every answer is signed, like the real server's
            path = urlsplit(self.path).path
            key = self.server.state.signing_key
            for name, value_ in protocol.sign_response(
                key, instance, nonce, path, status, body
            ).items():
                self.send_header(name, value_)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"code": code, "message": message})

    def _verify(self, body: bytes) -> str | None:
        """Check the X-Assist-* signature; answer 401 and return None when it fails."""
        state = self.server.state
        h = self.headers
        instance = h.get(protocol.HEADER_INSTANCE, "")
        key = state.keys.get(instance)
        if key is None:
            self._error(401, "InvalidSignature", "unknown instance")
            return None
        try:
            ts = int(h.get(protocol.HEADER_TIMESTAMP, ""))
        except ValueError:
            self._error(401, "InvalidSignature", "bad timestamp")
            return None
        if abs(time.time() - ts) > protocol.TIMESTAMP_WINDOW:
            self._error(401, "InvalidSignature", "stale timestamp")
            return None
        nonce = h.get(protocol.HEADER_NONCE, "")
        parts = urlsplit(self.path)
        canonical = protocol.canonical_string(
            self.command, parts.path, parts.query, ts, nonce, body
        )
        try:
            signature = base64.b64decode(h.get(protocol.HEADER_SIGNATURE, ""))
        except ValueError:
            signature = b""
        if not protocol.signature_valid(key, signature, canonical):
            self._error(401, "InvalidSignature", "signature does not match")
            return None
        with state.lock:
            if nonce in state.nonces:
                self._error(401, "ReplayedRequest", "nonce seen before")
                return None
            state.nonces.add(nonce)
        return instance

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/luban/api/v1/notify":
            self._error(404, "NotFound", parts.path)
            return
        instance = self._verify(b"")
        if instance is None:
            return
        wait = min(60, int(parse_qs(parts.query).get("timeout", ["25"])[0]))
        state = self.server.state
        deadline = time.time() + wait
        with state.lock:
            while (
                not state.events.get(instance)
                and instance not in state.empty_wakes
                and time.time() < deadline
            ):
                if self.server.closing:
                    break
                state.lock.wait(min(0.2, deadline - time.time()))
            events = state.events.pop(instance, [])
            state.empty_wakes.discard(instance)
        self._send(200, {"events": events, **({"heartbeat": True} if state.poll_beats else {})})

    def _report(self, instance: str, path: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A running chunk or terminal report: (status, answer), alone or as a batch item."""
        state = self.server.state
        key = (instance, data["invoke_id"], str(data["execution_id"]))
        if path == "/luban/api/v1/task/running":
            if state.refuse_running:
                return 503, {"code": "ServiceUnavailable", "message": "try later"}
            with state.lock:
                state.chunks.setdefault(key, {}).setdefault(
                    int(data["offset"]), base64.b64decode(data["output"])
                )
                state.lock.notify_all()
            return 200, {"ok": True}
        with state.lock:
            refusals = state.refuse_items.get(data["invoke_id"])
            if refusals:  # the next terminal reports of this task get these statuses
                status = refusals.pop(0)
                return status, {"code": "Refused", "message": f"refused with {status}"}
            if state.refuse_reports > 0:
                state.refuse_reports -= 1
                return 503, {"code": "ServiceUnavailable", "message": "try later"}
            kind = path.rsplit("/", 1)[-1]
            state.reports.append((instance, kind, data))
            duplicate = key in state.terminal
            if not duplicate:
                state.terminal[key] = dict(data, _kind=kind)
            if data["invoke_id"] in state.stopped.get(instance, set()):
                state.stop_acked.add(data["invoke_id"])
            state.lock.notify_all()
        return 200, {"ok": True, "duplicate": duplicate}

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = urlsplit(self.path).path
        state = self.server.state
        if path == "/luban/api/instance/register":
            data = json.loads(body)
            act = str(data.get("activation_id"))
            code = state.activations.get(act, "")
            mac_key = protocol.activation_mac_key(act, protocol.activation_secret(code))
            wanted = data.get("instance_id") or ""
            proof = protocol.agent_proof(
                mac_key, act, data["public_key"], wanted, data["nonce"], data["timestamp"]
            )
            if not code or not protocol.proofs_equal(proof, data.get("proof", "")):
                self._error(403, "InvalidActivation", "unknown activation or wrong code")
                return
            instance = wanted or f"mi-{uuid.uuid4().hex[:20]}"
            raw = base64.b64decode(data["public_key"])
            state.keys[instance] = Ed25519PublicKey.from_public_bytes(raw)
            server_key = protocol.raw_public_b64(state.signing_key)
            server_nonce = protocol.new_nonce()
            answer = {
                "instance_id": instance,
                "server_key": server_key,
                "server_nonce": server_nonce,
                "server_proof": protocol.server_proof(
                    mac_key,
                    act,
                    data["public_key"],
                    server_key,
                    instance,
                    data["nonce"],
                    server_nonce,
                ),
            }
            self._send(200, answer)
            return
        instance = self._verify(body)
        if instance is None:
            return
        data = json.loads(body or b"{}")
        if path == "/luban/api/v1/task/list":
            with state.lock:
                state.lists.append((instance, data.get("reason", "")))
                done = {k[1] for k in state.terminal if k[0] == instance and k[2] == "0"}
                run = [
                    t
                    for inv, t in state.tasks.get(instance, {}).items()
                    if inv not in state.stopped.get(instance, set())
                    and (t["timed"] or t["repeat_mode"] != "Once" or inv not in done)
                ]
                # like the real server: a stop is listed until a terminal report after it arrives
                stop = sorted(state.stopped.get(instance, set()) - state.stop_acked)
            self._send(200, {"run": run, "stop": stop})
        elif path == "/luban/api/v1/task/reports":
            if not state.take_batches:
                self._error(404, "NotFound", path)  # an older server
                return
            paths = [item["path"] for item in data["reports"]]
            with state.lock:
                # unavailable, as assist-server is: the whole request gets the 503, not its items
                terminal = state.refuse_reports > 0 and any(p != "/v1/task/running" for p in paths)
                refused = terminal or (state.refuse_running and "/v1/task/running" in paths)
                if terminal:
                    state.refuse_reports -= 1
                if not refused:
                    state.batches.append(len(paths))
            if refused:
                self._error(503, "ServiceUnavailable", "try later")
                return
            results = []
            for item in data["reports"]:
                status, answer = self._report(instance, "/luban/api" + item["path"], item["body"])
                results.append(
                    answer if status == 200 else {"ok": False, "status": status, **answer}
                )
            self._send(200, {"results": results})
        elif path == "/luban/api/v1/task/running" or (
            path.rsplit("/", 1)[-1] in TERMINAL and path.startswith("/luban/api/v1/task/")
        ):
            status, answer = self._report(instance, path, data)
            self._send(status, answer)
        elif path == "/luban/api/heart-beat":
            with state.lock:
                state.heartbeats.append((instance, data))
            self._send(200, {"next_interval": state.beat_interval})
        elif path == "/luban/api/v1/server/keys":
            public = protocol.raw_public_b64(state.signing_key)
            self._send(200, {"keys": [{"public_key": public, "endorsement": ""}]})
        elif path == "/luban/api/v1/update/update_check":
            with state.lock:
                now = instance in state.update_now
                state.update_now.discard(instance)
            self._send(200, {"update_now": now, "version": "9.9.9" if now else ""})
        else:
            self._error(404, "NotFound", path)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, state: FakeState) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = state
        self.closing = False


class FakeServer:
    """Start/stop the stand-in on a fixed loopback port (so it can go down and come back)."""

    def __init__(self) -> None:
        self.state = FakeState()
        self._server: _Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        self._server = _Server(self.port, self.state)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        """Stop answering (connections are refused until `start()`)."""
        if self._server is not None:
            self._server.closing = True
            with self.state.lock:
                self.state.lock.notify_all()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def activation(self) -> tuple[str, str]:
        """Create an activation id + code."""
        act_id, code = f"act-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        self.state.activations[act_id] = code
        return act_id, code

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.down()


def register(server_url: str, activation: tuple[str, str], state_dir: Path) -> Identity:
    """Register a fresh key and save the identity like `assist-agent register` does.

    Here rather than in conftest.py: `from conftest import …` resolves to whichever conftest
    module was imported first when several test folders run together.
    """
    from agent.client import AgentClient
    from agent.identity import Identity, generate_key, save_identity
    from agent.servertrust import ServerTrust, save_server_trust

    key = generate_key()
    client = AgentClient(server_url, None)
    instance, server_key = client.register(
        activation[0], activation[1], Identity("", key).public_key_b64()
    )
    trust = ServerTrust([server_key], "registration", state_dir)
    save_server_trust(state_dir, trust)
    identity = Identity(instance, key, client.server, trust)
    save_identity(state_dir, identity)
    return identity
