"""The cost of signed answers (issue 16): fan-out and ingestion before and after, same run.

    .venv/bin/python bench/bench_signing.py

"Before" is the server of BENCH_BASELINE_REF (default `main`, unpacked with `git archive`), "after"
this tree; both on SQLite, started side by side, measured in alternating rounds with the load
generator of bench/bench_server.py. Figures (ratio = after / before):

- signing_fanout_p99_sqlite: p99 seconds until each of BENCH_AGENTS (default 300) long-polling
  agents holds its task, median over BENCH_ROUNDS (default 3) rounds.
- signing_ingest_rate_sqlite: signed terminal reports stored per second, median of rounds.
- signing_agent_verify_us: what one agent spends checking a signed 20-task list
  (common.protocol.check_response) against parsing the same answer (json.loads), median µs.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import requests  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bench.bench_server import Fleet, burst, fanout_round, percentile  # noqa: E402
from bench.figures import emit  # noqa: E402
from common import protocol  # noqa: E402
from devkit.server import free_port  # noqa: E402

AGENTS = int(os.environ.get("BENCH_AGENTS", "300"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BASELINE_REF = os.environ.get("BENCH_BASELINE_REF", "main")


def unpack_baseline(into: Path) -> Path:
    """The baseline tree (`git archive BASELINE_REF`)."""
    tree = into / "baseline"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", BASELINE_REF], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def server_cli(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    argv = [sys.executable, "-m", "server.cli", *args]
    return subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=True)


def start_server(tree: Path, data: Path) -> tuple[subprocess.Popen[bytes], int, str, str]:
    """`assist-server serve` of `tree` on SQLite; (process, port, key id, secret)."""
    data.mkdir()
    db = f"sqlite:///{data / 'assist.db'}"
    key = json.loads(server_cli(tree, "accesskey", "create", "--db", db, "--json").stdout)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tree))
    argv = [sys.executable, "-m", "server.cli", "serve", "--listen", f"127.0.0.1:{port}"]
    argv += ["--db", db, "--max-invoke-instances", str(max(AGENTS, 100))]
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc, port, key["AccessKeyId"], key["AccessKeySecret"]
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{tree}: server did not start")


async def ingest_round(fleet: Fleet, command_id: str) -> float:
    """Reports per second for one invocation to every agent."""
    body = await fleet.call("InvokeCommand", CommandId=command_id, **fleet.instance_params())
    reports = fleet.finish_reports(body["InvokeId"], "MTIzCg==")
    elapsed = await burst(fleet.port, reports, 32)
    return len(reports) / elapsed


async def setup(port: int, key_id: str, secret: str) -> tuple[Fleet, str]:
    fleet = Fleet(port, key_id, secret)
    await fleet.register(AGENTS)
    created = await fleet.call(
        "CreateCommand", Name="bench", Type="RunShellScript", CommandContent="ZWNobyAxMjM="
    )
    return fleet, created["CommandId"]


async def measure(ports: dict[str, tuple[int, str, str]]) -> dict[str, dict[str, list[float]]]:
    fleets = {name: await setup(*args) for name, args in ports.items()}
    figures: dict[str, dict[str, list[float]]] = {n: {"p99": [], "ingest": []} for n in ports}
    # fan-out rounds first: an ingestion round leaves task events queued for every agent
    for round_no in range(ROUNDS):
        order = list(fleets.items())
        if round_no % 2:
            order.reverse()
        for name, (fleet, command_id) in order:  # alternate before / after
            figures[name]["p99"].append(percentile(await fanout_round(fleet, command_id), 0.99))
            print(f"fan-out round {round_no + 1} {name} done", file=sys.stderr, flush=True)
    for round_no in range(ROUNDS):
        order = list(fleets.items())
        if round_no % 2:  # who goes first alternates: the first one's upkeep must not bias
            order.reverse()
        for name, (fleet, command_id) in order:
            figures[name]["ingest"].append(await ingest_round(fleet, command_id))
            print(f"ingest round {round_no + 1} {name} done", file=sys.stderr, flush=True)
    return figures


def agent_verify_cost() -> tuple[list[float], list[float]]:
    """µs to check a signed 20-task list vs µs to parse it, several runs of 2000 each."""
    key = Ed25519PrivateKey.generate()
    trusted = {protocol.raw_public_b64(key): key.public_key()}
    task = {"invoke_id": "t-x", "content": "ZWNobyAxMjMK" * 100, "timeout": 60}
    body = json.dumps({"run": [task] * 20, "stop": []}).encode()
    headers = protocol.sign_response(key, "mi-1", "n" * 32, "/p", 200, body)
    ours, base = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(2000):
            protocol.check_response(trusted, "mi-1", "n" * 32, "/p", 200, body, headers)
        ours.append((time.perf_counter() - t0) / 2000 * 1e6)
        t0 = time.perf_counter()
        for _ in range(2000):
            json.loads(body)
        base.append((time.perf_counter() - t0) / 2000 * 1e6)
    return ours, base


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="bench-signing-"))
    baseline = unpack_baseline(tmp)
    procs = []
    try:
        old = start_server(baseline, tmp / "before")
        new = start_server(REPO_ROOT, tmp / "after")
        procs = [old[0], new[0]]
        figures = asyncio.run(measure({"before": old[1:], "after": new[1:]}))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    before, after = figures["before"], figures["after"]
    for figure, unit in (("p99", "s"), ("ingest", "reports/s")):
        emit(
            "signing_fanout_p99_sqlite" if figure == "p99" else "signing_ingest_rate_sqlite",
            statistics.median(after[figure]),
            statistics.median(before[figure]),
            unit,
            "ratio ~ 1 (signing must not show)",
            agents=AGENTS,
            runs=after[figure],
            baseline_runs=before[figure],
            baseline_ref=BASELINE_REF,
        )
    ours, base = agent_verify_cost()
    emit(
        "signing_agent_verify_us",
        statistics.median(ours),
        statistics.median(base),
        "us",
        "per task list, next to parsing it",
        runs=ours,
        baseline_runs=base,
    )


if __name__ == "__main__":
    main()
