"""Descriptor limits (issue 17.6): a real `assist-server serve` under a low open-files limit
(`prlimit --nofile`) and more connections than it can hold. It says at start how many agents
its limit allows, answers 503 with Retry-After (never 500) when full, keeps answering /healthz,
and serves again once the connections leave."""

from __future__ import annotations

import errno
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devkit.server import FakeAgent, ServerHandle, launch_server
from server.overload import is_exhaustion

NOFILE = 120  # the server's open-files limit: a bound of 60 connections
POLLS = 70  # parked long-polls: more than the bound


def statuses_of(responses: list[requests.Response | BaseException]) -> list[int]:
    return [r.status_code if isinstance(r, requests.Response) else -1 for r in responses]


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[ServerHandle]:
    handle = launch_server(tmp_path, nofile=NOFILE)
    yield handle
    handle.stop()


def test_full_server_answers_503_with_retry_after_and_healthz_keeps_answering(
    small_server: ServerHandle,
) -> None:
    server = small_server
    assert "open files 120 (the hard limit): room for about 60 agents" in server.log()
    key_id, secret = server.create_access_key("limits")
    activation = server.create_activation(key_id, secret, count=POLLS)
    agents = [FakeAgent.register(server.url, *activation) for _ in range(POLLS)]
    answers: list[requests.Response | BaseException] = []

    def poll(agent: FakeAgent) -> None:
        try:
            answers.append(agent.request("GET", "/luban/api/v1/notify", query="timeout=8"))
        except requests.RequestException as exc:
            answers.append(exc)

    threads = [threading.Thread(target=poll, args=(a,)) for a in agents]
    for thread in threads:
        thread.start()
    time.sleep(3)  # every poll has connected: 60 parked, the rest answered 503 (or cut early)
    busy = server.call("DescribeInvocations", key_id, secret, Format="JSON")
    assert busy.status_code == 503, busy.text
    assert busy.headers["Retry-After"] == "5"
    health = requests.get(server.url + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["waiting"] == 60, health.text
    for thread in threads:
        thread.join(30)
    codes = statuses_of(answers)
    refused = [r for r in answers if isinstance(r, requests.Response) and r.status_code == 503]
    # a connection still sending its headers may be closed to make room (-1): never a 500
    assert codes.count(200) == 60 and set(codes) <= {200, 503, -1}, codes
    assert refused, codes
    assert all(r.headers["Retry-After"] == "5" for r in refused)
    assert refused[0].json()["code"] == "ServiceUnavailable"
    # the polls left: served again
    assert server.call("DescribeInvocations", key_id, secret, Format="JSON").status_code == 200
    assert agents[-1].heartbeat()["next_interval"] == 60
    log = server.log()
    assert "Traceback" not in log and "unable to open database file" not in log
    assert server.process.poll() is None


def test_a_burst_of_connections_gets_no_500(small_server: ServerHandle) -> None:
    """Hundreds of connections at once while clients call the API: each answer is 200 or 503
    with Retry-After (running out of descriptors is being full, not an internal error)."""
    server = small_server
    key_id, secret = server.create_access_key("burst")
    agent = FakeAgent.register(server.url, *server.create_activation(key_id, secret))
    answers: list[requests.Response | BaseException] = []
    stop = time.monotonic() + 6

    def call() -> None:
        while time.monotonic() < stop:
            try:
                answers.append(server.call("DescribeInvocations", key_id, secret, Format="JSON"))
                mine = FakeAgent(server.url, agent.instance_id, agent.key)
                answers.append(mine.request("POST", "/luban/api/heart-beat", {"running": 0}))
            except requests.RequestException as exc:
                answers.append(exc)

    callers = [threading.Thread(target=call) for _ in range(6)]
    for thread in callers:
        thread.start()
    flood: list[socket.socket] = []
    while time.monotonic() < stop - 2:
        for _ in range(50):
            sock = socket.socket()
            sock.setblocking(False)
            if sock.connect_ex(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) in (
                0,
                errno.EINPROGRESS,
            ):
                flood.append(sock)
            else:
                sock.close()
        time.sleep(0.2)
    for thread in callers:
        thread.join(30)
    for sock in flood:
        sock.close()
    codes = statuses_of(answers)
    assert 500 not in codes, codes
    assert set(codes) <= {200, 503, -1}, codes
    assert codes.count(200) > 0
    for answer in answers:
        if isinstance(answer, requests.Response) and answer.status_code == 503:
            assert answer.headers.get("Retry-After") == "5"
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    assert "Traceback" not in server.log()


def test_running_out_of_descriptors_is_recognised(tmp_path: Path) -> None:
    """The errors a process out of descriptors really raises (made here in a child under
    `prlimit --nofile=20`) are exhaustion; other errors are not."""
    script = (
        "import os, sqlite3, sys\n"
        "held = []\n"
        "try:\n"
        "    while True: held.append(os.open(os.devnull, os.O_RDONLY))\n"
        "except OSError as exc: print('oserror', exc.errno)\n"
        f"try: sqlite3.connect({str(tmp_path / 'x.db')!r}).execute('create table t (x)')\n"
        "except sqlite3.OperationalError as exc: print('sqlite', exc)\n"
    )
    out = subprocess.run(
        ["prlimit", "--nofile=20:20", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.splitlines()
    assert out[0] == f"oserror {errno.EMFILE}"
    assert out[1] == "sqlite unable to open database file"
    assert is_exhaustion(OSError(errno.EMFILE, "Too many open files"))
    wrapped = RuntimeError("query failed")
    wrapped.__cause__ = sqlite3.OperationalError(out[1].removeprefix("sqlite "))
    assert is_exhaustion(wrapped)
    assert not is_exhaustion(sqlite3.OperationalError("no such table: t"))
    assert not is_exhaustion(ValueError("boom"))
