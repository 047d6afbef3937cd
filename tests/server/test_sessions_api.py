"""Agent sessions (docs/agent-protocol.md, Sessions): a handshake signed with Ed25519 both ways,
then requests and answers authenticated by the session's HMAC keys; every way a session request
can be wrong is refused, and a session ends with deregistration, re-registration and a rotation
of the control plane's key."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from serverkit import Api

from common import protocol
from common.sessions import (
    HEADER_MAC,
    HEADER_SERVER_MAC,
    HEADER_SESSION,
    SESSION_EXPIRED,
    SESSION_LIFETIME,
    Session,
    SessionKeys,
    check_mac_response,
    mac_request,
)
from devkit.server import REPO_ROOT, SESSION_URL, FakeAgent, ServerHandle, launch_server
from server.agent_api.sessions import Tickets

LIST = "/luban/api/v1/task/list"


def answer_ok(agent: FakeAgent, response: requests.Response, keys: SessionKeys) -> None:
    """The answer is authenticated by the session's response key for this very request."""
    sent_nonce = response.request.headers[protocol.HEADER_NONCE]
    body = response.content
    check_mac_response(
        keys, agent.instance_id, str(sent_nonce), LIST, response.status_code, body,
        response.headers,
    )  # fmt: skip


def code_of(response: requests.Response) -> tuple[int, str]:
    return response.status_code, str(response.json()["code"])


def test_requests_in_a_session_are_answered_with_its_mac(api: Api) -> None:
    agent = api.agent()
    session = agent.open_session()
    assert session.expires - time.time() == pytest.approx(SESSION_LIFETIME, abs=60)
    for _ in range(3):
        response = agent.request("POST", LIST, {"reason": "poll"})
        assert response.status_code == 200, response.text
        assert HEADER_SERVER_MAC in response.headers
        assert protocol.HEADER_SERVER_SIGNATURE not in response.headers  # no Ed25519 answer
        answer_ok(agent, response, session.keys)
    # the request key does not authenticate answers: the two directions have their own keys
    swapped = SessionKeys(request=session.keys.response, response=session.keys.request)
    with pytest.raises(protocol.ResponseRefusedError) as refused:
        answer_ok(agent, response, swapped)
    assert refused.value.code == protocol.REFUSED_BAD_SIGNATURE
    # a task reaches the agent in the session, and its report is stored
    command = api.create_command()
    invoke_id = api.invoke(command, agent.instance_id)
    listed = agent.tasks()
    assert [t["invoke_id"] for t in listed["run"]] == [invoke_id]
    agent.report("finish", invoke_id, b"hello")
    results = api.ok("DescribeInvocationResults", InvokeId=invoke_id)
    result = results["Invocation"]["InvocationResults"]["InvocationResult"][0]
    assert result["InvocationStatus"] == "Success"
    assert base64.b64decode(result["Output"]) == b"hello"


def test_the_handshake_is_signed_with_the_instance_key_and_answered_with_the_server_key(
    api: Api,
) -> None:
    agent = api.agent()
    session = agent.open_session()
    # a handshake inside a session is refused: only the instance's own key opens one
    inside = agent.request("POST", SESSION_URL, {"x25519": base64.b64encode(b"k" * 32).decode()})
    assert code_of(inside) == (401, "InvalidSignature")
    agent.in_session = None
    # a second session of the same instance within HANDSHAKE_SPACING: refused, use the first
    again = agent.request("POST", SESSION_URL, {"x25519": base64.b64encode(b"k" * 32).decode()})
    assert code_of(again) == (429, "Throttling")
    assert protocol.HEADER_SERVER_SIGNATURE in again.headers  # signed with Ed25519, not a MAC
    fresh = api.agent()
    response = fresh.request("POST", SESSION_URL, {"x25519": base64.b64encode(b"k" * 32).decode()})
    assert response.status_code == 200, response.text
    assert protocol.HEADER_SERVER_SIGNATURE in response.headers  # Ed25519, not a MAC
    assert HEADER_SERVER_MAC not in response.headers
    small_order = base64.b64encode(bytes(32)).decode()
    for bad in ("!!", base64.b64encode(b"k" * 31).decode()):
        refused = api.agent().request("POST", SESSION_URL, {"x25519": bad})
        assert code_of(refused) == (400, "InvalidParameter"), bad
    assert code_of(api.agent().request("POST", SESSION_URL, {})) == (400, "InvalidParameter")
    refused = api.agent().request("POST", SESSION_URL, {"x25519": small_order})
    assert code_of(refused) == (400, "InvalidParameter")
    # a request that is both signed and in a session is refused
    body = b'{"reason":"poll"}'
    signed = protocol.sign_request(agent.key, agent.instance_id, "POST", LIST, "", body)
    made = mac_request(session, agent.instance_id, "POST", LIST, "", body)
    both = {**signed, HEADER_SESSION: made[HEADER_SESSION], HEADER_MAC: made[HEADER_MAC]}
    answer = requests.post(api.server.url + LIST, data=body, headers=both, timeout=30)
    assert code_of(answer) == (401, "InvalidSignature")


def test_session_requests_that_are_wrong_are_refused(api: Api) -> None:
    agent, other = api.agent(), api.agent()
    session = agent.open_session()
    other_session = other.open_session()

    def send(headers: dict[str, str]) -> requests.Response:
        body = b'{"reason":"poll"}'
        headers = {**headers, "Content-Type": "application/json"}
        return requests.post(api.server.url + LIST, data=body, headers=headers, timeout=30)

    def made(in_session: Session, instance_id: str, **sign: object) -> dict[str, str]:
        return mac_request(in_session, instance_id, "POST", LIST, "", b'{"reason":"poll"}', **sign)  # type: ignore[arg-type]

    good = made(session, agent.instance_id)
    assert send(good).status_code == 200
    # the same request again: its nonce is used
    assert code_of(send(good)) == (401, "ReplayedRequest")
    # a MAC under other keys with this session's ticket
    forged = Session(session.ticket, SessionKeys(b"r" * 32, b"s" * 32), session.expires)
    assert code_of(send(made(forged, agent.instance_id))) == (401, "InvalidSignature")
    # another instance's ticket and keys, claiming this instance
    assert code_of(send(made(other_session, agent.instance_id))) == (401, SESSION_EXPIRED)
    # a ticket changed in one character
    ticket = session.ticket
    flipped = ticket[:20] + ("A" if ticket[20] != "A" else "B") + ticket[21:]
    changed = Session(flipped, session.keys, session.expires)
    assert code_of(send(made(changed, agent.instance_id))) == (401, SESSION_EXPIRED)
    # garbage, an over-long ticket, and the same ticket spelled otherwise (padding, base64's
    # other alphabet): one ticket has one spelling
    other_alphabet = ticket.replace("-", "+").replace("_", "/")
    for junk in ("not-a-ticket", "A" * 300, ticket + "=", ticket[:-1] + "+", other_alphabet):
        if junk == ticket:
            continue
        headers = {**made(session, agent.instance_id), HEADER_SESSION: junk}
        assert send(headers).status_code == 401, junk
    # the ticket without its MAC
    bare = made(session, agent.instance_id)
    del bare[HEADER_MAC]
    assert code_of(send(bare)) == (401, "InvalidSignature")
    # a stale timestamp, MAC'd correctly
    stale = made(session, agent.instance_id, timestamp=int(time.time()) - 1000)
    assert code_of(send(stale)) == (401, "InvalidSignature")
    # and the session still works after all of that
    assert send(made(session, agent.instance_id)).status_code == 200
    assert send(made(other_session, other.instance_id)).status_code == 200


def test_a_session_ends_with_deregistration_and_re_registration(api: Api) -> None:
    name = f"i-sess{uuid.uuid4().hex[:12]}"
    act_id, code = api.server.create_activation(api.key_id, api.secret, count=5)
    old = FakeAgent.register(api.server.url, act_id, code, instance_id=name)
    old.open_session()
    assert old.request("POST", LIST, {"reason": "poll"}).status_code == 200
    api.ok("DeregisterManagedInstance", InstanceId=name)
    assert old.request("POST", LIST, {"reason": "poll"}).status_code == 401
    new = FakeAgent.register(api.server.url, act_id, code, instance_id=name)
    # the old key's session does not carry over to the instance registered again
    assert code_of(old.request("POST", LIST, {"reason": "poll"})) == (401, SESSION_EXPIRED)
    new.open_session()
    assert new.request("POST", LIST, {"reason": "poll"}).status_code == 200


@pytest.mark.postgres
def test_a_ticket_opens_on_every_replica_until_the_key_rotates(
    replicas: list[ServerHandle], tmp_path: Path
) -> None:
    first, second = replicas
    key_id, secret = first.create_access_key(f"acct-{uuid.uuid4().hex[:8]}")
    act_id, code = first.create_activation(key_id, secret)
    agent = FakeAgent.register(first.url, act_id, code)
    session = agent.open_session()
    agent.url = second.url  # failover: the other replica opens the same ticket
    response = agent.request("POST", LIST, {"reason": "poll"})
    assert response.status_code == 200, response.text
    answer_ok(agent, response, session.keys)
    rotate = [sys.executable, "-m", "server.cli", "key", "rotate", "--db", first.db_url]
    assert subprocess.run(rotate, capture_output=True, timeout=60, cwd=REPO_ROOT).returncode == 0
    rotated = launch_server(tmp_path / "rotated", db_url=first.db_url)
    try:
        agent.url = rotated.url  # signs with the new key: the old key's tickets end
        assert code_of(agent.request("POST", LIST, {"reason": "poll"})) == (401, SESSION_EXPIRED)
        agent.open_session()
        assert agent.request("POST", LIST, {"reason": "poll"}).status_code == 200
    finally:
        rotated.stop()


def test_tickets_end_when_they_expire_and_are_bound_to_the_key() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from server.store.serverkeys import ServerKey

    signing = ServerKey(1, Ed25519PrivateKey.generate(), "pub", "")
    rotated = ServerKey(2, Ed25519PrivateKey.generate(), "pub2", "")
    keys = SessionKeys(b"q" * 32, b"a" * 32)
    now = time.time()
    tickets = Tickets(limit=2)
    ticket = tickets.seal(signing, "mi-1", "key-1", keys, int(now) + 100)
    assert len(ticket) == 140

    def opens(t: str, instance: str = "mi-1", key: str = "key-1", at: float = now) -> bool:
        opened = tickets.open(signing, t, instance, key, at)
        return opened is not None and opened.keys == keys

    assert opens(ticket) and opens(ticket, at=now + 99)
    assert Tickets().open(signing, ticket, "mi-1", "key-1", now) is not None  # any replica
    assert not opens(ticket, at=now + 101)  # expired
    assert not opens(ticket, instance="mi-2")  # another instance
    assert not opens(ticket, key="key-2")  # the instance registered again with another key
    assert Tickets().open(rotated, ticket, "mi-1", "key-1", now) is None  # a key rotation
    # nothing is kept until a request with it authenticated; kept, the same checks hold
    assert tickets.count() == 0 and tickets.known(ticket, "mi-1") is None
    opened = tickets.open(signing, ticket, "mi-1", "key-1", now)
    assert opened is not None
    tickets.keep(ticket, opened)
    assert tickets.known(ticket, "mi-1") == keys and tickets.known(ticket, "mi-2") is None
    assert not opens(ticket, instance="mi-2") and not opens(ticket, key="key-2")
    assert not opens(ticket, at=now + 101)
    assert tickets.open(rotated, ticket, "mi-1", "key-1", now) is None
    # the oldest kept tickets go first
    more = [tickets.seal(signing, "mi-1", "key-1", keys, int(now) + 100) for _ in range(2)]
    for t in more:
        found = tickets.open(signing, t, "mi-1", "key-1", now)
        assert found is not None
        tickets.keep(t, found)
    assert tickets.count() == 2 and tickets.known(ticket, "mi-1") is None
    assert opens(ticket)  # opened again from the ticket itself
    # one new session per instance and key within the spacing, per replica
    assert tickets.handshake_allowed("mi-1\nkey-1", 1000.0)
    assert not tickets.handshake_allowed("mi-1\nkey-1", 1005.0)
    assert tickets.handshake_allowed("mi-1\nkey-2", 1005.0)
    assert tickets.handshake_allowed("mi-1\nkey-1", 1011.0)
