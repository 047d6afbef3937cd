"""`assist-server key show|rotate` and the plain-http warning of `serve` (issue 16)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import protocol
from devkit.server import REPO_ROOT, free_port
from server.cli import is_loopback


def server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_migrate_creates_one_key_that_show_prints(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    assert server_cli("migrate", "--db", db).returncode == 0
    shown = server_cli("key", "show", "--db", db)
    assert shown.returncode == 0, shown.stderr
    with sqlite3.connect(tmp_path / "a.db") as conn:
        rows = conn.execute("SELECT serial, public_key, endorsement FROM server_keys").fetchall()
    assert rows == [(1, shown.stdout.strip(), "")]
    again = server_cli("key", "show", "--db", db)
    assert again.stdout == shown.stdout  # shown, never regenerated


def test_rotate_imports_a_key_endorsed_by_the_old_one(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    old = server_cli("key", "show", "--db", db).stdout.strip()
    new_key = Ed25519PrivateKey.generate()
    pem = tmp_path / "new.pem"
    pem.write_bytes(
        new_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rotated = server_cli("key", "rotate", "--db", db, "--key-file", str(pem), "--json")
    assert rotated.returncode == 0, rotated.stderr
    answer = json.loads(rotated.stdout)
    new_b64 = protocol.raw_public_b64(new_key)
    assert answer["PublicKey"] == new_b64
    chain = [(k["PublicKey"], k["Endorsement"]) for k in answer["Keys"]]
    assert protocol.follow_rotations(old, chain) == [old, new_b64]
    assert server_cli("key", "show", "--db", db).stdout.strip() == new_b64


def test_rotate_refuses_a_key_file_that_is_not_ed25519(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    before = server_cli("key", "show", "--db", db).stdout
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    done = server_cli("key", "rotate", "--db", db, "--key-file", str(bad))
    assert done.returncode == 2
    assert "cannot import" in done.stderr and "Traceback" not in done.stderr
    assert server_cli("key", "show", "--db", db).stdout == before  # nothing changed


def test_serve_on_a_non_loopback_address_without_tls_warns(tmp_path: Path) -> None:
    # the database is a directory: serve stops before it ever listens, after the warning
    done = server_cli(
        "serve", "--listen", f"0.0.0.0:{free_port()}", "--db", f"sqlite:///{tmp_path}"
    )
    assert "tasks are signed; contents are visible on the wire" in done.stderr
    assert done.returncode != 0
    quiet = server_cli(
        "serve", "--listen", f"127.0.0.1:{free_port()}", "--db", f"sqlite:///{tmp_path}"
    )
    assert "visible on the wire" not in quiet.stderr


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("")
