"""The agent request signing contract: byte-exact with agents already deployed, checked by the server.

The golden values below were produced by the code before common/protocol.py existed (the agent's
own `canonical_string`/`sign_headers` and the server's PyNaCl verification); Ed25519 signatures
are deterministic, so any drift of the string to sign changes the signature and fails here.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.datastructures import Headers

from agent.identity import Identity, public_key_b64, sign_headers
from common import protocol
from devkit.server import sign_agent_request
from server.agent_api import auth

SEED = bytes(range(32))
INSTANCE = "mi-0123456789abcdefg"
PATH = "/luban/api/v1/task/finish"
QUERY = "a=1&b=%20"
BODY = b'{"invoke_id":"t-abc","exit_code":0}'
TS = 1764790000
NONCE = "n0nce"
OLD_CANONICAL = (
    b"POST\n/luban/api/v1/task/finish\na=1&b=%20\n1764790000\nn0nce\n"
    b"d749dcd9985fc3f6c5eebec7df77f2419843bf8c7f91dbe73cbfe154ccc1536f"
)
OLD_HEADERS = {
    "X-Assist-Instance-Id": INSTANCE,
    "X-Assist-Timestamp": "1764790000",
    "X-Assist-Nonce": NONCE,
    "X-Assist-Signature": "QbwZqN3AN5foUjtMoqnREKlfDsvovaANtDLgJBuuk5AG8xnOp2GcljTF9J/5i9CQ1eDT0+84F+k9LIK1cw4wAQ==",
}


def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEED)


def test_canonical_string_is_byte_exact_with_the_old_agents() -> None:
    assert protocol.canonical_string("post", PATH, QUERY, TS, NONCE, BODY) == OLD_CANONICAL
    assert protocol.canonical_string("POST", PATH, QUERY, str(TS), NONCE, BODY) == OLD_CANONICAL


def test_agent_and_fake_agent_sign_exactly_as_the_old_agents() -> None:
    ours = protocol.sign_request(key(), INSTANCE, "post", PATH, QUERY, BODY, TS, NONCE)
    agent = sign_headers(Identity(INSTANCE, key()), "post", PATH, QUERY, BODY, TS + 0.7, NONCE)
    fake = sign_agent_request(key(), INSTANCE, "post", PATH, QUERY, BODY, TS, NONCE)
    assert ours == agent == fake == OLD_HEADERS


def test_server_accepts_a_request_signed_by_an_old_agent() -> None:
    # as it arrives over HTTP: header names lower-cased by the ASGI server
    raw = Headers(raw=[(k.lower().encode(), v.encode()) for k, v in OLD_HEADERS.items()])
    signed = auth.read_headers(raw, now=TS + 10)
    message = protocol.canonical_string("POST", PATH, QUERY, signed.timestamp, signed.nonce, BODY)
    public = auth.load_public_key(public_key_b64(key()))
    auth.verify(public, signed.signature, message)  # raises if refused
    assert (signed.instance_id, signed.timestamp, signed.nonce) == (INSTANCE, TS, NONCE)


@pytest.mark.parametrize(
    "change",
    ["method", "path", "query", "timestamp", "nonce", "body"],
)
def test_server_refuses_a_signature_over_a_changed_field(change: str) -> None:
    fields: dict[str, object] = {
        "method": "POST",
        "path": PATH,
        "query": QUERY,
        "timestamp": TS,
        "nonce": NONCE,
        "body": BODY,
    }
    fields[change] = {"method": "GET", "body": BODY + b" ", "timestamp": TS + 1}.get(
        change, "x" + str(fields[change])
    )
    message = protocol.canonical_string(**fields)  # type: ignore[arg-type]
    signed = auth.read_headers(Headers(OLD_HEADERS), now=TS)
    public = auth.load_public_key(public_key_b64(key()))
    with pytest.raises(auth.AgentError) as refused:
        auth.verify(public, signed.signature, message)
    assert (refused.value.status, refused.value.code) == (401, "InvalidSignature")


def test_server_refuses_a_truncated_signature_and_another_instances_key() -> None:
    signed = auth.read_headers(Headers(OLD_HEADERS), now=TS)
    public = auth.load_public_key(public_key_b64(key()))
    with pytest.raises(auth.AgentError):
        auth.verify(public, signed.signature[:63], OLD_CANONICAL)
    other = auth.load_public_key(public_key_b64(Ed25519PrivateKey.generate()))
    with pytest.raises(auth.AgentError):
        auth.verify(other, signed.signature, OLD_CANONICAL)


@pytest.mark.parametrize("text", ["AAAA", "A" * 44 + "==", "not base64!"])
def test_register_refuses_a_public_key_that_is_not_32_raw_bytes(text: str) -> None:
    with pytest.raises(auth.AgentError) as refused:
        auth.load_public_key(text)
    assert refused.value.status == 400


def test_server_and_agent_load_one_ed25519_library() -> None:
    # PyNaCl is no dependency any more: the server verifies with cryptography, like the agent signs
    code = (
        "import sys, server.app, devkit.server, agent.client; "
        "print(sorted(m for m in sys.modules if m == 'nacl' or m.startswith('nacl.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
