"""The control plane's Ed25519 signing keys, shared by every replica through the database.

One key is active (the newest); each later key carries an endorsement by the one before it, so an
agent that pinned an old key follows a rotation (docs/agent-protocol.md, Server key).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, select

from common.protocol import raw_public_b64, rotation_string
from server import model
from server.store.conn import Conn

metadata = MetaData()

server_keys = Table(
    "server_keys",
    metadata,
    Column("serial", Integer, primary_key=True),  # 1, 2, … in rotation order
    Column("public_key", String(64), nullable=False, unique=True),  # base64 raw
    Column("private_pem", Text, nullable=False),  # PKCS8 PEM, unencrypted (the DB is trusted)
    Column("endorsement", String(128), nullable=False, default=""),  # by the previous key
    Column("created_ms", BigInteger, nullable=False),
)


@dataclass(frozen=True)
class ServerKey:
    """One control-plane key with its place in the rotation chain."""

    serial: int
    private_key: Ed25519PrivateKey
    public_b64: str
    endorsement: str


async def create_table(conn: Conn) -> None:
    """Migration step: the server_keys table."""
    await conn.run_sync(metadata.create_all)


def _pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def load_private_pem(pem: str | bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM; ValueError for anything else."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the control-plane key must be an Ed25519 private key")
    return key


def _key_of(row: object) -> ServerKey:
    serial, public, pem, endorsement = row[0], row[1], row[2], row[3]  # type: ignore[index]
    return ServerKey(int(serial), load_private_pem(pem), str(public), str(endorsement or ""))


_COLUMNS = (
    server_keys.c.serial,
    server_keys.c.public_key,
    server_keys.c.private_pem,
    server_keys.c.endorsement,
)


async def active_key(conn: Conn) -> ServerKey | None:
    """The newest key, or None before `assist-server migrate` created one."""
    stmt = select(*_COLUMNS).order_by(server_keys.c.serial.desc()).limit(1)
    row = (await conn.execute(stmt)).first()
    return _key_of(row) if row else None


async def key_chain(conn: Conn) -> list[tuple[str, str]]:
    """Every public key, oldest first, with its endorsement by the one before."""
    stmt = select(server_keys.c.public_key, server_keys.c.endorsement).order_by(
        server_keys.c.serial
    )
    return [(str(r[0]), str(r[1] or "")) for r in (await conn.execute(stmt)).all()]


async def add_key(conn: Conn, key: Ed25519PrivateKey) -> ServerKey:
    """Make `key` the active key, endorsed by the current one (if any)."""
    current = await active_key(conn)
    public = raw_public_b64(key)
    endorsement = ""
    serial = 1
    if current is not None:
        if current.public_b64 == public:
            return current
        signature = current.private_key.sign(rotation_string(current.public_b64, public))
        endorsement = base64.b64encode(signature).decode("ascii")
        serial = current.serial + 1
    await conn.execute(
        server_keys.insert().values(
            serial=serial,
            public_key=public,
            private_pem=_pem(key),
            endorsement=endorsement,
            created_ms=model.now_ms(),
        )
    )
    return ServerKey(serial, key, public, endorsement)


async def ensure_key(conn: Conn) -> ServerKey:
    """The active key, created on first use (migrate, or first start of an old database)."""
    current = await active_key(conn)
    if current is not None:
        return current
    return await add_key(conn, Ed25519PrivateKey.generate())
