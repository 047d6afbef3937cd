"""The session contract both sides share (common/sessions.py): key agreement, request MACs,
answer MACs and every way an answer can be wrong."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common import protocol
from common.protocol import canonical_string
from common.sessions import (
    HEADER_MAC,
    HEADER_SERVER_MAC,
    HEADER_SESSION,
    Session,
    SessionKeys,
    agent_keys,
    check_mac_response,
    derive_keys,
    exchange_public,
    load_exchange_key,
    mac_request,
    mac_response,
    request_mac_valid,
)


def raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def handshake(instance_id: str = "mi-1") -> tuple[SessionKeys, SessionKeys]:
    """(agent's keys, server's keys) after one exchange."""
    agent, server = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    mine = agent_keys(agent, exchange_public(server), instance_id)
    theirs = derive_keys(server, raw(agent), instance_id, raw(agent), raw(server))
    return mine, theirs


def test_both_sides_derive_the_same_two_keys_and_nobody_else_does() -> None:
    mine, theirs = handshake()
    assert mine == theirs
    assert mine.request != mine.response and len(mine.request) == len(mine.response) == 32
    assert handshake()[0] != mine  # fresh ephemeral keys: a fresh session
    # the same exchange bound to another instance gives other keys
    agent, server = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    one = agent_keys(agent, exchange_public(server), "mi-1")
    other = agent_keys(agent, exchange_public(server), "mi-2")
    assert one != other


def test_exchange_keys_that_are_not_keys_are_refused() -> None:
    for text in ("", "!!", "AAAA", exchange_public(X25519PrivateKey.generate())[:-4]):
        with pytest.raises(ValueError):
            load_exchange_key(text)
    with pytest.raises(ValueError):  # small order: the shared secret would be all zeros
        derive_keys(X25519PrivateKey.generate(), bytes(32), "mi-1", bytes(32), bytes(32))


def test_a_request_mac_covers_everything_the_signature_covered() -> None:
    keys, _ = handshake()
    session = Session("ticket", keys, int(time.time()) + 3600)
    headers = mac_request(session, "mi-1", "POST", "/p", "a=1", b"body", 1_700_000_000, "n1")
    assert headers[HEADER_SESSION] == "ticket" and protocol.HEADER_SIGNATURE not in headers
    given = headers[HEADER_MAC]
    good = canonical_string("POST", "/p", "a=1", 1_700_000_000, "n1", b"body")
    assert request_mac_valid(keys, given, good)
    for changed in (
        canonical_string("GET", "/p", "a=1", 1_700_000_000, "n1", b"body"),
        canonical_string("POST", "/q", "a=1", 1_700_000_000, "n1", b"body"),
        canonical_string("POST", "/p", "a=2", 1_700_000_000, "n1", b"body"),
        canonical_string("POST", "/p", "a=1", 1_700_000_001, "n1", b"body"),
        canonical_string("POST", "/p", "a=1", 1_700_000_000, "n2", b"body"),
        canonical_string("POST", "/p", "a=1", 1_700_000_000, "n1", b"bodY"),
    ):
        assert not request_mac_valid(keys, given, changed)
    # the response key, another session's key, garbage: all refused
    assert not request_mac_valid(SessionKeys(keys.response, keys.request), given, good)
    assert not request_mac_valid(handshake()[0], given, good)
    assert not request_mac_valid(keys, "not base64!", good)
    assert not request_mac_valid(keys, "", good)


def test_an_answer_is_taken_only_with_its_mac_for_this_request_recently() -> None:
    keys, _ = handshake()
    now = time.time()
    headers = mac_response(keys, "mi-1", "n1", "/p", 200, b"{}", int(now))
    check_mac_response(keys, "mi-1", "n1", "/p", 200, b"{}", headers, now)

    def refused(code: str, **change: object) -> None:
        args: dict[str, object] = {
            "keys": keys, "instance_id": "mi-1", "nonce": "n1", "path": "/p", "status": 200,
            "body": b"{}", "headers": headers, "now": now,
        }  # fmt: skip
        args.update(change)
        with pytest.raises(protocol.ResponseRefusedError) as caught:
            check_mac_response(**args)  # type: ignore[arg-type]
        assert caught.value.code == code, change

    bad = protocol.REFUSED_BAD_SIGNATURE
    refused(bad, body=b'{"run":[]}')
    refused(bad, status=500)
    refused(bad, path="/q")
    refused(bad, keys=SessionKeys(keys.response, keys.request))  # the request key
    refused(bad, keys=handshake()[0])
    refused(protocol.REFUSED_REPLAYED, nonce="n2")
    refused(protocol.REFUSED_REPLAYED, instance_id="mi-2")
    refused(protocol.REFUSED_STALE, now=now + protocol.RESPONSE_WINDOW + 5)
    refused(
        protocol.REFUSED_UNSIGNED,
        headers={k: v for k, v in headers.items() if k != HEADER_SERVER_MAC},
    )
    refused(bad, headers={**headers, HEADER_SERVER_MAC: "garbage!"})
    refused(bad, headers={**headers, protocol.HEADER_SERVER_TIMESTAMP: "12x"})
    # a timestamp changed after the MAC was made is refused too
    later = {**headers, protocol.HEADER_SERVER_TIMESTAMP: str(int(now) + 1)}
    refused(bad, headers=later)
