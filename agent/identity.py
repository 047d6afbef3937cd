"""The agent's identity: its instance id and Ed25519 key, and request signing per the protocol."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.servertrust import ServerTrust, load_server_trust
from common.atomic import atomic_write_bytes, atomic_write_json
from common.errors import LocalStateError
from common.protocol import canonical_string as canonical_string  # re-exported
from common.protocol import sign_request

KEY_FILE = "agent.key"
IDENTITY_FILE = "identity.json"


class NotRegisteredError(LocalStateError):
    """This machine has no agent identity yet."""

    reference = "not-registered"


@dataclass
class Identity:
    """Who this agent is to the server."""

    instance_id: str
    private_key: Any  # cryptography Ed25519PrivateKey
    server: str = ""  # the server it registered with
    trust: ServerTrust | None = None  # the control-plane key(s) answers must be signed by
    servers: list[str] = field(default_factory=list)  # every server URL given at registration

    def public_key_b64(self) -> str:
        """The raw 32-byte public key, base64, as the register endpoint wants it."""
        from cryptography.hazmat.primitives import serialization

        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode("ascii")


def generate_key() -> Any:
    """A fresh Ed25519 private key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def public_key_b64(private_key: Any) -> str:
    """Raw public key of `private_key`, base64."""
    return Identity("", private_key).public_key_b64()


def save_identity(state_dir: Path, identity: Identity) -> None:
    """Write the key (0600) and the instance id under state/, atomically."""
    from cryptography.hazmat.primitives import serialization

    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(state_dir / KEY_FILE, pem, mode=0o600)
    record = {
        "instance_id": identity.instance_id,
        "server": identity.server,
        "servers": identity.servers or [identity.server],
    }
    atomic_write_json(state_dir / IDENTITY_FILE, record, mode=0o600)


def load_identity(state_dir: Path) -> Identity:
    """Read the identity written by `register`; NotRegisteredError if there is none."""
    from cryptography.hazmat.primitives import serialization

    try:
        record = json.loads((state_dir / IDENTITY_FILE).read_text(encoding="utf-8"))
        pem = (state_dir / KEY_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise NotRegisteredError(
            f"this agent is not registered (no {exc.filename})",
            hint="run `assist-agent register --server URL --activation-id ID --activation-code CODE`",
        ) from exc
    except (OSError, ValueError) as exc:
        raise LocalStateError(f"cannot read the agent identity in {state_dir}: {exc}") from exc
    mode = os.stat(state_dir / KEY_FILE).st_mode & 0o777
    if os.name != "nt" and mode & 0o077:
        raise LocalStateError(
            f"{state_dir / KEY_FILE} is readable by others (mode {mode:o})",
            hint=f"chmod 600 {state_dir / KEY_FILE}",
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise LocalStateError(f"{state_dir / KEY_FILE} is not a valid private key") from exc
    trust = load_server_trust(state_dir)
    server = str(record.get("server", ""))
    servers = record.get("servers")
    listed = [str(url) for url in servers if url] if isinstance(servers, list) else []
    return Identity(str(record["instance_id"]), key, server, trust, listed or [server])


def sign_headers(
    identity: Identity,
    method: str,
    path: str,
    query: str,
    body: bytes,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four X-Assist-* headers for one request (common/protocol.py)."""
    timestamp = None if now is None else int(now)
    return sign_request(
        identity.private_key, identity.instance_id, method, path, query, body, timestamp, nonce
    )
