"""The control-plane key over the agent's life: TLS with a private CA, rotation, old agents.

Real assist-server processes, the real agent CLI; a private CA made in the test with
cryptography's x509 builder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.client import AgentClient, warn_plain_http
from agent.identity import Identity, generate_key, load_identity, save_identity
from agent.servertrust import SERVER_KEY_FILE, ServerTrust, save_server_trust
from common import protocol
from devkit.fixtures import server_fixture
from devkit.realagent import AGENT_CONFIG, AgentProcess, Sdk, agent_env
from devkit.server import ServerHandle, launch_server
from devkit.tls import private_ca, write_loopback_cert

pytestmark = pytest.mark.xdist_group("agent-e2e")


def make_private_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 it issued: (ca, cert, key)."""
    ca = private_ca()
    cert, key = write_loopback_cert(directory, issuer=ca)
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    return ca_path, cert, key


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "agent.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=agent_env(), timeout=60)


def server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "server.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=agent_env(), timeout=60)


def write_config(prefix: Path, extra: str = "") -> None:
    (prefix / "config").mkdir(parents=True, exist_ok=True)
    (prefix / "config" / "assist.toml").write_text(
        AGENT_CONFIG.replace("[agent]\n", "[agent]\n" + extra)
    )


@contextlib.contextmanager
def operator_trusts(ca: Path) -> Iterator[None]:
    """The test's own operator calls (requests) trust `ca`; the agent's environment does not."""
    saved = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(ca)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("REQUESTS_CA_BUNDLE")
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = saved


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ServerHandle, Path]]:
    ca, cert, key = make_private_ca(tmp_path)
    handle = launch_server(
        tmp_path / "server",
        extra_args=["--tls-cert", str(cert), "--tls-key", str(key)],
        scheme="https",
    )
    try:
        yield handle, ca
    finally:
        handle.stop()


def test_private_ca_through_ca_file_works_and_without_it_is_refused_with_a_hint(
    tls_server: tuple[ServerHandle, Path], tmp_path: Path
) -> None:
    server, ca = tls_server
    key_id, secret = server.create_access_key(f"tls-{uuid.uuid4().hex[:8]}")
    with operator_trusts(ca):
        act_id, code = server.create_activation(key_id, secret, count=5)
    prefix = tmp_path / "prefix"
    write_config(prefix)
    base = ["register", "--server", server.url, "--activation-id", act_id]
    base += ["--activation-code", code, "--prefix", str(prefix)]

    refused = agent_cli(*base)
    assert refused.returncode != 0
    assert "not trusted" in refused.stderr and "--ca-file" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (prefix / "state" / "identity.json").exists()

    done = agent_cli(*base, "--ca-file", str(ca))
    assert done.returncode == 0, done.stderr
    instance = done.stdout.strip()
    # the daemon verifies the server with the CA from [agent] ca_file, and runs echo 123
    write_config(prefix, f'ca_file = "{ca}"\n')
    agent = AgentProcess(prefix)
    try:
        agent.wait_connected()
        sdk = Sdk(server, key_id, secret)
        sdk.client.set_verify(str(ca))  # the operator's SDK trusts the private CA too
        invoke = sdk.run_script("echo 123", instance)
        item = sdk.wait_result(invoke, instance, ("Success", "Failed"))
        assert item["Output"] == "MTIzCg=="
    finally:
        assert agent.stop() == 0
    assert "Traceback" not in agent.log()


server = server_fixture("server", scope="function")


def register_identity(server: ServerHandle, state_dir: Path) -> Identity:
    """Register like `assist-agent register`, in-process, pinning the proven key."""
    key_id, secret = server.create_access_key(f"k-{uuid.uuid4().hex[:8]}")
    act_id, code = server.create_activation(key_id, secret)
    key = generate_key()
    client = AgentClient(server.url, None)
    instance, server_key = client.register(act_id, code, Identity("", key).public_key_b64())
    save_server_trust(state_dir, ServerTrust([server_key]))
    identity = Identity(instance, key, server.url)
    save_identity(state_dir, identity)
    return load_identity(state_dir)


def test_agent_follows_a_rotation_signed_by_the_old_key(
    server: ServerHandle, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    identity = register_identity(server, state)
    first = server_cli("key", "show", "--db", server.db_url).stdout.strip()
    assert identity.trust is not None and identity.trust.keys == [first]

    rotated = server_cli("key", "rotate", "--db", server.db_url, "--json")
    assert rotated.returncode == 0, rotated.stderr
    chain = json.loads(rotated.stdout)
    second = chain["PublicKey"]
    assert second != first and [k["PublicKey"] for k in chain["Keys"]] == [first, second]
    # a replica started after the rotation signs with the new key
    replica = launch_server(tmp_path / "replica", db_url=server.db_url)
    try:
        AgentClient(replica.url, identity).list_tasks("poll")
    finally:
        replica.stop()
    record = json.loads((state / SERVER_KEY_FILE).read_text())
    assert record["keys"] == [first, second]  # followed, and kept on disk


def test_a_rotation_not_endorsed_by_the_pinned_key_is_refused(
    server: ServerHandle, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    identity = register_identity(server, state)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stranger = protocol.raw_public_b64(Ed25519PrivateKey.generate())
    save_server_trust(state, ServerTrust([stranger]))  # pinned to some other control plane
    identity = load_identity(state)
    with pytest.raises(protocol.ResponseRefusedError) as refused:
        AgentClient(server.url, identity).list_tasks("poll")
    assert refused.value.code == protocol.REFUSED_UNKNOWN_KEY
    assert json.loads((state / SERVER_KEY_FILE).read_text())["keys"] == [stranger]


def test_agent_registered_before_signed_answers_pins_the_key_on_first_use(
    server: ServerHandle, tmp_path: Path
) -> None:
    prefix = tmp_path / "prefix"
    write_config(prefix)
    register_identity(server, prefix / "state")
    (prefix / "state" / SERVER_KEY_FILE).unlink()  # what an agent of the previous release has
    agent = AgentProcess(prefix, server.url)
    try:
        agent.wait_connected()
    finally:
        assert agent.stop() == 0
    record = json.loads((prefix / "state" / SERVER_KEY_FILE).read_text())
    shown = server_cli("key", "show", "--db", server.db_url).stdout.strip()
    assert record == {"keys": [shown], "source": "first-use"}
    assert (prefix / "state" / SERVER_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert "trusting" in agent.log() and "first use" in agent.log()


def test_trust_server_key_pins_an_operator_key(server: ServerHandle, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    write_config(prefix)
    register_identity(server, prefix / "state")
    bad = agent_cli("trust-server-key", "not-a-key", "--prefix", str(prefix))
    assert bad.returncode != 0 and "assist-server key show" in bad.stderr
    shown = server_cli("key", "show", "--db", server.db_url).stdout.strip()
    done = agent_cli("trust-server-key", shown, "--prefix", str(prefix))
    assert done.returncode == 0, done.stderr
    record = json.loads((prefix / "state" / SERVER_KEY_FILE).read_text())
    assert record == {"keys": [shown], "source": "operator"}


def test_plain_http_to_a_remote_server_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert not warn_plain_http("http://127.0.0.1:8080")
        assert not warn_plain_http("https://10.0.0.1:8443")
        assert warn_plain_http("http://10.0.0.1:8080")
    assert "tasks are signed; contents are visible on the wire" in caplog.text
