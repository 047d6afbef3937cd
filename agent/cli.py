"""assist-agent: register this machine, run the daemon, show its status."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from agent.private import make_private_dir, restrict_umask
from common.cli import (
    ACTIVATION_CODE_ENV,
    add_common_options,
    print_json,
    read_activation_code,
    run_cli,
)
from common.config import REGION_ENV, SERVER_ENV, Config, load_config
from common.errors import ConfigError, LocalStateError, LockedError, UsageError
from common.layout import Layout

if TYPE_CHECKING:
    from agent.identity import Identity

log = logging.getLogger(__name__)

PROG = "assist-agent"
# The region rule of the original agent; used only when nothing else names the server.
SERVER_TEMPLATE = "https://{region}.axt.aliyun.com"
LOCK_FILE = "agent.lock"
REGISTRATION_POLL = 1.0  # seconds between looks for the identity of a later `register`


# One example per command and subcommand, shown at the end of its --help (docs/cli.md).
EXAMPLES = {
    "": "assist-agent status --json",
    "register": "ALIYUN_ASSIST_ACTIVATION_CODE=CODE assist-agent register --server https://assist.example:8443 --activation-id ID",
    "run": "assist-agent run --prefix /usr/local/share/aliyun-assist",
    "status": "assist-agent status --json",
    "trust-server-key": 'assist-agent trust-server-key "$(assist-server key show)"',
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of assist-agent (docs/cli.md)."""
    parser = argparse.ArgumentParser(prog=PROG, description="The Aliyun Assist agent daemon")
    sub = parser.add_subparsers(dest="command", required=True)

    reg = sub.add_parser("register", help="join a server with an activation id and code")
    reg.add_argument(
        "--server",
        required=True,
        action="append",
        help="server base URL, e.g. https://host:8080; repeat it (or A,B) for several replicas",
    )
    reg.add_argument("--activation-id", required=True, help="from `assist ecs CreateActivation`")
    reg.add_argument(
        "--activation-code",
        help=f"the activation's code; '-' reads it from stdin (default: ${ACTIVATION_CODE_ENV}); "
        "on the command line it shows in `ps`",
    )
    reg.add_argument("--instance-name", default="", help="name shown to operators")
    reg.add_argument("--instance-id", default="", help="register under this i-… id")
    reg.add_argument(
        "--prefix", help="install prefix (default: $ALIYUN_ASSIST_PREFIX or the default)"
    )
    reg.add_argument("--config", help="config file (default <prefix>/config/assist.toml)")
    reg.add_argument("--force", action="store_true", help="replace an existing registration")
    reg.add_argument(
        "--server-key",
        default="",
        help="pin this control-plane key (from `assist-server key show`) instead of taking the"
        " one the server proves with the activation code",
    )
    reg.add_argument(
        "--ca-file", default="", help="PEM CA an https server must chain to (a private CA)"
    )
    reg.add_argument("--json", action="store_true")
    add_common_options(reg)

    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument(
        "--server",
        action="append",
        help="server base URL, repeatable or A,B (default: config, env, registration)",
    )
    run.add_argument("--prefix", help="install prefix (default: /usr/local/share/aliyun-assist)")
    run.add_argument("--config", help="assist.toml (default: PREFIX/config/assist.toml)")
    add_common_options(run)

    pin = sub.add_parser(
        "trust-server-key", help="pin the control-plane key of an already registered agent"
    )
    pin.add_argument("server_key", metavar="KEY", help="from `assist-server key show`")
    pin.add_argument("--prefix", help="install prefix (default: /usr/local/share/aliyun-assist)")
    pin.add_argument("--config", help="assist.toml (default: PREFIX/config/assist.toml)")
    add_common_options(pin)

    status = sub.add_parser("status", help="show whether the agent runs and is connected")
    status.add_argument("--prefix", help="install prefix (default: /usr/local/share/aliyun-assist)")
    status.add_argument("--config", help="assist.toml (default: PREFIX/config/assist.toml)")
    status.add_argument("--json", action="store_true")
    add_common_options(status)
    return parser


def load(args: argparse.Namespace) -> Config:
    """The config for this command's --config / --prefix."""
    return load_config(getattr(args, "config", None), getattr(args, "prefix", None))


def read_region(config: Config, env: dict[str, str]) -> str:
    """Region: env, then config, then the cached state/region-id (if valid)."""
    region = env.get(REGION_ENV, "") or config.mirror.region
    if not region:
        from common.mirrors import read_cached_region  # requests: only when needed

        region = read_cached_region(config.layout.region_file)
    return region


def resolve_server(
    cli_server: str | list[str] | None,
    config: Config,
    registered: str | list[str],
    env: dict[str, str],
) -> list[str]:
    """--server, [agent] server, $ALIYUN_ASSIST_SERVER_HOST, the registration's, the region rule.

    Each may name several replicas (repeated --server, or a comma list)."""
    from agent.replicas import parse_servers

    for candidate in (cli_server, config.agent.server, env.get(SERVER_ENV, ""), registered):
        urls = parse_servers(candidate or [])
        if urls:
            return urls
    region = read_region(config, env)
    if region:
        return [SERVER_TEMPLATE.format(region=region)]
    raise ConfigError(
        "cannot tell which server to use",
        hint=f"pass --server, set [agent] server in the config, or set {SERVER_ENV}",
    )


def cmd_register(args: argparse.Namespace) -> int:
    """Exchange the activation for an instance id and keep the keys under state/."""
    from agent.client import AgentClient, ServerUnavailableError, warn_plain_http
    from agent.identity import (
        Identity,
        NotRegisteredError,
        generate_key,
        load_identity,
        save_identity,
    )
    from agent.replicas import parse_servers
    from agent.servertrust import ServerTrust, parse_server_key, save_server_trust
    from common.version import agent_version

    restrict_umask()
    config = load(args)
    try:
        existing = load_identity(config.layout.state_dir)
    except NotRegisteredError:
        existing = None
    if existing is not None and not args.force:
        raise UsageError(
            f"already registered as {existing.instance_id}",
            hint="pass --force to register again (the old identity is replaced)",
        )
    code = read_activation_code(args.activation_code, os.environ)
    pinned = parse_server_key(args.server_key) if args.server_key else ""
    key = generate_key()
    servers = parse_servers(args.server)
    public = Identity("", key).public_key_b64()
    for server in servers:  # the first replica that answers registers this machine
        client = AgentClient(server, None, ca_file=args.ca_file or config.agent.ca_file)
        warn_plain_http(server)
        try:
            instance_id, server_key = client.register(
                args.activation_id,
                code,
                public,
                instance_name=args.instance_name,
                instance_id=args.instance_id,
                agent_version=agent_version(),
                server_key=pinned,
            )
            break
        except ServerUnavailableError as exc:
            if server == servers[-1]:
                raise
            log.warning("%s; trying the next server", exc)
    source = "operator" if pinned else "registration"
    save_server_trust(config.layout.state_dir, ServerTrust([server_key], source))
    save_identity(config.layout.state_dir, Identity(instance_id, key, server, servers=servers))
    if args.json:
        print_json({"instance_id": instance_id, "server": server, "servers": servers})
    else:
        print(instance_id)
    return 0


def cmd_trust_server_key(args: argparse.Namespace) -> int:
    """Pin the control-plane key given out of band (the upgrade path without first use)."""
    from agent.identity import load_identity
    from agent.servertrust import ServerTrust, parse_server_key, save_server_trust

    restrict_umask()
    config = load(args)
    key = parse_server_key(args.server_key)
    load_identity(config.layout.state_dir)  # registered first
    save_server_trust(config.layout.state_dir, ServerTrust([key], "operator"))
    print(f"pinned control-plane key {key}")
    return 0


def acquire_lock(state_dir: Path) -> IO[Any]:
    """Hold state/agent.lock for the life of the daemon; LockedError if another agent runs."""
    make_private_dir(state_dir)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    handle = os.fdopen(fd, "a+")
    try:
        if os.name == "nt":  # pragma: no cover - Windows only
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise LockedError(
            f"another agent already runs with state in {state_dir}",
            hint="stop it first, or use another --prefix",
        ) from exc
    return handle


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT; unregistered, wait for `register` first."""
    from agent.client import warn_plain_http
    from agent.daemon import Agent, AgentOptions
    from agent.updates import recover_update

    task_umask = restrict_umask()
    config = load(args)
    if recover_update(config.prefix) == "rolled_back":
        relaunch_current(config.prefix)
    lock = acquire_lock(config.layout.state_dir)
    stopping = threading.Event()
    agent: Agent | None = None

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stopping.set()
        if agent is not None:
            agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        identity = wait_for_registration(config.layout, stopping)
        if identity is None:
            return 0
        servers = resolve_server(args.server, config, identity.servers, dict(os.environ))
        for server in servers:
            warn_plain_http(server)
        options = AgentOptions(
            server=servers, identity=identity, task_umask=task_umask, ca_file=config.agent.ca_file
        )
        agent = Agent(config, options)
        if stopping.is_set():
            return 0
        log.info("agent %s starting against %s", identity.instance_id, ", ".join(servers))
        agent.run()
    finally:
        lock.close()
    return 0


def wait_for_registration(
    layout: Layout, stopping: threading.Event, poll: float = REGISTRATION_POLL
) -> Identity | None:
    """The identity once `assist-agent register` wrote it; None if asked to stop meanwhile.

    Until then the agent is up and healthy, "waiting for registration" in health.json (an agent
    installed by an image build is registered later, or never). Polling is one stat a second.
    """
    from agent.identity import IDENTITY_FILE, NotRegisteredError, load_identity
    from common.health import WAITING_FOR_REGISTRATION, HealthRecord, write_health

    started = time.time()
    announced = False
    while not stopping.is_set():
        try:
            return load_identity(layout.state_dir)
        except NotRegisteredError:
            if not announced:
                log.warning(
                    "not registered yet: waiting for `assist-agent register` (watching %s)",
                    layout.state_dir / IDENTITY_FILE,
                )
                waiting = HealthRecord.of_this_process(started, False, WAITING_FOR_REGISTRATION)
                write_health(layout.health_file, waiting)
                announced = True
        stopping.wait(poll)
    return None


def relaunch_current(prefix: Path) -> None:
    """After crash recovery rolled `current` back, become the agent of that version."""
    launcher = Layout(prefix).launcher("assist-agent")
    if os.name != "nt" and launcher.exists():
        log.warning("re-executing %s after a rollback", launcher)
        os.execv(str(launcher), [str(launcher), "run", "--prefix", str(prefix)])


def cmd_status(args: argparse.Namespace) -> int:
    """Print the agent's health; exit 0 when it runs, 3 when it does not."""
    from agent.identity import NotRegisteredError, load_identity
    from agent.outbox import count_pending
    from common.health import WAITING_FOR_REGISTRATION, read_health
    from common.platform import pid_alive

    config = load(args)
    state = config.layout.state_dir
    if state.is_dir() and not os.access(state, os.R_OK | os.X_OK):
        raise LocalStateError(
            f"cannot read {state}: it is private to the agent's user",
            hint="run `assist-agent status` as that user (usually root, e.g. with sudo)",
        )
    health = read_health(config.layout.health_file)
    try:
        identity: Any = load_identity(config.layout.state_dir)
    except NotRegisteredError:
        identity = None
    pending = count_pending(config.layout.state_dir)
    live = health if health is not None and pid_alive(health.pid) else None
    running = live is not None
    waiting = live is not None and identity is None and live.waiting == WAITING_FOR_REGISTRATION
    connected = live is not None and live.connected
    report = {
        "registered": identity is not None,
        "instance_id": identity.instance_id if identity else "",
        "server": identity.server if identity else "",
        "server_key": identity.trust.keys[-1] if identity and identity.trust else "",
        "running": running,
        "state": describe_state(running, identity is not None, connected),
        "waiting_for_registration": waiting,
        "connected": connected,
        "version": health.version if health else "",
        "pid": live.pid if live else 0,
        "started": health.started if health else 0,
        "pending_reports": pending,
    }
    if args.json:
        print_json(report)
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0 if running else 3


def describe_state(running: bool, registered: bool, connected: bool) -> str:
    """One phrase for `status`: not running, waiting for registration, connected, …"""
    if not running:
        return "not running"
    if not registered:
        return "waiting for registration"
    return "connected" if connected else "running, server unreachable"


def dispatch(args: argparse.Namespace) -> int:
    """Run the chosen sub-command."""
    commands = {
        "register": cmd_register,
        "run": cmd_run,
        "status": cmd_status,
        "trust-server-key": cmd_trust_server_key,
    }
    return commands[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `assist-agent`."""
    return run_cli(PROG, build_parser(), dispatch, argv, examples=EXAMPLES)


if __name__ == "__main__":
    sys.exit(main(None))
