"""Endpoint logic of the agent API: register, tasks, reports, heartbeat, notify, update."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common import protocol
from common.sessions import (
    SESSION_LIFETIME,
    SessionKeys,
    derive_keys,
    exchange_public,
    load_exchange_key,
)
from server import model
from server.agent_api.auth import AgentError, load_public_key, unauthorized
from server.agent_api.sessions import HANDSHAKE_SPACING
from server.inputs import load_json
from server.lifecycle import terminal_status
from server.output_limits import clip_chunk, clip_report
from server.rpc import DEFAULT_REGION
from server.store import access, files, instances, settings, tasks
from server.store.access import NonceClaim
from server.store.chunks import trim_chunks
from server.store.conn import Conn

if TYPE_CHECKING:
    from server.state import AgentIdentity, ServerState
    from server.store.serverkeys import ServerKey

log = logging.getLogger(__name__)

MAX_OUTPUT_B64 = 1024 * 1024  # bytes of base64 output accepted in one report
_INSTANCE_ID = re.compile(r"^i-[A-Za-z0-9]{1,60}$")
_INVOKE_ID = re.compile(r"^t-[A-Za-z0-9]{1,60}$")
_EXECUTION_ID = re.compile(r"^[0-9A-Za-z_.:-]{1,32}$")


def bad(message: str) -> AgentError:
    return AgentError("InvalidParameter", message, 400)


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    try:
        value = load_json(body or b"{}")
    except ValueError as exc:
        raise bad("the body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise bad("the body must be a JSON object")
    return value


def field_str(body: dict[str, Any], name: str, max_len: int = 256, required: bool = False) -> str:
    value = body.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise bad(f"{name} must be a string")
    if required and not value:
        raise bad(f"{name} is required")
    if "\x00" in value:
        raise bad(f"{name} must not contain NUL characters")
    if len(value) > max_len:
        raise bad(f"{name} is longer than {max_len} characters")
    return value


def field_int(
    body: dict[str, Any], name: str, default: int | None = 0, nullable: bool = False
) -> int | None:
    value = body.get(name, default)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{name} must be an integer")
    if abs(value) > 2**62:
        raise bad(f"{name} is out of range")
    return value


def field_b64(body: dict[str, Any], name: str) -> str:
    value = field_str(body, name, MAX_OUTPUT_B64)
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad(f"{name} must be base64") from exc
    return value


def ip_allowed(ip: str, ranges: str) -> bool:
    """Whether the registering client's address is inside the activation's ranges."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for part in ranges.split(","):
        network = ipaddress.ip_network(part.strip(), strict=False)
        if network.prefixlen == 0 or address in network:
            return True
    return False


def read_proof(data: dict[str, Any]) -> tuple[str, int, str]:
    """The agent's nonce, timestamp and proof of the activation code (it never sends the code)."""
    nonce = field_str(data, "nonce", protocol.MAX_NONCE, required=True)
    timestamp = field_int(data, "timestamp")
    proof = field_str(data, "proof", 64, required=True)
    if timestamp is None or abs(time.time() - timestamp) > protocol.TIMESTAMP_WINDOW:
        raise AgentError(
            "InvalidTimestamp", "timestamp is more than 300 s off the server's clock", 403
        )
    return nonce, timestamp, proof


def check_agent_proof(
    data: dict[str, Any], activation: dict[str, Any], public_key: str, wanted: str
) -> bytes:
    """The MAC key of the activation, once the agent proved it knows the code; else 403."""
    activation_id = str(activation["activation_id"])
    mac_key = protocol.activation_mac_key(activation_id, str(activation["code_hash"]).encode())
    code = field_str(data, "activation_code", 128)
    if code:  # an agent from before signed responses: the code itself came over the wire
        if not _same(instances.hash_code(code), activation["code_hash"]):
            raise AgentError("InvalidActivation", "unknown activation id or wrong code", 403)
        return mac_key
    nonce, timestamp, proof = read_proof(data)
    expected = protocol.agent_proof(mac_key, activation_id, public_key, wanted, nonce, timestamp)
    if not protocol.proofs_equal(expected, proof):
        raise AgentError("InvalidActivation", "unknown activation id or wrong code", 403)
    return mac_key


async def register(
    state: ServerState, body: bytes, client_ip: str, server_key: ServerKey
) -> dict[str, Any]:
    """Join with an activation and an Ed25519 public key; returns the instance id and the
    control plane's key, with a proof keyed by the activation code (docs/agent-protocol.md)."""
    data = parse_json(body)
    activation_id = field_str(data, "activation_id", 64, required=True)
    legacy = bool(field_str(data, "activation_code", 128))
    if not legacy:
        read_proof(data)  # malformed or stale: refused before touching the database
    public_key = field_str(data, "public_key", 128, required=True)
    load_public_key(public_key)
    os_type = field_str(data, "os_type", 16) or "linux"
    if os_type not in ("linux", "windows"):
        raise bad("os_type must be linux or windows")
    wanted = field_str(data, "instance_id", 64)
    if wanted and not _INSTANCE_ID.match(wanted):
        raise bad("instance_id must look like i-…")
    denied = AgentError("InvalidActivation", "unknown activation id or wrong code", 403)
    if legacy:
        log.warning("%s: registration sent the activation code in clear (old agent)", activation_id)
    now = model.now_ms()

    async def _tx(conn: Conn) -> Any:
        activation = await instances.get_activation(conn, activation_id)
        if activation is None or activation["disabled"]:
            raise denied
        mac_key = check_agent_proof(data, activation, public_key, wanted)
        if not legacy:
            expires = int(time.time()) + protocol.TIMESTAMP_WINDOW + 60
            nonce_key = f"r:{activation_id}:{data['nonce']}"
            if not await access.use_nonce(conn, nonce_key, expires):
                raise AgentError("ReplayedRequest", "this registration was already used", 403)
        if now > activation["created_ms"] + activation["ttl_hours"] * 3600 * 1000:
            raise AgentError("ActivationExpired", "the activation has expired", 403)
        if not ip_allowed(client_ip, activation["ip_address_range"]):
            raise AgentError("InvalidActivation", "this address may not use the activation", 403)
        instance_id = wanted or model.new_id("mi-", 17)
        existing = await instances.get_instance(conn, instance_id)
        if existing is not None and existing["account"] != activation["account"]:
            raise AgentError("InstanceIdConflict", f"{instance_id} belongs to another account", 409)
        if existing is not None and not existing["deregistered"]:
            # Any activation of the account must not take over a live instance's identity.
            raise AgentError(
                "InstanceIdConflict",
                f"{instance_id} is registered: deregister it first (DeregisterManagedInstance)",
                409,
            )
        if not await instances.claim_activation(conn, activation_id):
            raise AgentError(
                "ActivationLimitExceeded", "the activation's instance count is used up", 403
            )
        await instances.upsert_instance(
            conn,
            {
                "instance_id": instance_id,
                "account": activation["account"],
                "activation_id": activation_id,
                "public_key": public_key,
                "instance_name": field_str(data, "instance_name", 128)
                or activation["instance_name"],
                "hostname": field_str(data, "hostname", 256),
                "os_type": os_type,
                "agent_version": field_str(data, "agent_version", 64),
                "ip": client_ip,
                "registered": model.iso_from_ms(now),
                "registered_ms": now,
                "last_seen_ms": now,
                "heartbeat_interval": state.heartbeat_interval,
                "deregistered": False,
                "region_id": activation["region_id"],
            },
        )
        return mac_key, instance_id

    mac_key, instance_id = await state.store.write(_tx)
    await state.forget_instance(instance_id)
    answer = {"instance_id": instance_id, "server_key": server_key.public_b64}
    if not legacy:
        server_nonce = protocol.new_nonce()
        answer["server_nonce"] = server_nonce
        answer["server_proof"] = protocol.server_proof(
            mac_key,
            activation_id,
            public_key,
            server_key.public_b64,
            instance_id,
            str(data["nonce"]),
            server_nonce,
        )
    return answer


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def render_task(row: dict[str, Any]) -> dict[str, Any]:
    """A Task of task/list."""
    return {
        "invoke_id": row["invoke_id"],
        "command_id": row["command_id"],
        "command_name": row["command_name"],
        "type": row["command_type"],
        "content": row["content"],
        "working_dir": row["working_dir"],
        "username": row["username"],
        "launcher": row["launcher"],
        "termination_mode": row["termination_mode"],
        "timeout": row["timeout"],
        "repeat_mode": row["repeat_mode"],
        "frequency": row["frequency"],
        "timed": bool(row["timed"]),
        "revision": row["revision"],
        "created": row["created"],
    }


async def task_list(state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
    """Every task the instance should have, and the invocations it should stop."""
    data = parse_json(body)
    reason = field_str(data, "reason", 16)
    if reason and reason not in ("startup", "kick", "poll"):
        raise bad("reason must be startup, kick or poll")

    async def _tx(conn: Conn) -> Any:
        await state.use_agent_nonce(conn, who)
        run, stop = await tasks.tasks_for(conn, who.instance_id)
        sent = await files.files_for(conn, who.instance_id, model.now_ms())
        return run, stop, sent

    run, stop, sent = await state.store.write(_tx, durable=False, key=who.instance_id)
    answer: dict[str, Any] = {"run": [render_task(r) for r in run], "stop": stop}
    if sent:  # only when there are some: older agents never see the key
        answer["files"] = [render_file(r) for r in sent]
    return answer


def render_file(row: dict[str, Any]) -> dict[str, Any]:
    """A File task of task/list (docs/agent-protocol.md)."""
    return {
        "invoke_id": row["invoke_id"],
        "name": row["name"],
        "content": row["content"],
        "target_dir": row["target_dir"],
        "file_mode": row["file_mode"],
        "file_owner": row["file_owner"],
        "file_group": row["file_group"],
        "overwrite": bool(row["overwrite"]),
        "timeout": row["timeout"],
        "created": row["created"],
    }


def read_ids(data: dict[str, Any]) -> tuple[str, str]:
    invoke_id = field_str(data, "invoke_id", 64, required=True)
    if not _INVOKE_ID.match(invoke_id):
        raise bad("invoke_id must look like t-…")
    execution_id = field_str(data, "execution_id", 32) or "0"
    if not _EXECUTION_ID.match(execution_id):
        raise bad("execution_id is not valid")
    return invoke_id, execution_id


def task_not_found(invoke_id: str) -> AgentError:
    return AgentError("TaskNotFound", f"{invoke_id} is not a task of this instance", 404)


@dataclass(frozen=True)
class ParsedReport:
    """A report whose fields are checked, ready to apply in a transaction (alone, or with the
    other reports of a batch: server/agent_api/reports.py)."""

    # (conn, instance id, the request's nonce) -> answer; a report may record the nonce
    apply: Callable[[Conn, str, NonceClaim], Awaitable[dict[str, Any]]]
    durable: bool  # a terminal report is committed durably; a running chunk need not be


def error_answer(error: AgentError) -> dict[str, Any]:
    """A refusal as one report's answer (apply_one raises it again for a report of its own)."""
    return {"ok": False, "status": error.status, "code": error.code, "message": error.message}


def not_found_answer(invoke_id: str) -> dict[str, Any]:
    return error_answer(task_not_found(invoke_id))


async def apply_reports(
    state: ServerState, who: AgentIdentity, reports: list[ParsedReport]
) -> list[dict[str, Any]]:
    """Apply reports in order in one transaction that uses the request's nonce; each gets its
    answer (an unknown task is an answer, not an error that would undo the others).

    The nonce is recorded by a report's own write where the store can take it along
    (PostgreSQL: the first terminal report for a known task, one round trip fewer,
    docs/scale.md Ingestion), else after the reports; a replay then raises, and the
    transaction with everything it wrote is undone."""

    async def _tx(conn: Conn) -> list[dict[str, Any]]:
        claim = access.NonceClaim(who.nonce_key, who.nonce_expires)
        answers = [await report.apply(conn, who.instance_id, claim) for report in reports]
        await state.use_agent_nonce(conn, who, claim)
        return answers

    durable = any(report.durable for report in reports)
    return await state.store.write(_tx, durable=durable, key=who.instance_id)


async def apply_one(state: ServerState, who: AgentIdentity, report: ParsedReport) -> dict[str, Any]:
    """One report of its own request: its answer, or its refusal as an AgentError."""
    [answer] = await apply_reports(state, who, [report])
    if answer.get("ok") is False:
        raise AgentError(answer["code"], answer["message"], answer["status"])
    return answer


def parse_running(state: ServerState, data: dict[str, Any]) -> ParsedReport:
    """A chunk of running output; marks the execution Running."""
    invoke_id, execution_id = read_ids(data)
    start = field_int(data, "start_time") or model.now_ms()
    offset = field_int(data, "offset")
    if offset is None or offset < 0:
        raise bad("offset must be a non-negative integer")
    quota = state.settings.output_quota
    offset, output = clip_chunk(offset, field_b64(data, "output"), quota)

    async def apply(conn: Conn, instance_id: str, _nonce: NonceClaim) -> dict[str, Any]:
        known = await tasks.record_running(
            conn, instance_id, invoke_id, execution_id, start, offset, output
        )
        if not known:
            return not_found_answer(invoke_id)
        await trim_chunks(conn, instance_id, invoke_id, execution_id, quota)
        return {"ok": True}

    return ParsedReport(apply, durable=False)


def parse_terminal(state: ServerState, kind: str, data: dict[str, Any]) -> ParsedReport:
    """A terminal report; the first one for an execution wins, repeats are acknowledged."""
    invoke_id, execution_id = read_ids(data)
    exit_code = field_int(data, "exit_code", None, nullable=True)
    start_ms = field_int(data, "start_time", None, nullable=True)
    finish_ms = field_int(data, "end_time", None, nullable=True) or model.now_ms()
    output, dropped = clip_report(
        field_b64(data, "output"),
        max(field_int(data, "dropped") or 0, 0),
        state.settings.output_quota,
    )
    report = {
        "exit_code": exit_code,
        "start_ms": start_ms or None,
        "finish_ms": finish_ms,
        "output": output,
        "dropped": dropped,
        "error_code": field_str(data, "error_code", 128),
        "error_info": field_str(data, "error_message", 4096),
    }
    if kind == "error" and not report["error_code"]:
        report["error_code"] = "ExecutionException"
    status = terminal_status(kind, exit_code, start_ms)

    async def apply(conn: Conn, instance_id: str, nonce: NonceClaim) -> dict[str, Any]:
        duplicate = await tasks.record_terminal(
            conn, instance_id, invoke_id, execution_id, status, report, nonce
        )
        if duplicate is None:
            return not_found_answer(invoke_id)
        return {"ok": True, "duplicate": duplicate}

    return ParsedReport(apply, durable=True)


async def task_running(state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
    return await apply_one(state, who, parse_running(state, parse_json(body)))


async def task_report(
    state: ServerState, who: AgentIdentity, kind: str, body: bytes
) -> dict[str, Any]:
    return await apply_one(state, who, parse_terminal(state, kind, parse_json(body)))


async def heartbeat(state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
    """Mark the instance online; tell it when to beat next."""
    data = parse_json(body)
    version = field_str(data, "agent_version", 64)
    for name in ("uptime", "boot_time", "running"):
        field_int(data, name)
    interval = state.heartbeat_interval
    beat = state.batch.claim_beat(
        who.nonce_key, who.nonce_expires, who.instance_id, interval, version
    )
    if not await beat:
        raise unauthorized("nonce already used", "ReplayedRequest")
    return {"next_interval": interval}


async def update_check(state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
    """update_now is true once after KickAgentUpdate for this instance; upgrade_config is the
    AgentUpgradeConfig of the instance's region (null when the region has none)."""
    data = parse_json(body)
    for name in ("agent_version", "os", "arch", "channel"):
        field_str(data, name, 64)

    async def _tx(conn: Conn) -> Any:
        await state.use_agent_nonce(conn, who)
        update_now, version = await instances.take_update(conn, who.instance_id)
        where = await settings.instance_region(conn, who.instance_id, DEFAULT_REGION)
        config = None
        if where is not None:
            config = await settings.get_setting(conn, *where, settings.AGENT_UPGRADE)
        return update_now, version, config

    update_now, version, config = await state.store.write(_tx, key=who.instance_id)
    return {
        "update_now": update_now,
        "version": version if update_now else "",
        "upgrade_config": config,
    }


async def server_keys(state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
    """The control plane's keys, oldest first, each endorsed by the one before (rotation)."""
    parse_json(body)

    async def _tx(conn: Conn) -> Any:
        await state.use_agent_nonce(conn, who)

    await state.store.write(_tx, durable=False, key=who.instance_id)
    chain = await state.signing.chain()
    return {"keys": [{"public_key": k, "endorsement": e} for k, e in chain]}


async def open_session(state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
    """POST /luban/api/v1/session: a new session for an Ed25519-signed request carrying an
    ephemeral X25519 key; answers the server's ephemeral key, the ticket and its end."""
    if who.session is not None:
        raise AgentError(
            "InvalidSignature", "a session is opened with the instance's key, not in a session", 401
        )
    data = parse_json(body)
    try:
        agent_raw = load_exchange_key(field_str(data, "x25519", 64, required=True))
    except ValueError as exc:
        raise bad(f"x25519: {exc}") from exc
    key = await state.signing.current()
    if not state.tickets.handshake_allowed(f"{who.instance_id}\n{who.public_key}"):
        raise AgentError(
            "Throttling", f"one new session per {HANDSHAKE_SPACING:.0f} s: use the last one", 429
        )

    def exchange() -> tuple[str, SessionKeys]:
        own = X25519PrivateKey.generate()
        server_raw = own.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return exchange_public(own), derive_keys(
            own, agent_raw, who.instance_id, agent_raw, server_raw
        )

    try:
        server_b64, keys = await state.crypto.call(exchange)
    except ValueError as exc:  # a key of small order: no shared secret
        raise bad("x25519 is not a usable key") from exc

    async def _tx(conn: Conn) -> None:
        await state.use_agent_nonce(conn, who)

    await state.store.write(_tx, durable=False, key=who.instance_id)
    expires = int(time.time()) + SESSION_LIFETIME
    ticket = state.tickets.seal(key, who.instance_id, who.public_key, keys, expires)
    return {"x25519": server_b64, "ticket": ticket, "expires": expires}
