"""assist-server: serve the control plane, migrate its database, manage AccessKeys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from common.cli import add_common_options, print_json, run_cli
from common.errors import ConfigError, NotFoundError, UsageError
from common.listen import add_limit_options, announce, limits_from_args, parse_listen
from server.output_limits import DEFAULT_QUOTA

T = TypeVar("T")

SETTINGS_ENV = "ASSIST_SERVER_SETTINGS"
H11_MAX_EVENT = 512 * 1024  # bytes: the SDK puts every parameter (18 KB content) in the URL


# One example per command and subcommand, shown at the end of its --help (docs/cli.md).
EXAMPLES = {
    "": "assist-server serve --listen 0.0.0.0:8443 --db sqlite:///var/lib/assist/assist.db",
    "serve": "assist-server serve --listen 0.0.0.0:8443 --db postgresql://assist@db/assist --tls-cert c.pem --tls-key k.pem",
    "migrate": "assist-server migrate --db sqlite:///var/lib/assist/assist.db",
    "accesskey": "assist-server accesskey create --db sqlite:///var/lib/assist/assist.db --account ops",
    "accesskey create": "assist-server accesskey create --db sqlite:///var/lib/assist/assist.db --account ops --json",
    "accesskey list": "assist-server accesskey list --db sqlite:///var/lib/assist/assist.db",
    "accesskey disable": "assist-server accesskey disable LTAI0123456789abcdef --db sqlite:///var/lib/assist/assist.db",
    "accesskey enable": "assist-server accesskey enable LTAI0123456789abcdef --db sqlite:///var/lib/assist/assist.db",
    "key": "assist-server key show --db sqlite:///var/lib/assist/assist.db",
    "key show": "assist-server key show --db sqlite:///var/lib/assist/assist.db",
    "key rotate": "assist-server key rotate --db sqlite:///var/lib/assist/assist.db",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assist-server", description="The Cloud Assistant control plane"
    )
    add_common_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    db_help = "sqlite:///PATH or postgresql://… (default: a SQLite file under the data dir)"

    serve = sub.add_parser("serve", help="run the HTTP API")
    add_common_options(serve)
    serve.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT")
    serve.add_argument("--db", default=os.environ.get("ASSIST_SERVER_DB"), help=db_help)
    serve.add_argument("--tls-cert", help="PEM certificate (enables HTTPS)")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port, e.g. one per core",
    )
    serve.add_argument(
        "--max-invoke-instances",
        type=int,
        default=100,
        help="InstanceId.N allowed per InvokeCommand (the real API allows 100)",
    )
    serve.add_argument("--heartbeat-interval", type=int, default=60, help="seconds")
    serve.add_argument(
        "--offline-grace",
        type=int,
        default=300,
        help="seconds past a one-shot task's timeout before an offline instance's task fails",
    )
    serve.add_argument(
        "--history-days",
        type=int,
        default=30,
        help="days the finished runs of timed invocations are kept (IncludeHistory)",
    )
    serve.add_argument(
        "--history-keep",
        type=int,
        default=1000,
        help="finished runs kept at most per instance and timed invocation",
    )
    serve.add_argument(
        "--output-quota",
        type=int,
        default=DEFAULT_QUOTA,
        help="bytes of task output kept per execution, the tail; the agent's quota "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--advertise-url",
        default="",
        help="this replica's URL as agents reach it; replicas on one database list each other"
        " to agents, which fail over between them (docs/scale.md)",
    )
    serve.add_argument(  # tests only: seconds between the replica's announcements
        "--advertise-interval", type=float, default=10.0, help=argparse.SUPPRESS
    )
    add_limit_options(serve, idle=75.0)
    serve.add_argument(  # tests only: how often the background upkeep runs
        "--chores-interval", type=float, default=60.0, help=argparse.SUPPRESS
    )
    serve.add_argument(  # tests only: seconds between batched agent writes (a wider race window)
        "--batch-interval", type=float, default=None, help=argparse.SUPPRESS
    )

    key = sub.add_parser("key", help="the control plane's response-signing key")
    add_common_options(key)
    key_sub = key.add_subparsers(dest="key_command", required=True)
    show = key_sub.add_parser("show", help="print the public key agents pin")
    rotate = key_sub.add_parser(
        "rotate", help="make a new key (or --key-file) active, endorsed by the old one"
    )
    rotate.add_argument("--key-file", help="import this PEM Ed25519 private key instead")
    for cmd in (show, rotate):
        add_common_options(cmd)
        cmd.add_argument("--db", default=os.environ.get("ASSIST_SERVER_DB"), help=db_help)
        cmd.add_argument("--json", action="store_true")

    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    add_common_options(migrate)
    migrate.add_argument("--db", default=os.environ.get("ASSIST_SERVER_DB"), help=db_help)
    migrate.add_argument("--json", action="store_true")

    accesskey = sub.add_parser("accesskey", help="manage AccessKeys")
    add_common_options(accesskey)
    ak_sub = accesskey.add_subparsers(dest="ak_command", required=True)
    create = ak_sub.add_parser("create", help="create an AccessKey for an account")
    add_common_options(create)
    create.add_argument("--db", default=os.environ.get("ASSIST_SERVER_DB"), help=db_help)
    create.add_argument("--account", default="default", help="the account the key acts for")
    create.add_argument("--json", action="store_true")
    listing = ak_sub.add_parser("list", help="list AccessKeys (never their secrets)")
    add_common_options(listing)
    listing.add_argument("--db", default=os.environ.get("ASSIST_SERVER_DB"), help=db_help)
    listing.add_argument("--json", action="store_true")
    for verb, text in (("disable", "refuse requests signed with"), ("enable", "accept again")):
        toggle = ak_sub.add_parser(verb, help=f"{text} an AccessKey")
        add_common_options(toggle)
        toggle.add_argument("access_key_id", metavar="ACCESS_KEY_ID", help="the AccessKeyId")
        toggle.add_argument("--db", default=os.environ.get("ASSIST_SERVER_DB"), help=db_help)
        toggle.add_argument("--json", action="store_true")
    return parser


def settings_from_args(args: argparse.Namespace) -> Any:
    from server.app import Settings

    if args.max_invoke_instances < 1 or args.heartbeat_interval < 1:
        raise UsageError("--max-invoke-instances and --heartbeat-interval must be positive")
    if args.offline_grace < 0 or not args.chores_interval > 0:
        raise UsageError("--offline-grace must be 0 or more, --chores-interval positive")
    if args.history_days < 1 or args.history_keep < 1 or args.output_quota < 1:
        raise UsageError("--history-days, --history-keep and --output-quota must be positive")
    advertise = args.advertise_url.strip().rstrip("/")
    if advertise and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", advertise):
        raise UsageError(
            f"bad --advertise-url {args.advertise_url!r}",
            hint="use the URL agents reach this replica at, e.g. https://10.0.0.5:8443",
        )
    if not args.advertise_interval > 0:
        raise UsageError("--advertise-interval must be positive")
    return Settings(
        advertise_url=advertise,
        advertise_interval=args.advertise_interval,
        db_url=args.db,
        max_invoke_instances=args.max_invoke_instances,
        heartbeat_interval=args.heartbeat_interval,
        offline_grace=args.offline_grace,
        history_days=args.history_days,
        history_keep=args.history_keep,
        chores_interval=args.chores_interval,
        batch_interval=Settings.batch_interval
        if args.batch_interval is None
        else args.batch_interval,
        output_quota=args.output_quota,
    )


def app_from_env() -> Any:
    """Application factory for multi-worker uvicorn (settings passed through the env)."""
    from server.app import Settings, create_app

    return create_app(Settings(**json.loads(os.environ[SETTINGS_ENV])))


def run_db(db_url: str, job: Coroutine[Any, Any, T]) -> T:
    """Run one database command; an unreachable or unopenable database is one clear line."""
    from sqlalchemy.exc import DBAPIError

    try:
        return asyncio.run(job)
    except (OSError, DBAPIError) as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        raise ConfigError(
            f"cannot open the database {redact_db_url(db_url)}: {reason}",
            hint="check --db (sqlite:///PATH or postgresql://USER@HOST/DB) and that it is reachable",
        ) from exc


def redact_db_url(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url or "")


def cmd_serve(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from common.connguard import capacity_note, serve_asgi
    from common.listen import check_port_free
    from server.store.db import normalize_db_url

    host, port = parse_listen(args.listen)
    db_url = normalize_db_url(args.db)  # refuse a bad URL before binding
    if args.workers < 1:
        raise UsageError("--workers must be 1 or more")
    if args.workers > 1 and make_url(db_url).database in (None, "", ":memory:"):
        raise UsageError("--workers above 1 needs a database file or PostgreSQL, not :memory:")
    check_port_free(host, port)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path and not Path(path).is_file():
            raise ConfigError(f"TLS file not found: {path}")
    if not args.tls_cert and not is_loopback(host):
        print(
            f"assist-server: warning: serving plain http on {host}: tasks are signed; contents"
            " are visible on the wire (use --tls-cert/--tls-key)",
            file=sys.stderr,
        )
    settings = settings_from_args(args)
    limits = dataclasses.replace(limits_from_args(args), max_header_bytes=H11_MAX_EVENT)
    migrate_database(args.db)  # an unopenable database is one line now, not a hung startup
    print(f"assist-server: {capacity_note(limits.max_connections)}", file=sys.stderr)
    debug = bool(getattr(args, "debug", False))
    options: dict[str, Any] = {
        "log_level": "debug" if debug else "warning",
        "access_log": debug,
        "ssl_certfile": args.tls_cert,
        "ssl_keyfile": args.tls_key,
        "backlog": 4096,
    }
    if args.workers == 1:
        from server.app import create_app

        return serve_asgi(create_app(settings), host, port, limits, announce, 1, **options)
    with contextlib.ExitStack() as cleanup:
        if not db_url.startswith("postgresql"):
            # SQLite workers tell each other of kicks and key forgets over a local bus
            # (server/bus.py) in a directory only this server's user can reach
            short = len(tempfile.gettempdir()) <= 60  # room for the sockets' names
            bus_dir = tempfile.mkdtemp(prefix="assist-server-bus-", dir=None if short else "/tmp")
            cleanup.callback(shutil.rmtree, bus_dir, True)
            settings = dataclasses.replace(settings, bus_dir=bus_dir)
        # a worker whose supervisor was killed (-9) stops instead of serving on, orphaned
        settings = dataclasses.replace(settings, supervisor_pid=os.getpid())
        os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
        app = "server.cli:app_from_env"
        return serve_asgi(app, host, port, limits, announce, args.workers, **options)


def migrate_database(db: str | None) -> tuple[int, int]:
    """Open the database and bring its schema up to date; ConfigError if it cannot be opened."""
    from server.store import Store

    check_sqlite_path(db)

    async def run() -> tuple[int, int]:
        store = Store(db)
        try:
            return await store.migrate()
        finally:
            await store.close()

    return run_db(db or "", run())


def check_sqlite_path(db: str | None) -> None:
    """Refuse a SQLite path that cannot hold a database, naming the path and the fix."""
    from server.store.db import normalize_db_url

    url = normalize_db_url(db)
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix) or url[len(prefix) :] in ("", ":memory:"):
        return
    path = Path(url[len(prefix) :])
    hint = "pass --db sqlite:///PATH with PATH a file in a writable directory"
    if path.is_dir():
        raise ConfigError(f"the database path {path} is a directory", hint=hint)
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"cannot create {path}: {existing} is not a directory", hint=hint)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write the database under {existing}: the directory is not writable "
            "(or on a read-only filesystem); SQLite needs it for the file and its journal",
            hint=hint,
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"the database {path} is not readable and writable", hint=hint)


def cmd_migrate(args: argparse.Namespace) -> int:
    before, after = migrate_database(args.db)
    if args.json:
        print_json({"before": before, "after": after})
    else:
        print(f"schema version {before} -> {after}")
    return 0


def is_loopback(host: str) -> bool:
    """Whether the listen host is a loopback name or address."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_key(args: argparse.Namespace) -> int:
    """Show or rotate the control plane's signing key (docs/agent-protocol.md, Server key)."""
    from server.store import Store, serverkeys

    new_key = None
    if args.key_command == "rotate" and args.key_file:
        try:
            new_key = serverkeys.load_private_pem(Path(args.key_file).read_bytes())
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot import {args.key_file}: {exc}",
                hint="give a PEM (PKCS8) Ed25519 private key, e.g. from `openssl genpkey"
                " -algorithm ed25519`",
            ) from exc
    migrate_database(args.db)

    async def run() -> list[tuple[str, str]]:
        store = Store(args.db)
        try:
            if args.key_command == "rotate":
                from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

                key = new_key or Ed25519PrivateKey.generate()
                await store.write(lambda conn: serverkeys.add_key(conn, key))
            return await store.read(serverkeys.key_chain)
        finally:
            await store.close()

    chain = run_db(args.db or "", run())
    if args.json:
        print_json(
            {
                "PublicKey": chain[-1][0],
                "Keys": [{"PublicKey": k, "Endorsement": e} for k, e in chain],
            }
        )
    else:
        print(chain[-1][0])
    return 0


def cmd_accesskey_create(args: argparse.Namespace) -> int:
    from server.store import Store
    from server.store import queries as q

    account = args.account.strip()
    if not account or len(account) > 128:
        raise UsageError("--account must be 1..128 characters")

    check_sqlite_path(args.db)

    async def run() -> tuple[str, str]:
        store = Store(args.db)
        try:
            await store.migrate()
            return await store.write(lambda conn: q.create_access_key(conn, account))
        finally:
            await store.close()

    key_id, secret = run_db(args.db, run())
    if args.json:
        print_json({"AccessKeyId": key_id, "AccessKeySecret": secret, "Account": account})
    else:
        print(f"AccessKeyId:     {key_id}\nAccessKeySecret: {secret}\nAccount:         {account}")
    return 0


def require_database(db: str | None) -> None:
    """Refuse a SQLite file that does not exist (a mistyped --db would create an empty one)."""
    from server.store.db import normalize_db_url

    url = normalize_db_url(db)
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and not Path(url[len(prefix) :]).is_file():
        raise ConfigError(
            f"no database at {url[len(prefix) :]}",
            hint="check --db, or create it with assist-server migrate / accesskey create",
        )


def cmd_accesskey_list(args: argparse.Namespace) -> int:
    from server.model import iso_from_ms
    from server.store import Store
    from server.store import queries as q

    require_database(args.db)

    async def run() -> list[dict[str, Any]]:
        store = Store(args.db)
        try:
            await store.migrate()
            return await store.read(q.list_access_keys)
        finally:
            await store.close()

    keys = [
        {
            "AccessKeyId": row["access_key_id"],
            "Account": row["account"],
            "Created": iso_from_ms(row["created_ms"]),
            "Enabled": bool(row["enabled"]),
        }
        for row in run_db(args.db, run())
    ]
    if args.json:
        print_json(keys)
        return 0
    print(f"{'AccessKeyId':<26} {'Account':<20} {'Created':<21} Enabled")
    for key in keys:
        enabled = "yes" if key["Enabled"] else "no"
        print(f"{key['AccessKeyId']:<26} {key['Account']:<20} {key['Created']:<21} {enabled}")
    return 0


def cmd_accesskey_toggle(args: argparse.Namespace) -> int:
    from server.store import Store
    from server.store import queries as q

    require_database(args.db)
    key_id = args.access_key_id.strip()
    enabled = args.ak_command == "enable"

    async def run() -> bool:
        store = Store(args.db)
        try:
            await store.migrate()
            return await store.write(lambda conn: q.set_access_key_enabled(conn, key_id, enabled))
        finally:
            await store.close()

    if not run_db(args.db, run()):
        raise NotFoundError(
            f"no AccessKey {key_id!r}", hint="see the ids with: assist-server accesskey list"
        )
    if args.json:
        print_json({"AccessKeyId": key_id, "Enabled": enabled})
    else:
        print(f"{key_id} {'enabled' if enabled else 'disabled'}")
    return 0


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "migrate":
        return cmd_migrate(args)
    if args.command == "key":
        return cmd_key(args)
    if args.ak_command == "list":
        return cmd_accesskey_list(args)
    if args.ak_command in ("enable", "disable"):
        return cmd_accesskey_toggle(args)
    return cmd_accesskey_create(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("assist-server", build_parser(), dispatch, argv, examples=EXAMPLES)


if __name__ == "__main__":
    sys.exit(main(None))
