"""The control-plane key this agent trusts: pinned at registration, followed through rotations.

Stored in state/server-key.json (0600). Every answer the agent acts on must be signed by one of
these keys (common/protocol.py; docs/agent-protocol.md, Signed responses).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.atomic import atomic_write_json
from common.errors import LocalStateError, UsageError
from common.protocol import follow_rotations, public_key_from_raw

log = logging.getLogger(__name__)

SERVER_KEY_FILE = "server-key.json"
SOURCES = ("registration", "operator", "first-use")  # how the first key was learned


def parse_server_key(text: str) -> str:
    """A base64 raw Ed25519 public key, normalized; UsageError for anything else."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        public_key_from_raw(raw)
    except (binascii.Error, ValueError) as exc:
        raise UsageError(
            f"not a control-plane key: {text.strip()[:60]!r}",
            hint="copy it from `assist-server key show` (base64 of 32 bytes)",
        ) from exc
    return base64.b64encode(raw).decode("ascii")


@dataclass
class ServerTrust:
    """The pinned key (first) and the keys it endorsed since, newest last."""

    keys: list[str]
    source: str = "registration"
    state_dir: Path | None = None  # where to persist a followed rotation (None: memory only)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        """Base64 key -> key, for common.protocol.check_response."""
        with self._lock:
            keys = list(self.keys)
        return {k: public_key_from_raw(base64.b64decode(k)) for k in keys}

    def follow(self, chain: list[tuple[str, str]]) -> bool:
        """Trust the keys the newest trusted key endorsed in `chain`; True if any was new."""
        with self._lock:
            reached = follow_rotations(self.keys[-1], chain)
            added = [k for k in reached if k not in self.keys]
            if not added:
                return False
            self.keys.extend(added)
            keys = list(self.keys)
        log.warning("the control plane rotated its key; now trusting %s", added[-1])
        if self.state_dir is not None:
            save_server_trust(self.state_dir, ServerTrust(keys, self.source))
        return True


def save_server_trust(state_dir: Path, trust: ServerTrust) -> None:
    """Write state/server-key.json (0600), atomically."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {"keys": trust.keys, "source": trust.source}
    atomic_write_json(state_dir / SERVER_KEY_FILE, record, mode=0o600)


def load_server_trust(state_dir: Path) -> ServerTrust | None:
    """The trusted keys, or None for an agent registered before signed responses."""
    path = state_dir / SERVER_KEY_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        keys = [parse_server_key(str(k)) for k in record["keys"]]
        source = str(record.get("source") or "registration")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, UsageError) as exc:
        raise LocalStateError(
            f"{path} is damaged: {exc}",
            hint="pin the key again: assist-agent trust-server-key KEY (see assist-server key show)",
        ) from exc
    if not keys:
        raise LocalStateError(f"{path} lists no key", hint="assist-agent trust-server-key KEY")
    return ServerTrust(keys, source, state_dir)
