"""Helpers of the control-plane tests, importable by name (`from serverkit import Api`).

They live outside conftest.py: `from conftest import …` resolves to whichever conftest module
was imported first when several test folders run in one pytest session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

# The PostgreSQL the tests use (trust auth, user postgres, a database "test"): `make postgres`.
from devkit.postgres import PG_ADMIN_DSN, PG_HOST, pg_admin  # noqa: E402, F401
from devkit.server import REPO_ROOT, FakeAgent, ServerHandle, launch_server


class Api:
    """Signed calls as one account, through the official SDK's request classes."""

    def __init__(self, server: ServerHandle, key_id: str, secret: str) -> None:
        from aliyunsdkcore.client import AcsClient

        self.server = server
        self.key_id = key_id
        self.secret = secret
        self.client = AcsClient(key_id, secret, "cn-hangzhou", timeout=30)

    def sdk(self, request: Any) -> dict[str, Any]:
        """Send an aliyunsdkecs request object to the local server; parsed JSON back."""
        request.set_endpoint(self.server.url.split("://", 1)[1])
        request.set_protocol_type("http")
        return dict(json.loads(self.client.do_action_with_exception(request)))

    def call(self, action: str, **params: Any) -> tuple[int, dict[str, Any]]:
        """A raw signed request (our client-side signer): (HTTP status, body). A Format=XML
        answer must be well-formed XML; its top-level elements come back as a dict."""
        response = self.server.call(action, self.key_id, self.secret, **params)
        return response.status_code, parse_body(response)

    def ok(self, action: str, **params: Any) -> dict[str, Any]:
        status, body = self.call(action, **params)
        assert status == 200, body
        return body

    def error(self, action: str, **params: Any) -> tuple[int, str]:
        status, body = self.call(action, **params)
        assert status >= 400, body
        assert set(body) >= {"RequestId", "Code", "Message"}
        return status, body["Code"]

    def create_command(self, content: str = "ZWNobyAxMjM=", name: str = "t", **params: Any) -> str:
        """CreateCommand of a shell script (base64 `content`); its CommandId."""
        body = self.ok(
            "CreateCommand", Name=name, Type="RunShellScript", CommandContent=content, **params
        )
        return str(body["CommandId"])

    def invoke(self, command_id: str, instance_id: str, **params: Any) -> str:
        """InvokeCommand on one instance; its InvokeId."""
        body = self.ok(
            "InvokeCommand", CommandId=command_id, **{"InstanceId.1": instance_id}, **params
        )
        return str(body["InvokeId"])

    def agent(self, instance_id: str = "", os_type: str = "linux", region: str = "") -> FakeAgent:
        """Register a fake agent with a fresh activation of this account (in `region`, else
        cn-hangzhou: the instance belongs to it)."""
        act_id, code = self.server.create_activation(
            self.key_id, self.secret, count=5, region=region
        )
        return FakeAgent.register(
            self.server.url, act_id, code, instance_id=instance_id, os_type=os_type
        )


def tea_client(server: ServerHandle, key_id: str, secret: str) -> Any:
    """The official Tea SDK client, default settings but for the loopback endpoint."""
    from alibabacloud_ecs20140526.client import Client
    from alibabacloud_tea_openapi.utils_models import Config

    host = server.url.split("://", 1)[1]
    config = Config(access_key_id=key_id, access_key_secret=secret, endpoint=host, protocol="http")
    config.region_id = "cn-hangzhou"
    return Client(config)


def parse_xml(raw: bytes) -> ET.Element:
    """A response body that must be well-formed XML 1.0 (expat refuses anything else)."""
    try:
        return ET.fromstring(raw)
    except ET.ParseError as exc:
        raise AssertionError(f"not well-formed XML ({exc}): {raw[:300]!r}") from exc


def parse_body(response: Any) -> dict[str, Any]:
    """JSON as a dict; XML (checked well-formed) as {tag: text} of the root's children."""
    if response.headers.get("content-type", "").startswith("application/xml"):
        root = parse_xml(response.content)
        return {child.tag: child.text or "" for child in root} | {"_root": root.tag}
    return dict(response.json())


def pg_reachable() -> str:
    """'' if PostgreSQL answers on 127.0.0.1:5432, else why not."""
    try:
        pg_admin("SELECT 1")
    except Exception as exc:  # any failure means: skip with the reason
        return (
            f"PostgreSQL not reachable on {PG_HOST} ({type(exc).__name__}: {exc}): "
            "run `make postgres` (installs and starts Debian's postgresql)"
        )
    return ""


def db_path(server: ServerHandle) -> Path:
    return Path(server.db_url[len("sqlite:///") :])


def run_sql(server: ServerHandle, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a server's database (SQLite or PostgreSQL); '?' placeholders."""
    if server.db_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(db_path(server)) as db:
            return [tuple(r) for r in db.execute(sql, args).fetchall()]
    import asyncpg

    parts = sql.split("?")
    pg_sql = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
    pg_sql = pg_sql.replace("= 0", "= false").replace("= 1 ", "= true ")

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(server.db_url)
        try:
            return [tuple(r) for r in await conn.fetch(pg_sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


@contextlib.contextmanager
def replica_servers(
    mktemp: Callable[[str], Path], pg_url: str, name: str, count: int = 2
) -> Iterator[list[ServerHandle]]:
    """`count` servers started at the same time on one PostgreSQL database (so migrations race),
    stopped on exit; any that failed to start fails the set-up."""
    handles: list[ServerHandle] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start(i: int) -> None:
        try:
            handle = launch_server(mktemp(f"{name}{i}"), db_url=pg_url)
        except BaseException as exc:
            errors.append(exc)
        else:
            with lock:
                handles.append(handle)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert len(handles) == count
        yield handles
    finally:
        for handle in handles:
            handle.stop()


def migrate_sqlite(db: Path) -> dict[str, int]:
    """`assist-server migrate --json` on a SQLite file: {"before": N, "after": M}."""
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "migrate", "--db", f"sqlite:///{db}", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))
