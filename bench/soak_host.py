"""One host process of the soak fleet: `count` in-process agents speaking the real agent protocol.

    python -m bench.soak_host SERVER_URL ACTIVATION_ID CODE COUNT BASE_DIR ANSWERS_LOG

The first start registers each agent and saves its identity under BASE_DIR/agent-N/state; a
restart (after the soak SIGKILLs the host) loads the saved identities, so every agent comes back
as the same instance with its ledger and outbox, like a real agent restarted by its service
manager. Each terminal report's acknowledgement is appended to ANSWERS_LOG (one JSON line,
written with os.write so it survives a SIGKILL) for the soak's duplicate count.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from devkit.agent import serve_until_sigterm  # noqa: E402

TERMINAL_KINDS = ("finish", "timeout", "error", "stopped", "invalid")


class AnswerLog:
    """Appends one line per acknowledged terminal report; safe across threads and SIGKILL."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        """One line in one write(2): lines from several threads never interleave."""
        os.write(self.fd, (json.dumps(record, sort_keys=True) + "\n").encode())


def logging_session_factory(answers: AnswerLog, trace: AnswerLog) -> Any:
    """A requests.Session class that records terminal-report answers, task lists and polls."""

    class LoggingSession(requests.Session):
        def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            started = time.time()
            try:
                response = super().request(method, url, *args, **kwargs)
            except requests.RequestException as exc:
                trace_call(trace, started, str(url), kwargs, None, type(exc).__name__)
                raise
            path = str(url).split("?", 1)[0]
            kind = path.rsplit("/", 1)[-1]
            if "/task/" in path and kind in TERMINAL_KINDS and response.status_code == 200:
                record_answer(answers, kind, kwargs, response)
            if kind in ("list", "notify"):
                trace_call(trace, started, path, kwargs, response, "")
            return response

    return LoggingSession


def trace_call(
    trace: AnswerLog,
    started: float,
    path: str,
    kwargs: dict[str, Any],
    response: requests.Response | None,
    error: str,
) -> None:
    """One line per task list / long-poll: when, who, and what the server answered."""
    headers = kwargs.get("headers") or {}
    record: dict[str, Any] = {
        "t0": round(started, 3),
        "t1": round(time.time(), 3),
        "instance": headers.get("X-Assist-Instance-Id", ""),
        "call": path.rsplit("/", 1)[-1],
        "status": response.status_code if response is not None else None,
        "error": error,
    }
    if response is not None and response.status_code == 200:
        with contextlib.suppress(ValueError):
            answer = response.json()
            record["events"] = [e.get("type") for e in answer.get("events") or []]
            record["run"] = [t.get("invoke_id") for t in answer.get("run") or []]
    trace.write(record)


def record_answer(
    answers: AnswerLog, kind: str, kwargs: dict[str, Any], response: requests.Response
) -> None:
    """Log (instance, invoke, execution, duplicate) of one acknowledged terminal report."""
    try:
        body = json.loads(kwargs.get("data") or b"{}")
        answer = response.json()
    except ValueError:
        return
    headers = kwargs.get("headers") or {}
    answers.write(
        {
            "instance": headers.get("X-Assist-Instance-Id", ""),
            "invoke": body.get("invoke_id", ""),
            "execution": body.get("execution_id", ""),
            "kind": kind,
            "duplicate": bool(answer.get("duplicate")),
        }
    )


def start_agent(
    server: str, activation: str, code: str, prefix: Path, answers: AnswerLog, trace: AnswerLog
) -> Any:
    """Load (or register and save) one agent's identity and start it in a thread."""
    from agent.client import AgentClient
    from agent.daemon import Agent, AgentOptions
    from agent.identity import IDENTITY_FILE, Identity, generate_key, load_identity, save_identity
    from agent.servertrust import ServerTrust, save_server_trust
    from common.config import Config

    config = Config(prefix=prefix)
    config.update.schedule = ""
    config.agent.heartbeat = 30.0
    if (config.layout.state_dir / IDENTITY_FILE).exists():
        identity = load_identity(config.layout.state_dir)
    else:
        key = generate_key()
        instance, server_key = AgentClient(server, None).register(
            activation, code, Identity("", key).public_key_b64(), instance_name=prefix.name
        )
        trust = ServerTrust([server_key], "registration", config.layout.state_dir)
        save_server_trust(config.layout.state_dir, trust)
        identity = Identity(instance, key, server, trust)
        save_identity(config.layout.state_dir, identity)
    options = AgentOptions(
        server=server, identity=identity, session_factory=logging_session_factory(answers, trace)
    )
    agent = Agent(config, options)
    threading.Thread(target=agent.run, daemon=True).start()
    return agent


def main(argv: list[str] | None = None) -> int:
    """Start the agents, print their instance ids then READY, run until SIGTERM."""
    server, activation, code, count, base, log_path = (argv or sys.argv[1:])[:6]
    answers = AnswerLog(Path(log_path))
    Path(base).mkdir(parents=True, exist_ok=True)
    trace = AnswerLog(Path(base) / "trace.jsonl")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the soak asks for stacks on a loss
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"
    )
    agents = []
    for i in range(int(count)):
        prefix = Path(base) / f"agent-{i}"
        agent = start_agent(server, activation, code, prefix, answers, trace)
        agents.append(agent)
    serve_until_sigterm(agents)
    return 0


if __name__ == "__main__":
    sys.exit(main())
