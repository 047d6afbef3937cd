"""The agent's own runtime (docs/runtime.md) against today's launcher on the VM's python3.

    .venv/bin/python bench/bench_runtime.py

Builds aliyun-assist 1.0.0 twice in the same run: the release layout (versions/V/runtime, the
cached runtime build) and the --no-runtime layout (wheels in lib/, run by /usr/bin/python3), then
prints one JSON line per figure (medians of BENCH_RUNTIME_RUNS interleaved runs, default 5):

- runtime_payload_<fmt>: compressed artifact size (deb, rpm, tar.gz). Target: <= 40 MB.
- runtime_start_to_healthy: from exec of versions/V/bin/assist-agent run to state/health.json
  saying connected, against a real assist-server on loopback. Target: ratio <= 1.1.
- runtime_idle_rss: RSS of the connected, idle agent after BENCH_RUNTIME_IDLE seconds (default
  10). Target: <= 35 MiB.
- runtime_apply: `current/bin/assist-update apply` from 1.0.0 to 1.1.0 (TUF refresh from a
  loopback repository, download, checked unpack, swap, restart of the real agent, health) with
  settle 0, the updater itself running on each side's interpreter.

Needs the cached runtime (`make runtime`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.figures import emit, median_figure  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
IDLE_CONFIG = (
    '[agent]\npoll_timeout = 25.0\n[update]\nschedule = ""\n[mirror]\nregion = "cn-test"\n'
    'metadata_url = "http://127.0.0.1:9/latest/meta-data/region-id"\n'
)
MB = 1000 * 1000


def build(
    keys: Path, out: Path, *extra: str, version: str = "1.0.0", formats: str = "deb,rpm,tar.gz"
) -> dict[str, Path]:
    """assist-pkgbuild build of `version` for this arch; {format: path}."""
    proc = subprocess.run(
        [sys.executable, "-m", "pkgbuild.cli", "build", "--version", version, "--keys", str(keys),
         "--formats", formats, "--out", str(out), "--json", *extra],
        capture_output=True, text=True, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"build failed: {proc.stderr.strip()}")
    return {a["format"]: Path(a["path"]) for a in json.loads(proc.stdout)}


def install_tarball(tarball: Path, prefix: Path) -> Path:
    """Unpack versions/1.0.0 into prefix and point current at it."""
    prefix.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(prefix)], check=True)
    (prefix / "current").symlink_to("versions/1.0.0")
    (prefix / "config").mkdir()
    (prefix / "config" / "assist.toml").write_text(IDLE_CONFIG)
    return prefix / "current" / "bin" / "assist-agent"


def launcher_env(baseline: bool) -> dict[str, str]:
    """What a service manager gives the agent; the baseline names the VM's python3."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    env["ALIYUN_ASSIST_REGION"] = "bench-local"  # loopback only: no metadata service
    if baseline:  # also for the agent that the updater's process manager restarts
        env["ASSIST_PYTHON"] = env["ALIYUN_ASSIST_PYTHON"] = SYSTEM_PYTHON
    return env


def publish(keys: Path, repo: Path, artifacts: list[Path]) -> None:
    """A signed repository with these artifacts."""
    for args in (["init"], ["publish", *map(str, artifacts)]):
        subprocess.run(
            [sys.executable, "-m", "pkgbuild.cli", args[0], "--repo", str(repo), "--keys",
             str(keys), *args[1:]],
            check=True, capture_output=True, cwd=REPO_ROOT,
        )  # fmt: skip


def time_apply(tarball: Path, prefix: Path, server: object, baseline: bool, mirror: str,
               keys: Path) -> float:  # fmt: skip
    """Install 1.0.0, start it, then time its own assist-update apply to 1.1.0."""
    agent = install_tarball(tarball, prefix)
    register(agent, prefix, server, baseline)
    running = start_to_healthy(agent, prefix, baseline)
    (prefix / "state" / "agent.pid").write_text(f"{running.pid}\n")
    started = time.perf_counter()
    done = subprocess.run(
        [str(prefix / "current" / "bin" / "assist-update"), "apply", "--prefix", str(prefix),
         "--mirror", mirror, "--trust-root", str(keys / "root.json"), "--settle", "0",
         "--service", "process", "--version", "1.1.0"],
        env=launcher_env(baseline), capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    with contextlib.suppress(ProcessLookupError):
        stop(running)  # the updater stopped it already: this only reaps it
    from common.service import ProcessManager

    ProcessManager(prefix).stop()
    if done.returncode != 0 or os.readlink(prefix / "current") != "versions/1.1.0":
        raise SystemExit(f"apply failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return elapsed


def register(agent: Path, prefix: Path, server: object, baseline: bool) -> None:
    """assist-agent register through the payload's own launcher."""
    act_id, code = server.create_activation(*server.create_access_key("bench"))  # type: ignore[attr-defined]
    subprocess.run(
        [str(agent), "register", "--server", server.url, "--prefix", str(prefix),  # type: ignore[attr-defined]
         "--activation-id", act_id, "--activation-code", code],
        check=True, capture_output=True, env=launcher_env(baseline),
    )  # fmt: skip


def start_to_healthy(agent: Path, prefix: Path, baseline: bool) -> subprocess.Popen[bytes]:
    """Start the agent; return it once health.json says connected (records the time on it)."""
    health = prefix / "state" / "health.json"
    health.unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(agent), "run", "--prefix", str(prefix)], env=launcher_env(baseline),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            state = json.loads(health.read_text())
            if state.get("connected") and state.get("pid") == proc.pid:
                proc.elapsed = time.perf_counter() - started  # type: ignore[attr-defined]
                return proc
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    stop(proc)
    raise SystemExit(f"agent in {prefix} did not become healthy")


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    from devkit.server import launch_server
    from pkgbuild.keys import generate_keys, stop_gpg_agent

    runs = int(os.environ.get("BENCH_RUNTIME_RUNS", "5"))
    idle = float(os.environ.get("BENCH_RUNTIME_IDLE", "10"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    keys = tmp / "keys"
    generate_keys(keys)
    server = launch_server(tmp / "server")
    try:
        ours = build(keys, tmp / "ours")
        base = build(keys, tmp / "base", "--no-runtime")
        for fmt in ("deb", "rpm", "tar.gz"):
            size, base_size = ours[fmt].stat().st_size, base[fmt].stat().st_size
            emit(
                f"runtime_payload_{fmt.replace('.', '')}", round(size / MB, 2),
                round(base_size / MB, 2), "MB", "ours <= 40 MB", ratio=round(size / base_size, 3),
                target_met=size <= 40 * MB,
            )  # fmt: skip
        sides = {}
        for name, artifacts, baseline in (("ours", ours, False), ("base", base, True)):
            prefix = tmp / f"prefix-{name}"
            agent = install_tarball(artifacts["tar.gz"], prefix)
            register(agent, prefix, server, baseline)
            sides[name] = (agent, prefix, baseline)
        times: dict[str, list[float]] = {"ours": [], "base": []}
        rss: dict[str, list[float]] = {"ours": [], "base": []}
        for run in range(runs + 1):  # the first round warms caches and is dropped
            for name, (agent, prefix, baseline) in sides.items():
                proc = start_to_healthy(agent, prefix, baseline)
                if run:
                    times[name].append(proc.elapsed)  # type: ignore[attr-defined]
                    time.sleep(idle)
                    rss[name].append(rss_mib(proc.pid))
                stop(proc)
        median_figure("runtime_start_to_healthy", times["ours"], times["base"], "<= 1.1")
        applies: dict[str, list[float]] = {"ours": [], "base": []}
        mirrors = {}
        for name, extra in (("ours", ()), ("base", ("--no-runtime",))):
            new = build(keys, tmp / f"{name}-new", *extra, version="1.1.0", formats="tar.gz")
            repo = tmp / f"repo-{name}"
            publish(keys, repo, [(ours if name == "ours" else base)["tar.gz"], new["tar.gz"]])
            mirrors[name] = repo
        from devkit.httpserver import StaticServer

        with (
            StaticServer(mirrors["ours"]) as ours_mirror,
            StaticServer(mirrors["base"]) as base_mirror,
        ):
            for run in range(max(1, runs // 2)):
                for name, mirror in (("ours", ours_mirror), ("base", base_mirror)):
                    side = ours if name == "ours" else base
                    applies[name].append(time_apply(
                        side["tar.gz"], tmp / f"apply-{name}-{run}", server, name == "base",
                        mirror.url, keys,
                    ))  # fmt: skip
        median_figure("runtime_apply", applies["ours"], applies["base"], "informational")
        rss_ours, rss_base = statistics.median(rss["ours"]), statistics.median(rss["base"])
        emit(
            "runtime_idle_rss", round(rss_ours, 1), round(rss_base, 1), "MiB", "ours <= 35 MiB",
            ratio=round(rss_ours / rss_base, 3), target_met=rss_ours <= 35, idle_seconds=idle,
            runs=runs,
        )  # fmt: skip
    finally:
        server.stop()
        stop_gpg_agent(keys)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
