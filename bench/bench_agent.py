"""Agent benchmarks: per-task overhead, idle footprint, and 200 agents under a burst.

    .venv/bin/python bench/bench_agent.py

Prints one JSON line per figure (medians of several runs; each baseline measured in the same run):

- agent_task_overhead: the agent's whole path for one task (ledger claim, script file, own
  session, output pump, terminal report queued durably) against a bare
  subprocess.run(['sh', '-c', 'echo 123']). Target: under 20 ms added at the median.
- agent_idle_rss / agent_idle_cpu: a real `assist-agent run` connected to a real assist-server,
  idle for BENCH_IDLE_SECONDS (default 60), against a bare sleeping Python interpreter.
- agents_burst_latency: BENCH_AGENTS agents (default 200, hosted BENCH_AGENTS_PER_HOST per
  process) on one server take a burst of BENCH_INVOCATIONS (default 1000) per-instance
  invocations, sent as InvokeCommand calls of BENCH_BATCH instances each (default 10; 1 = one
  call per invocation, slower to send); every result must arrive; end-to-end latency (invocation accepted -> result stored) against the
  latency of single invocations to an unloaded agent. The distribution is printed too.

Knobs (env): BENCH_TASK_RUNS, BENCH_IDLE_SECONDS, BENCH_AGENTS, BENCH_AGENTS_PER_HOST,
BENCH_INVOCATIONS, BENCH_BATCH.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.figures import emit  # noqa: E402
from devkit.agent import register_args, serve_until_sigterm  # noqa: E402

IDLE_CONFIG = '[agent]\npoll_timeout = 25.0\n[update]\nschedule = ""\n'


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    return env


# -- per-task overhead -------------------------------------------------------------------------


def bench_task_overhead(runs: int) -> None:
    """Median seconds per `echo 123` through the agent's execution path vs a bare subprocess."""
    from agent.daemon import Agent, AgentOptions
    from agent.identity import Identity, generate_key
    from agent.runner import Task
    from common.config import Config

    with tempfile.TemporaryDirectory() as tmp:
        config = Config(prefix=Path(tmp))
        identity = Identity("mi-bench", generate_key())
        agent = Agent(config, AgentOptions(server="http://127.0.0.1:9", identity=identity))
        content = b"echo 123\n"
        ours, bare = [], []
        for i in range(runs + 3):
            task = Task(invoke_id=f"t-bench{i}", content=content)
            start = time.perf_counter()
            agent._execute(task, "0")
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            subprocess.run(["sh", "-c", "echo 123"], capture_output=True, check=True)
            bare_s = time.perf_counter() - start
            if i >= 3:  # warm-up runs are not counted
                ours.append(ours_s)
                bare.append(bare_s)
        queued = agent.store.pending_count()
        agent.store.close()
    assert queued == runs + 3, "every run must leave exactly one queued report"
    med_ours, med_bare = statistics.median(ours), statistics.median(bare)
    emit(
        "agent_task_overhead",
        med_ours,
        med_bare,
        "s",
        "added < 0.020 s at the median",
        target_met=med_ours - med_bare < 0.020,
        added=med_ours - med_bare,
        runs=runs,
    )


# -- idle footprint ------------------------------------------------------------------------------


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def start_agent_process(
    server: Any, key_id: str, secret: str, prefix: Path
) -> subprocess.Popen[bytes]:
    """Register and start a real `assist-agent run`; wait until it is connected."""
    act_id, code = server.create_activation(key_id, secret, count=5)
    (prefix / "config").mkdir(parents=True, exist_ok=True)
    (prefix / "config" / "assist.toml").write_text(IDLE_CONFIG)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            *register_args(server.url, (act_id, code), prefix),
        ],
        check=True,
        capture_output=True,
        env=child_env(),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--prefix", str(prefix)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
    )
    health = prefix / "state" / "health.json"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if json.loads(health.read_text()).get("connected"):
                return proc
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("agent did not connect")


def bench_idle(server: Any, key_id: str, secret: str, seconds: int, tmp: Path) -> None:
    """RSS and CPU of an idle connected agent vs a bare sleeping interpreter."""
    agent = start_agent_process(server, key_id, secret, tmp / "idle-agent")
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100000)"])
    try:
        time.sleep(3)  # settle: start-up work is not idle
        cpu0_a, cpu0_b = proc_cpu_seconds(agent.pid), proc_cpu_seconds(bare.pid)
        samples_a, samples_b = [], []
        deadline = time.time() + seconds
        while time.time() < deadline:
            samples_a.append(proc_rss_kb(agent.pid))
            samples_b.append(proc_rss_kb(bare.pid))
            time.sleep(min(5, max(0.1, deadline - time.time())))
        cpu_a = proc_cpu_seconds(agent.pid) - cpu0_a
        cpu_b = proc_cpu_seconds(bare.pid) - cpu0_b
    finally:
        for proc in (agent, bare):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    emit(
        "agent_idle_rss",
        statistics.median(samples_a) / 1024,
        statistics.median(samples_b) / 1024,
        "MiB",
        "as low as Python allows (baseline: bare interpreter)",
        seconds=seconds,
    )
    emit(
        "agent_idle_cpu",
        cpu_a / seconds,
        cpu_b / seconds,
        "cpu-s/s",
        "near zero (< 0.01 cpu-s/s)",
        target_met=cpu_a / seconds < 0.01,
        seconds=seconds,
        cpu_seconds=cpu_a,
    )


# -- many agents, one server, a burst ------------------------------------------------------------


def host_agents(server_url: str, activation: str, code: str, count: int, base: Path) -> None:
    """Run `count` in-process agents (a host process of the fleet bench) until SIGTERM."""
    from agent.client import AgentClient
    from agent.daemon import Agent, AgentOptions
    from agent.identity import Identity, generate_key, save_identity
    from agent.servertrust import ServerTrust, save_server_trust
    from common.config import Config

    agents = []
    for i in range(count):
        config = Config(prefix=base / f"agent-{i}")
        config.update.schedule = ""
        config.agent.heartbeat = 60.0
        key = generate_key()
        instance, server_key = AgentClient(server_url, None).register(
            activation, code, Identity("", key).public_key_b64(), instance_name=f"bench-{i}"
        )
        trust = ServerTrust([server_key], "registration", config.layout.state_dir)
        save_server_trust(config.layout.state_dir, trust)
        identity = Identity(instance, key, server_url, trust)
        save_identity(config.layout.state_dir, identity)
        agent = Agent(config, AgentOptions(server=server_url, identity=identity))
        threading.Thread(target=agent.run, daemon=True).start()
        agents.append(agent)
    serve_until_sigterm(agents)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latencies(db_path: str, invoke_ids: list[str]) -> tuple[list[float], int]:
    """(end-to-end seconds of finished results, how many finished with Success)."""
    with sqlite3.connect(db_path) as db:
        marks = ",".join("?" * len(invoke_ids))
        rows = db.execute(
            f"SELECT ii.status, ii.updated_ms - inv.created_ms FROM invocation_instances ii "
            f"JOIN invocations inv ON inv.invoke_id = ii.invoke_id "
            f"WHERE ii.invoke_id IN ({marks}) AND ii.status IN ('Success', 'Failed', 'Timeout', "
            f"'Invalid', 'Stopped', 'Terminated', 'Error')",
            invoke_ids,
        ).fetchall()
    return [r[1] / 1000 for r in rows], sum(1 for r in rows if r[0] == "Success")


def invoke_many(
    sdk_factory: Any, command_id: str, targets: list[str], workers: int = 8, batch: int = 1
) -> list[str]:
    """InvokeCommand for every target (`batch` instances per call), from several threads."""
    from aliyunsdkecs.request.v20140526 import InvokeCommandRequest

    local = threading.local()

    def one(instances: list[str]) -> str:
        if not hasattr(local, "sdk"):
            local.sdk = sdk_factory()
        req = InvokeCommandRequest.InvokeCommandRequest()
        req.set_CommandId(command_id)
        req.set_InstanceIds(instances)
        req.set_Timed(False)
        return str(local.sdk(req)["InvokeId"])

    groups = [targets[i : i + batch] for i in range(0, len(targets), batch)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, groups))


def bench_fleet(server: Any, key_id: str, secret: str, tmp: Path) -> None:
    """N agents, a burst of M invocations: all arrive; latency distribution vs unloaded."""
    from aliyunsdkcore.client import AcsClient
    from aliyunsdkecs.request.v20140526 import CreateActivationRequest, CreateCommandRequest

    n_agents = env_int("BENCH_AGENTS", 200)
    per_host = env_int("BENCH_AGENTS_PER_HOST", 50)
    n_invocations = env_int("BENCH_INVOCATIONS", 1000)
    batch = env_int("BENCH_BATCH", 10)  # instances per InvokeCommand call
    endpoint = server.url.split("://", 1)[1]

    def sdk_factory() -> Any:
        client = AcsClient(key_id, secret, "cn-hangzhou", timeout=60)

        def call(request: Any) -> dict[str, Any]:
            request.set_endpoint(endpoint)
            request.set_protocol_type("http")
            return dict(json.loads(client.do_action_with_exception(request)))

        return call

    sdk = sdk_factory()
    act = CreateActivationRequest.CreateActivationRequest()
    act.set_InstanceCount(min(1000, n_agents + 10))
    activation = sdk(act)
    hosts, instances = [], []
    for h in range((n_agents + per_host - 1) // per_host):
        count = min(per_host, n_agents - h * per_host)
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--host",
                server.url,
                activation["ActivationId"],
                activation["ActivationCode"],
                str(count),
                str(tmp / f"host-{h}"),
            ],
            stdout=subprocess.PIPE,
            env=child_env(),
            text=True,
        )
        hosts.append(proc)
    try:
        for proc in hosts:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == "READY":
                    break
                instances.append(line.strip())
        assert len(instances) == n_agents, f"only {len(instances)} agents registered"
        time.sleep(2)  # let every agent open its long-poll
        create = CreateCommandRequest.CreateCommandRequest()
        create.set_CommandContent(base64.b64encode(b"echo 123").decode())
        create.set_Type("RunShellScript")
        create.set_Name("bench")
        command_id = sdk(create)["CommandId"]
        db_path = server.db_url[len("sqlite:///") :]

        # baseline: single invocations to one unloaded agent, one at a time
        base_ids = []
        for _ in range(10):
            [invoke] = invoke_many(sdk_factory, command_id, [instances[0]], workers=1)
            base_ids.append(invoke)
            deadline = time.time() + 30
            while len(latencies(db_path, [invoke])[0]) < 1 and time.time() < deadline:
                time.sleep(0.02)
        base_lat, _ = latencies(db_path, base_ids)

        # each group of `batch` consecutive targets holds distinct instances
        targets = [instances[i % n_agents] for i in range(n_invocations)]
        started = time.time()
        invoke_ids = invoke_many(sdk_factory, command_id, targets, batch=batch)
        sent = time.time() - started
        deadline = time.time() + 300
        while time.time() < deadline:
            done, ok = latencies(db_path, invoke_ids)
            if len(done) >= n_invocations:
                break
            time.sleep(0.5)
        done, ok = latencies(db_path, invoke_ids)
        total = time.time() - started
    finally:
        for proc in hosts:
            proc.send_signal(signal.SIGTERM)
        for proc in hosts:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    distribution = {f"p{p}": percentile(done, p) for p in (50, 90, 99)} if done else {}
    if done:
        distribution["max"] = max(done)
    emit(
        "agents_burst_latency",
        statistics.median(done) if done else float("inf"),
        statistics.median(base_lat) if base_lat else 0.0,
        "s",
        "every result arrives; latency distribution printed",
        target_met=len(done) == n_invocations,
        agents=n_agents,
        invocations=n_invocations,
        instances_per_call=batch,
        arrived=len(done),
        succeeded=ok,
        burst_send_seconds=round(sent, 2),
        all_done_seconds=round(total, 2),
        distribution=distribution,
    )
    assert len(done) == n_invocations and ok == n_invocations, "results were lost"


def main() -> None:
    """Run every agent benchmark and print one JSON line per figure."""
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        url, activation, code, count, base = sys.argv[2:7]
        host_agents(url, activation, code, int(count), Path(base))
        return
    bench_task_overhead(env_int("BENCH_TASK_RUNS", 30))
    from devkit.server import launch_server

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        server = launch_server(tmp / "server", extra_args=["--max-invoke-instances", "1000"])
        try:
            key_id, secret = server.create_access_key(f"bench-{uuid.uuid4().hex[:6]}")
            bench_idle(server, key_id, secret, env_int("BENCH_IDLE_SECONDS", 60), tmp)
            bench_fleet(server, key_id, secret, tmp)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
