"""Benchmark: `assist-update apply` of a 30 MB artifact over loopback, start to healthy.

    .venv/bin/python -m bench update        (or: .venv/bin/python bench/bench_update.py)

Ours: the real `python -m updater.cli apply` (mirror probe, TUF refresh, download with sha256,
checked extraction, swap, restart through the process manager, health check with settle 0), with
our modules' bytecode cached as on a VM after the updater's first run. The tar.gz is unpacked
while it downloads, from pieces the signed metadata vouches for (updater.staging.StreamStager).
Floor, measured in the same run on the same loopback server: `curl` download + `sha256sum` +
`tar -xzf` + symlink swap + process restart until the new agent reports health. The agent is a
tiny sh launcher that writes state/health.json and sleeps (the restart cost is the same for both).
Also timed separately: the swap itself (vs a bare symlink+rename) and a rollback to the previous
version until the old agent reports health (vs a bare restart). Medians of RUNS runs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.figures import median_figure  # noqa: E402
from common.layout import Layout  # noqa: E402
from common.service import ProcessManager  # noqa: E402
from devkit.agent import mirror_args  # noqa: E402
from updater.engine import Updater, UpdateSettings  # noqa: E402
from updater.swap import swap_current  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
SIZE = 30 * 1024 * 1024
PY = sys.executable

AGENT_SH = """#!/bin/sh
prefix=""
while [ $# -gt 0 ]; do case "$1" in --prefix) prefix="$2"; shift 2;; *) shift;; esac; done
mkdir -p "$prefix/state"
printf '{"version": "@V@", "pid": %s, "started": 0, "connected": true}\\n' "$$" > "$prefix/state/.h"
mv "$prefix/state/.h" "$prefix/state/health.json"
# this shell stays the agent's pid (its command line keeps --prefix, which the process manager
# checks before it signals a recorded pid); TERM ends the sleep with it
trap 'kill $! 2>/dev/null; exit 0' TERM
sleep 600 &
wait
"""


def make_tarball(out: Path, version: str) -> Path:
    """A payload tarball with a fast fake agent and 30 MB of incompressible data."""
    blob = os.urandom(SIZE)
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        for name, data, mode in (
            ("VERSION", f"{version}\n".encode(), 0o644),
            ("bin/assist-agent", AGENT_SH.replace("@V@", version).encode(), 0o755),
            ("lib/blob.bin", blob, 0o644),
        ):
            info = tarfile.TarInfo(f"versions/{version}/{name}")
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return out


def pkgbuild(*args: str) -> None:
    subprocess.run([PY, "-m", "pkgbuild", *args], check=True, capture_output=True)


def fresh_prefix(base: Path, dist: Path) -> Path:
    """A prefix with 1.0.0 unpacked, current, and its agent running."""
    prefix = Path(tempfile.mkdtemp(dir=base))
    (prefix / "versions").mkdir()
    with tarfile.open(dist / "aliyun-assist-1.0.0-linux-x86_64.tar.gz") as tar:
        tar.extractall(prefix, filter="data")
    (prefix / "current").symlink_to("versions/1.0.0")
    ProcessManager(prefix).start()
    wait_health(prefix, "1.0.0")
    os.sync()  # the set-up's writes are not the timed step's to flush (apply syncs its tree)
    return prefix


def wait_health(prefix: Path, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    path = prefix / "state" / "health.json"
    while time.monotonic() < deadline:
        try:
            if json.loads(path.read_text())["version"] == version:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{version} never reported health in {prefix}")


def restart_agent(prefix: Path, version: str) -> None:
    """The floor's restart: stop the pidfile's process, spawn the new one, wait for health."""
    (prefix / "state" / "health.json").unlink(missing_ok=True)
    ProcessManager(prefix).restart()
    wait_health(prefix, version)


def timed(fn: Callable[..., object], *args: object) -> float:
    """Seconds `fn(*args)` takes."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run_quiet(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, check=True, env=env, capture_output=True)


def main() -> None:
    os.environ["ALIYUN_ASSIST_REGION"] = "bench-local"  # loopback only: no metadata service
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        base = Path(tmp)
        run(base)


def run(base: Path) -> None:
    from devkit.httpserver import StaticServer

    keys = base / "keys"
    dist = base / "dist"
    dist.mkdir()
    pkgbuild("keygen", "--out", str(keys))
    arts = [
        make_tarball(dist / f"aliyun-assist-{v}-linux-x86_64.tar.gz", v) for v in ("1.0.0", "1.1.0")
    ]
    repo = base / "repo"
    pkgbuild("init", "--repo", str(repo), "--keys", str(keys))
    pkgbuild("publish", "--repo", str(repo), "--keys", str(keys), *map(str, arts))
    targets = json.loads((repo / "metadata" / "timestamp.json").read_text())
    del targets
    new = next((repo / "targets" / "aliyun-assist" / "1.1.0").iterdir())
    sha = new.name.split(".", 1)[0]
    env = dict(os.environ)
    env.pop("ALIYUN_ASSIST_PYTHON", None)
    # Steady state, as on a VM after the updater's first run: our modules' bytecode is cached.
    # (An environment with PYTHONDONTWRITEBYTECODE would recompile them on every run.)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    packages = [str(REPO_ROOT / name) for name in ("common", "updater")]
    subprocess.run([PY, "-m", "compileall", "-q", *packages], check=True, env=env)
    env["ALIYUN_ASSIST_REGION"] = "bench-local"  # never ask the metadata service
    ours: list[float] = []
    floor: list[float] = []
    inproc: list[float] = []
    with StaticServer(repo) as server:
        url = server.url + str(new.relative_to(repo))
        for _ in range(RUNS):
            prefix = fresh_prefix(base, dist)
            cmd = [
                PY,
                "-m",
                "updater.cli",
                "apply",
                *mirror_args(prefix, server.url, keys),
                "--settle",
                "0",
                "--service",
                "process",
            ]
            ours.append(timed(run_quiet, cmd, env))
            wait_health(prefix, "1.1.0")
            ProcessManager(prefix).stop()

            prefix = fresh_prefix(base, dist)
            floor.append(timed(floor_update, prefix, url, sha))
            ProcessManager(prefix).stop()

            prefix = fresh_prefix(base, dist)
            inproc.append(timed(apply_in_process, prefix, server.url, keys))
            ProcessManager(prefix).stop()
    median_figure("update_apply_30MB", ours, floor, "<= 1.3x floor (curl+sha256sum+tar+restart)")
    median_figure(
        "update_apply_30MB_in_process",
        inproc,
        floor,
        "same apply without interpreter start-up and imports (engine cost only)",
    )

    swaps, bare = time_swaps(base)
    median_figure(
        "update_swap", swaps, bare, "atomic swap incl. fsync; bare symlink+rename as baseline"
    )
    rollbacks, restarts = time_rollbacks(base, dist)
    median_figure("update_rollback", rollbacks, restarts, "<= 1.3x a bare restart")


def apply_in_process(prefix: Path, mirror: str, keys: Path) -> None:
    """The same apply through the engine in this (already warm) interpreter."""
    from common.config import load_config
    from common.native_sig import verify_native
    from updater.remote import open_repository

    config = load_config(prefix=prefix)
    layout = Layout(prefix)
    repo, _ = open_repository(config, layout, mirrors=[mirror], trust_root=keys / "root.json")
    settings = UpdateSettings(os="linux", arch="x86_64", format="tar.gz", settle=0.0)
    updater = Updater(
        layout,
        repo,
        ProcessManager(prefix),
        settings,
        verify_native=lambda a, f, k: verify_native(a, f, k),
    )
    assert updater.apply().result == "updated"


def floor_update(prefix: Path, url: str, sha: str) -> None:
    """curl + sha256sum + tar + symlink swap + restart until healthy."""
    art = prefix / "a.tar.gz"
    subprocess.run(["curl", "-fsS", "-o", str(art), url], check=True)
    out = subprocess.run(["sha256sum", str(art)], check=True, capture_output=True, text=True)
    assert out.stdout.split()[0] == sha
    subprocess.run(["tar", "-xzf", str(art), "-C", str(prefix)], check=True)
    subprocess.run(["ln", "-sfn", "versions/1.1.0", str(prefix / ".c")], check=True)
    os.replace(prefix / ".c", prefix / "current")
    restart_agent(prefix, "1.1.0")


def time_swaps(base: Path, n: int = 200) -> tuple[list[float], list[float]]:
    """swap_current (with fsync of the directory) vs a bare symlink + rename."""
    prefix = base / "swap"
    for v in ("1", "2"):
        (prefix / "versions" / v).mkdir(parents=True)
    layout = Layout(prefix)
    swap_current(layout, "1")
    ours, bare = [], []
    for i in range(n):
        ours.append(timed(swap_current, layout, "2" if i % 2 else "1"))

        def raw(i: int = i) -> None:
            tmp = prefix / ".raw.tmp"
            os.symlink(f"versions/{'2' if i % 2 else '1'}", tmp)
            os.replace(tmp, prefix / "raw")

        bare.append(timed(raw))
    return ours, bare


def time_rollbacks(base: Path, dist: Path) -> tuple[list[float], list[float]]:
    """Updater.rollback until the old agent reports health, vs a bare restart to healthy."""
    ours, restarts = [], []
    for _ in range(RUNS):
        prefix = fresh_prefix(base, dist)
        with tarfile.open(dist / "aliyun-assist-1.1.0-linux-x86_64.tar.gz") as tar:
            tar.extractall(prefix, filter="data")
        swap_current(Layout(prefix), "1.1.0")
        restart_agent(prefix, "1.1.0")
        updater = Updater(
            Layout(prefix),
            None,
            ProcessManager(prefix),
            UpdateSettings(os="linux", arch="x86_64", format="tar.gz"),
        )

        def rollback(p: Path = prefix, u: Updater = updater) -> None:
            (p / "state" / "health.json").unlink(missing_ok=True)
            u.rollback()
            wait_health(p, "1.0.0")

        ours.append(timed(rollback))
        restarts.append(timed(restart_agent, prefix, "1.0.0"))
        ProcessManager(prefix).stop()
        shutil.rmtree(prefix, ignore_errors=True)
    return ours, restarts


if __name__ == "__main__":
    main()
