"""assist-mirror sync against `wget --mirror` of the same tree, on two tree shapes, and side by side
with the real mirror tools (aptly, debmirror, dnf reposync) on the release-history origin.

    .venv/bin/python -m bench mirror        (or: .venv/bin/python bench/bench_mirror.py)

Tree shapes, both made by the real pipeline (assist-pkgbuild keygen/init/publish), so they have
TUF metadata and apt/yum trees:
- "200 MB": BENCH_MIRROR_FILES (default 10) random tar.gz artifacts of BENCH_MIRROR_MB / FILES
  each (default 200 MB in all) plus a small .deb (figures mirror_full_sync, mirror_noop_sync);
- "history": bench/release_history.py, 40 releases x deb/rpm (amd64/x86_64, arm64/aarch64),
  tar.gz (x86_64, aarch64) and a signed exe, published four releases at a time (> 1 GB, > 500
  files; cached under .cache/bench-mirror/; figures *_history). BENCH_MIRROR_SHAPES=200mb or
  =history runs one shape only.
Each origin is served on loopback by a separate `python -m http.server` process (directory
listings, so wget can walk it; its request log counts the no-op's requests). Every run, into
fresh directories: our full sync (given only --trust-root), wget --mirror, our no-op sync, wget's
no-op re-run; on the history origin also each peer tool (bench/mirror_peers.py), all interleaved,
BENCH_MIRROR_RUNS times (default 3). Our side verifies everything (TUF, gpgv, sha256 of every file)
and publishes atomically and durably; wget only copies.
Targets: full sync ratio <= 1.2 on both shapes; no-op sync under 0.5 s with one request
(budget_s, budget_met/target_met and requests in its figure; its ratio, for information, is
against wget's no-op re-run on the 200 MB tree and against our own full sync on the history
tree, where wget's re-run walks every directory listing for minutes); each peer row
(mirror_vs_<tool>: our whole TUF+apt+yum sync against that tool mirroring only its own tree)
is for information: the issue's requirement is to beat the sum of what the peers need for
the same verified job, so the sum row (mirror_vs_peers_sum) carries the target, below 1.0. mirror_noop_first_request: process start to the no-op sync's one
request reaching the server, against a bare interpreter making that request (the floor);
target: at most 0.1 s over the floor.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
PY = sys.executable
# A peer row compares our whole job with one tool's part of it: informational, not checked.
PEER_ROW_TARGET = "info (target on mirror_vs_peers_sum < 1.0)"

from bench.figures import median_figure  # noqa: E402
from bench.mirror_peers import ensure_tools, mirrored_files, peer_jobs  # noqa: E402
from bench.release_history import cached_history, tree_shape  # noqa: E402
from devkit.server import free_port  # noqa: E402


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {proc.stdout}\n{proc.stderr}")
    return proc


def make_tarball(out: Path, name: str, size: int) -> Path:
    data = out / f"{name}.payload"
    with data.open("wb") as handle:
        for _ in range(size // (1 << 20)):
            handle.write(os.urandom(1 << 20))
    tarball = out / f"{name}-1.0-linux-x86_64.tar.gz"
    with tarfile.open(tarball, "w:gz", compresslevel=1) as tar:
        tar.add(data, arcname=f"{name}/payload")
    data.unlink()
    return tarball


def make_deb(out: Path) -> Path:
    work = out / "debroot"
    (work / "DEBIAN").mkdir(parents=True)
    (work / "DEBIAN" / "control").write_text(
        "Package: benchtool\nVersion: 1.0\nArchitecture: amd64\nMaintainer: b <b@b>\nDescription: b\n"
    )
    deb = out / "benchtool_1.0_amd64.deb"
    run(["dpkg-deb", "--build", str(work), str(deb)])
    return deb


def build_repository(work: Path, total_mb: int, files: int) -> tuple[Path, Path]:
    """A signed release repository of about total_mb; returns (repo, keys)."""
    keys, repo, art = work / "keys", work / "repo", work / "art"
    art.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    run([PY, "-m", "pkgbuild", "keygen", "--out", str(keys)], env=env)
    run([PY, "-m", "pkgbuild", "init", "--repo", str(repo), "--keys", str(keys)], env=env)
    artifacts = [make_tarball(art, f"blob{i}", (total_mb << 20) // files) for i in range(files)]
    artifacts.append(make_deb(art))
    run(
        [
            PY,
            "-m",
            "pkgbuild",
            "publish",
            "--repo",
            str(repo),
            "--keys",
            str(keys),
            *map(str, artifacts),
        ],
        env=env,
    )
    shutil.rmtree(art)
    return repo, keys


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    run(cmd, env=env)
    return time.perf_counter() - started


def timed_all(commands: list[list[str]], env: dict[str, str]) -> float:
    """Seconds for a sequence of commands (one peer tool's job)."""
    return sum(timed(cmd, env) for cmd in commands)


def requests_logged(log: Path) -> int:
    return sum('"GET ' in line or '"HEAD ' in line for line in log.read_text().splitlines())


def bench_env() -> dict[str, str]:
    """Our environment without proxies (loopback only)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    return env


@contextlib.contextmanager
def serving(repo: Path, log: Path) -> Iterator[str]:
    """`python -m http.server` over `repo` on loopback, logging requests to `log`; its URL."""
    port = free_port()
    with log.open("w") as log_handle:
        server = subprocess.Popen(
            [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(repo)],
            stdout=subprocess.DEVNULL,
            stderr=log_handle,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("upstream server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(10)


class _StampingHandler(http.server.SimpleHTTPRequestHandler):
    """Static files; the time (time.monotonic, shared by all processes) of each request."""

    stamps: list[float]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return

    def do_GET(self) -> None:
        self.stamps.append(time.monotonic())
        super().do_GET()


def first_request_delays(repo: Path, commands: list[list[str]], env: dict[str, str]) -> list[float]:
    """Seconds from spawning each command to its first request reaching a loopback server
    over `repo`; each command gets the server's URL as its last argument."""
    stamps: list[float] = []
    handler = type("Handler", (_StampingHandler,), {"stamps": stamps})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(repo))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    delays = []
    try:
        for cmd in commands:
            stamps.clear()
            started = time.monotonic()
            run([*cmd, url], env=env)
            delays.append(min(stamps) - started)
    finally:
        httpd.shutdown()
        httpd.server_close()
    return delays


def bench_first_request(repo: Path, keys: Path, work: Path, runs: int) -> None:
    """Process start to the no-op sync's one request, against a bare interpreter doing only
    that request (the floor: interpreter start-up, which this loaded host makes slow)."""
    env = bench_env()
    root = work / "first-request"
    with serving(repo, work / "first-request.log") as url:
        run(sync_command(url, root, keys), env=env)
    noop = sync_command("", root, keys)
    at = noop.index("--upstream")
    ours_cmd = [*noop[:at], *noop[at + 2 :], "--upstream"]
    floor_cmd = [
        PY, "-c",
        "import sys, http.client, urllib.parse as u; p = u.urlsplit(sys.argv[1]); "
        "c = http.client.HTTPConnection(p.hostname, p.port); "
        "c.request('GET', '/metadata/timestamp.json'); c.getresponse().read()",
    ]  # fmt: skip
    ours: list[float] = []
    floor: list[float] = []
    for _ in range(runs):
        ours += first_request_delays(repo, [ours_cmd], env)
        floor += first_request_delays(repo, [floor_cmd], env)
    shutil.rmtree(root)
    extra = statistics.median(ours) - statistics.median(floor)
    median_figure(
        "mirror_noop_first_request", ours, floor, "<= floor + 0.1 s",
        over_floor_s=round(extra, 4), target_met=extra <= 0.1,
        baseline_cmd="python -c 'http.client GET metadata/timestamp.json' (interpreter floor)",
        ours_runs=[round(x, 3) for x in ours], baseline_runs=[round(x, 3) for x in floor],
    )  # fmt: skip


def sync_command(url: str, root: Path, keys: Path) -> list[str]:
    """assist-mirror sync with the one trust anchor a user gets: root.json."""
    return [
        PY, "-m", "mirror", "sync", "--region", "cn-hangzhou", "--upstream", url,
        "--root", str(root), "--trust-root", str(keys / "root.json"),
    ]  # fmt: skip


def wget_command(url: str, dest: Path) -> list[str]:
    return [
        "wget",
        "--mirror",
        "--no-parent",
        "-nH",
        "-q",
        "-e",
        "robots=off",
        "-P",
        str(dest),
        url,
    ]


def bench_shape(suffix: str, repo: Path, keys: Path, work: Path, runs: int, peers: bool) -> None:
    """Full and no-op sync against wget (and the peers) on one origin; print the figures."""
    env = bench_env()
    shape = tree_shape(repo)
    log = work / f"server{suffix}.log"
    ours: list[float] = []
    theirs: list[float] = []
    ours_noop: list[float] = []
    theirs_noop: list[float] = []
    noop_requests: list[int] = []
    peer_times: dict[str, list[float]] = {}
    peer_cmds: dict[str, str] = {}
    with serving(repo, log) as url:
        for i in range(runs):
            root, dest = work / f"mirror{suffix}{i}", work / f"wget{suffix}{i}"
            sync = sync_command(url, root, keys)
            ours.append(timed(sync, env))
            theirs.append(timed(wget_command(url, dest), env))
            before = requests_logged(log)
            ours_noop.append(timed(sync, env))
            noop_requests.append(requests_logged(log) - before)
            if not peers:  # on the history tree wget's re-run walks every listing: minutes
                theirs_noop.append(timed(wget_command(url, dest), env))
            shutil.rmtree(root)
            shutil.rmtree(dest)
            if peers:
                for job in peer_jobs(url, keys, work / f"peers{i}"):
                    peer_times.setdefault(job.name, []).append(timed_all(job.commands, env))
                    peer_cmds[job.name] = job.baseline_cmd
                    if not mirrored_files(job.work):
                        raise SystemExit(f"{job.name} mirrored no package")
                shutil.rmtree(work / f"peers{i}")
    median_figure(
        f"mirror_full_sync{suffix}", ours, theirs, "<= 1.2",
        **shape, baseline_cmd="wget --mirror",
        ours_runs=[round(x, 3) for x in ours], baseline_runs=[round(x, 3) for x in theirs],
    )  # fmt: skip
    met = statistics.median(ours_noop) < 0.5 and max(noop_requests) == 1
    median_figure(
        f"mirror_noop_sync{suffix}",
        ours_noop,
        theirs_noop or ours,
        "< 0.5 s and one request (ratio: vs " + ("our full sync)" if peers else "wget's no-op)"),
        requests=max(noop_requests),
        budget_s=0.5,
        budget_met=met,
        target_met=met,
        baseline_cmd="assist-mirror full sync" if peers else "wget --mirror (re-run)",
        ours_runs=[round(x, 3) for x in ours_noop],
    )
    if not peers:
        return
    for name, times in peer_times.items():
        median_figure(
            f"mirror_vs_{name}", ours, times, PEER_ROW_TARGET,
            baseline_cmd=peer_cmds[name], tree=f"theirs: {name} part only; ours: TUF+apt+yum",
            baseline_runs=[round(x, 3) for x in times], **shape,
        )  # fmt: skip
    sums = [sum(times[i] for times in peer_times.values()) for i in range(runs)]
    median_figure(
        "mirror_vs_peers_sum", ours, sums, "< 1.0",
        baseline_cmd=" + ".join(sorted(peer_times)),
        baseline_runs=[round(x, 3) for x in sums], **shape,
    )  # fmt: skip


def main() -> None:
    total_mb = int(os.environ.get("BENCH_MIRROR_MB", "200"))
    files = int(os.environ.get("BENCH_MIRROR_FILES", "10"))
    runs = int(os.environ.get("BENCH_MIRROR_RUNS", "3"))
    shapes = os.environ.get("BENCH_MIRROR_SHAPES", "200mb,history").split(",")
    with tempfile.TemporaryDirectory(prefix="bench-mirror-") as tmp:
        work = Path(tmp)
        if "200mb" in shapes:
            repo, keys = build_repository(work, total_mb, files)
            bench_shape("", repo, keys, work, runs, peers=False)
            bench_first_request(repo, keys, work, max(runs, 5))
            shutil.rmtree(repo)
        if "history" in shapes:
            ensure_tools()
            repo, keys = cached_history()
            bench_shape("_history", repo, keys, work, runs, peers=True)


if __name__ == "__main__":
    main()
