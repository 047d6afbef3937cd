"""The agent's session with its control plane (docs/agent-protocol.md, Sessions): opened once and
shared by the agent's clients, answers checked with its MAC, a new one when the server ends it
(key rotation), and Ed25519 for every request against a server without sessions.

Real assist-server processes; the server without sessions is a loopback stub that answers 404
to the handshake, as a control plane of the previous release does.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import requests
from test_agent_client import serve
from test_agent_server_key import agent_cli, server_cli, write_config

from agent.client import AgentClient, ServerRefusedError
from agent.identity import Identity, generate_key, load_identity, save_identity
from agent.servertrust import ServerTrust, save_server_trust
from agent.sessions import SessionHolder
from common import protocol
from common.sessions import HEADER_MAC, HEADER_SERVER_MAC, HEADER_SESSION, Session, SessionKeys
from devkit.fixtures import server_fixture
from devkit.realagent import AgentProcess, Sdk
from devkit.server import ServerHandle, launch_server

pytestmark = pytest.mark.xdist_group("agent-e2e")

server = server_fixture("server", scope="function")


def register(server: ServerHandle, state_dir: Path) -> Identity:
    """Register in-process as `assist-agent register` does, pinning the proven key."""
    key_id, secret = server.create_access_key(f"s-{uuid.uuid4().hex[:8]}")
    act_id, code = server.create_activation(key_id, secret)
    key = generate_key()
    instance, server_key = AgentClient(server.url, None).register(
        act_id, code, Identity("", key).public_key_b64()
    )
    save_server_trust(state_dir, ServerTrust([server_key]))
    save_identity(state_dir, Identity(instance, key, server.url))
    return load_identity(state_dir)


def test_clients_share_one_session_and_check_its_answers(
    server: ServerHandle, tmp_path: Path
) -> None:
    identity = register(server, tmp_path / "state")
    holder = SessionHolder()
    first, second = (AgentClient(server.url, identity, sessions=holder) for _ in range(2))
    for client in (first, second, first):
        assert client.list_tasks("poll")["run"] == []
    assert holder.opened == 1 and holder.session is not None
    # an answer that does not carry this session's MAC is refused: nothing in it is used
    genuine = holder.session
    holder.session = Session(
        genuine.ticket, SessionKeys(genuine.keys.request, b"x" * 32), genuine.expires
    )
    with pytest.raises(protocol.ResponseRefusedError) as refused:
        first.list_tasks("poll")
    assert refused.value.code == protocol.REFUSED_BAD_SIGNATURE
    holder.session = genuine
    assert second.list_tasks("poll")["run"] == []


def test_a_session_the_server_ended_is_replaced_without_failing_the_call(
    server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.sessions.SPACING", 0.0)  # no pause after the first handshake
    identity = register(server, tmp_path / "state")
    holder = SessionHolder()
    AgentClient(server.url, identity, sessions=holder).list_tasks("poll")
    assert holder.opened == 1
    assert server_cli("key", "rotate", "--db", server.db_url).returncode == 0
    replica = launch_server(tmp_path / "replica", db_url=server.db_url)
    try:
        # the new key ends the old key's sessions: SessionExpired, a new handshake, the call
        # answered (the rotation itself followed from the pinned key, as before sessions)
        assert AgentClient(replica.url, identity, sessions=holder).list_tasks("poll")["run"] == []
    finally:
        replica.stop()
    assert holder.opened == 2


class OldServer(BaseHTTPRequestHandler):
    """A control plane without sessions: 404 to the handshake; records what else came."""

    handshakes = 0
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/v1/session"):
            OldServer.handshakes += 1
            body = json.dumps({"code": "NotFound", "message": "no such endpoint"}).encode()
            self.send_response(404)
        else:
            OldServer.seen.append(dict(self.headers.items()))
            body = b'{"run": [], "stop": []}'
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def old_server() -> Iterator[str]:
    yield from serve(OldServer)


@pytest.fixture
def mac_only() -> Iterator[str]:
    yield from serve(MacOnly)


def test_against_a_server_without_sessions_every_request_is_signed(old_server: str) -> None:
    client = AgentClient(old_server, Identity("mi-1", generate_key()))
    for _ in range(2):
        # the stub signs nothing, so the agent refuses its answers; what matters is what it sent
        with pytest.raises((protocol.ResponseRefusedError, ServerRefusedError)):
            client.list_tasks("poll")
    assert OldServer.handshakes == 1  # asked once; not again within the hour
    assert client.sessions.paused_for() > 3500
    assert len(OldServer.seen) == 2
    for headers in OldServer.seen:
        assert protocol.HEADER_SIGNATURE in headers
        assert HEADER_SESSION not in headers and HEADER_MAC not in headers


def test_the_running_agent_works_in_a_session(server: ServerHandle, tmp_path: Path) -> None:
    key_id, secret = server.create_access_key(f"d-{uuid.uuid4().hex[:8]}")
    act_id, code = server.create_activation(key_id, secret)
    prefix = tmp_path / "prefix"
    write_config(prefix)
    done = agent_cli(
        "register", "--server", server.url, "--activation-id", act_id,
        "--activation-code", code, "--prefix", str(prefix),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    instance = done.stdout.strip()
    agent = AgentProcess(prefix)
    try:
        agent.wait_connected()
        sdk = Sdk(server, key_id, secret)
        invoke = sdk.run_script("echo 123", instance)
        item = sdk.wait_result(invoke, instance, ("Success", "Failed"))
        assert item["InvocationStatus"] == "Success" and item["Output"] == "MTIzCg=="
    finally:
        assert agent.stop() == 0
    log = agent.log()
    assert "Traceback" not in log
    assert "no session" not in log and "cannot open a session" not in log
    assert requests.get(server.url + "/healthz", timeout=10).json()["sessions"] >= 1


class MacOnly(OldServer):
    """No sessions here (404 to the handshake), yet answers carry a session's MAC: a capture
    from another session played back, with this request's echoes or another's."""

    echo_this = False

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/v1/session"):
            body = b'{"code": "NotFound", "message": "no such endpoint"}'
            self.send_response(404)
        else:
            body = b'{"run": [], "stop": []}'
            self.send_response(200)
            nonce = self.headers.get("X-Assist-Nonce", "") if MacOnly.echo_this else "f" * 32
            self.send_header(protocol.HEADER_INSTANCE, "mi-1")
            self.send_header(protocol.HEADER_NONCE, nonce)
            self.send_header(protocol.HEADER_SERVER_TIMESTAMP, str(int(time.time())))
            self.send_header(HEADER_SERVER_MAC, base64.b64encode(b"m" * 32).decode())
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_an_answer_in_a_session_to_a_request_signed_without_one_is_refused(mac_only: str) -> None:
    client = AgentClient(mac_only, Identity("mi-1", generate_key()))
    for echo_this, code in (
        (False, protocol.REFUSED_REPLAYED),
        (True, protocol.REFUSED_BAD_SIGNATURE),
    ):
        MacOnly.echo_this = echo_this
        with pytest.raises(protocol.ResponseRefusedError) as refused:
            client.list_tasks("poll")
        assert refused.value.code == code
        assert client.sessions.session is None  # signed with Ed25519 throughout
