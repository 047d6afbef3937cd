"""The response signing and registration-proof contract (common/protocol.py), pure: no I/O.

Each test names the attack it tries against an answer the agent would act on.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import protocol

SERVER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SERVER_B64 = protocol.raw_public_b64(SERVER)
TRUSTED = {SERVER_B64: SERVER.public_key()}
INSTANCE = "mi-a"
NONCE = "0123456789abcdef0123456789abcdef"
PATH = "/luban/api/v1/task/list"
BODY = b'{"run":[{"invoke_id":"t-1","content":"ZWNobyAxMjMK"}],"stop":[]}'
NOW = 1_764_790_000


def signed(**changes: object) -> dict[str, str]:
    args: dict[str, object] = {
        "instance_id": INSTANCE,
        "nonce": NONCE,
        "path": PATH,
        "status": 200,
        "body": BODY,
        "timestamp": NOW,
    }
    args.update(changes)
    return protocol.sign_response(SERVER, **args)  # type: ignore[arg-type]


def check(headers: dict[str, str], body: bytes = BODY, **changes: object) -> None:
    args: dict[str, object] = {
        "instance_id": INSTANCE,
        "nonce": NONCE,
        "path": PATH,
        "status": 200,
        "now": NOW + 1,
    }
    args.update(changes)
    protocol.check_response(TRUSTED, body=body, headers=headers, **args)  # type: ignore[arg-type]


def refused(headers: dict[str, str], body: bytes = BODY, **changes: object) -> str:
    with pytest.raises(protocol.ResponseRefusedError) as caught:
        check(headers, body, **changes)
    return caught.value.code


def test_a_genuine_answer_passes() -> None:
    check(signed())


def test_rewritten_content_same_length_is_refused() -> None:
    tampered = BODY.replace(b"ZWNobyAxMjMK", b"ZWNobyA2NjYK")
    assert len(tampered) == len(BODY)
    assert refused(signed(), tampered) == protocol.REFUSED_BAD_SIGNATURE


def test_unsigned_answer_is_refused() -> None:
    assert refused({}) == protocol.REFUSED_UNSIGNED


def test_answer_for_another_instance_is_refused() -> None:
    assert refused(signed(instance_id="mi-b")) == protocol.REFUSED_REPLAYED


def test_answer_to_an_earlier_request_is_refused() -> None:
    assert refused(signed(), nonce="f" * 32) == protocol.REFUSED_REPLAYED


def test_echoed_ids_rewritten_to_match_still_fail_the_signature() -> None:
    headers = signed(instance_id="mi-b")
    headers[protocol.HEADER_INSTANCE] = INSTANCE  # the attacker fixes the echo, not the signature
    assert refused(headers) == protocol.REFUSED_BAD_SIGNATURE


def test_stale_answer_is_refused() -> None:
    late = NOW + protocol.RESPONSE_WINDOW + 1
    assert refused(signed(), now=late) == protocol.REFUSED_STALE


def test_answer_moved_to_another_endpoint_is_refused() -> None:
    headers = signed(path="/luban/api/heart-beat")
    assert refused(headers) == protocol.REFUSED_BAD_SIGNATURE


def test_error_status_swapped_is_refused() -> None:
    assert refused(signed(status=404)) == protocol.REFUSED_BAD_SIGNATURE


def test_answer_signed_by_an_unknown_key_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    headers = protocol.sign_response(other, INSTANCE, NONCE, PATH, 200, BODY, NOW)
    assert refused(headers) == protocol.REFUSED_UNKNOWN_KEY
    headers[protocol.HEADER_SERVER_KEY] = SERVER_B64  # claims the trusted key, not signed by it
    assert refused(headers) == protocol.REFUSED_BAD_SIGNATURE


def test_garbage_signature_headers_are_refused_not_a_crash() -> None:
    headers = signed()
    headers[protocol.HEADER_SERVER_SIGNATURE] = "%%%not base64"
    assert refused(headers) == protocol.REFUSED_BAD_SIGNATURE
    headers = signed()
    headers[protocol.HEADER_SERVER_TIMESTAMP] = "１２３"  # non-ASCII digits
    assert refused(headers) == protocol.REFUSED_BAD_SIGNATURE


def rotate(old: Ed25519PrivateKey, new: Ed25519PrivateKey) -> tuple[str, str]:
    old_b64, new_b64 = protocol.raw_public_b64(old), protocol.raw_public_b64(new)
    signature = old.sign(protocol.rotation_string(old_b64, new_b64))
    return new_b64, base64.b64encode(signature).decode()


def test_rotation_chain_is_followed_from_the_pinned_key() -> None:
    second, third = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    chain = [(SERVER_B64, ""), rotate(SERVER, second), rotate(second, third)]
    assert protocol.follow_rotations(SERVER_B64, chain) == [
        SERVER_B64,
        protocol.raw_public_b64(second),
        protocol.raw_public_b64(third),
    ]
    # pinned at the second key: only what follows it
    assert protocol.follow_rotations(chain[1][0], chain) == [chain[1][0], chain[2][0]]


def test_rotation_not_signed_by_the_old_key_is_not_followed() -> None:
    attacker, mallory = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    forged = rotate(attacker, mallory)  # endorsed by a key the agent never trusted
    assert protocol.follow_rotations(SERVER_B64, [(SERVER_B64, ""), forged]) == [SERVER_B64]
    assert protocol.follow_rotations(SERVER_B64, [forged]) == [SERVER_B64]


def test_registration_proofs_bind_code_keys_id_and_nonces() -> None:
    key = protocol.activation_mac_key("act-1", protocol.activation_secret("code"))
    wrong = protocol.activation_mac_key("act-1", protocol.activation_secret("guess"))
    other_act = protocol.activation_mac_key("act-2", protocol.activation_secret("code"))
    proof = protocol.agent_proof(key, "act-1", "AGENTKEY", "", "n1", NOW)
    assert protocol.proofs_equal(
        proof, protocol.agent_proof(key, "act-1", "AGENTKEY", "", "n1", NOW)
    )
    for different in (
        protocol.agent_proof(wrong, "act-1", "AGENTKEY", "", "n1", NOW),
        protocol.agent_proof(other_act, "act-1", "AGENTKEY", "", "n1", NOW),
        protocol.agent_proof(key, "act-1", "OTHERKEY", "", "n1", NOW),
        protocol.agent_proof(key, "act-1", "AGENTKEY", "i-x", "n1", NOW),
        protocol.agent_proof(key, "act-1", "AGENTKEY", "", "n2", NOW),
    ):
        assert not protocol.proofs_equal(proof, different)
    vouch = protocol.server_proof(key, "act-1", "AGENTKEY", SERVER_B64, "mi-a", "n1", "s1")
    swapped = protocol.server_proof(key, "act-1", "AGENTKEY", "EVILKEY", "mi-a", "n1", "s1")
    assert not protocol.proofs_equal(vouch, swapped)
    assert "code" not in vouch and "code" not in proof


# --- shared kicks: one signature for a kick's whole audience ---------------------------------

NOTIFY = "/luban/api/v1/notify"


def kick_body(*instances: str, kick_id: str = "k" * 32) -> bytes:
    audience = [protocol.audience_tag(i) for i in instances]
    event = {"type": "task", "tasks": [{"invoke_id": "t-1", "content": "ZWNobyAxMjMK"}]}
    return json.dumps(
        {"events": [event], "heartbeat": True, "kick": {"id": kick_id, "audience": audience}}
    ).encode()


def refused_kick(
    body: bytes, headers: dict[str, str], instance: str = INSTANCE, **kw: object
) -> str:
    with pytest.raises(protocol.ResponseRefusedError) as refused:
        protocol.check_kick(TRUSTED, instance, kw.get("path", NOTIFY), body, headers, now=NOW)  # type: ignore[arg-type]
    return refused.value.code


def test_shared_kick_is_taken_by_every_instance_it_names_and_no_other() -> None:
    body = kick_body(INSTANCE, "mi-b")
    headers = protocol.sign_kick(SERVER, NOTIFY, body, SERVER_B64, timestamp=NOW)
    for instance in (INSTANCE, "mi-b"):
        assert protocol.check_kick(TRUSTED, instance, NOTIFY, body, headers, now=NOW) == (
            "k" * 32,
            NOW,
        )
    assert b"mi-b" not in body  # named by digest only
    assert refused_kick(body, headers, "mi-c") == protocol.REFUSED_REPLAYED


def test_shared_kick_tampered_stale_unsigned_or_foreign_key_is_refused() -> None:
    body = kick_body(INSTANCE)
    headers = protocol.sign_kick(SERVER, NOTIFY, body, SERVER_B64, timestamp=NOW)
    tampered = body.replace(b"ZWNobyAxMjMK", b"ZWNobyA2NjYK")
    assert refused_kick(tampered, headers) == protocol.REFUSED_BAD_SIGNATURE
    assert refused_kick(body, headers, path="/luban/api/v1/task/list") == (
        protocol.REFUSED_BAD_SIGNATURE
    )
    stale = protocol.sign_kick(SERVER, NOTIFY, body, SERVER_B64, timestamp=NOW - 301)
    assert refused_kick(body, stale) == protocol.REFUSED_STALE
    unsigned = {k: v for k, v in headers.items() if k != protocol.HEADER_KICK_SIGNATURE}
    assert refused_kick(body, unsigned) == protocol.REFUSED_UNSIGNED
    other = Ed25519PrivateKey.generate()
    foreign = protocol.sign_kick(other, NOTIFY, body, protocol.raw_public_b64(other), timestamp=NOW)
    assert refused_kick(body, foreign) == protocol.REFUSED_UNKNOWN_KEY
    # a per-request answer's signature does not pass for a shared one, nor the other way
    per_request = protocol.sign_response(SERVER, INSTANCE, NONCE, NOTIFY, 200, body, NOW)
    assert refused_kick(body, per_request) == protocol.REFUSED_UNSIGNED
    with pytest.raises(protocol.ResponseRefusedError):
        protocol.check_response(TRUSTED, INSTANCE, NONCE, NOTIFY, 200, body, headers, now=NOW)
