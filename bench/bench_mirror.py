"""assist-mirror sync: first full sync of a ~200 MB release repository against `wget --mirror`
of the same tree, and a no-op sync against a no-op `wget --mirror` (timestamping re-run).

    .venv/bin/python -m bench mirror        (or: .venv/bin/python bench/bench_mirror.py)

The repository is built with the real pipeline (assist-pkgbuild keygen/init/publish) from
BENCH_MIRROR_FILES (default 10) random tar.gz artifacts of BENCH_MIRROR_MB / FILES each (default
200 MB in all) plus a small .deb, so it has TUF metadata and apt/yum trees. It is served on
loopback by a separate `python -m http.server` process (directory listings, so wget can walk it;
its request log counts the no-op's requests). Both sides run as subprocesses, interleaved,
BENCH_MIRROR_RUNS times (default 3) into fresh directories. Our side verifies everything (TUF,
gpgv, sha256 of every file) and publishes atomically; wget only copies.
Targets: full sync ratio <= 1.2; no-op sync under 0.5 s with one request (budget_s,
budget_met/target_met and requests in its figure; its ratio against wget's no-op re-run is
shown for information).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
PY = sys.executable

from bench.figures import median_figure  # noqa: E402
from devkit.release import mirror_sync_args  # noqa: E402
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


def requests_logged(log: Path) -> int:
    return sum('"GET ' in line or '"HEAD ' in line for line in log.read_text().splitlines())


def main() -> None:
    total_mb = int(os.environ.get("BENCH_MIRROR_MB", "200"))
    files = int(os.environ.get("BENCH_MIRROR_FILES", "10"))
    runs = int(os.environ.get("BENCH_MIRROR_RUNS", "3"))
    with tempfile.TemporaryDirectory(prefix="bench-mirror-") as tmp:
        work = Path(tmp)
        repo, keys = build_repository(work, total_mb, files)
        size = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
        port = free_port()
        log = work / "server.log"
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            env.pop(var, None)
        with log.open("w") as log_handle:
            server = subprocess.Popen(
                [
                    PY,
                    "-m",
                    "http.server",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(repo),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_handle,
            )
        url = f"http://127.0.0.1:{port}/"
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
            ours, theirs, ours_noop, theirs_noop, noop_requests = [], [], [], [], []
            for i in range(runs):
                root, dest = work / f"mirror{i}", work / f"wget{i}"
                sync = [PY, "-m", "mirror", *mirror_sync_args(url, root, keys)]
                wget = [
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
                ours.append(timed(sync, env))
                theirs.append(timed(wget, env))
                before = requests_logged(log)
                ours_noop.append(timed(sync, env))
                noop_requests.append(requests_logged(log) - before)
                theirs_noop.append(timed(wget, env))
                shutil.rmtree(root)
                shutil.rmtree(dest)
        finally:
            server.terminate()
            server.wait(10)
        median_figure(
            "mirror_full_sync",
            ours,
            theirs,
            "<= 1.2",
            repository_mb=round(size / (1 << 20), 1),
            baseline_cmd="wget --mirror",
        )
        met = statistics.median(ours_noop) < 0.5 and max(noop_requests) == 1
        median_figure(
            "mirror_noop_sync",
            ours_noop,
            theirs_noop,
            "< 0.5 s and one request (ratio: vs wget's no-op re-run)",
            requests=max(noop_requests),
            budget_s=0.5,
            budget_met=met,
            target_met=met,
            baseline_cmd="wget --mirror (re-run)",
        )


if __name__ == "__main__":
    main()
