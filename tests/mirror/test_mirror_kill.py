"""kill -9 a sync at 20 random moments while a client reads the mirror in a loop.

The client checks what a real client relies on, through `assist-mirror serve`: the TUF chain
timestamp -> snapshot -> targets -> every target file; apt's InRelease (gpgv) -> by-hash
Packages -> every .deb; yum's repomd.xml + .asc (gpgv) -> data files -> every .rpm.
Afterwards one more sync completes, re-downloading nothing that was already complete
(requests counted on the upstream StaticServer) and resuming partial files with Range.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from mirror_testlib import mirror_cli, serving, sync_args
from tuf.api.metadata import Metadata

from common.targets import parse_targets
from devkit.release import make_deb, make_tarball
from mirror import apt, yum
from mirror.check import verify_tree
from mirror.gpg import verify_clearsigned, verify_detached

CHUNK = 64 * 1024


def is_content(rel: Path) -> bool:
    """Artifacts (not indexes or metadata, which every sync re-reads to verify)."""
    return (
        rel.parts[0] == "targets"
        or rel.parts[:2] == ("apt", "pool")
        or (rel.parts[0] == "yum" and "Packages" in rel.parts)
    )


_RANGE = re.compile(r"bytes=(\d+)-$")


def throttle(
    repo: Path, log: list[tuple[str, str]] | None = None, pause: float = 0.03, ranges: bool = True
):
    """A StaticServer hook sending files over 256 KiB slowly, a CHUNK per `pause` (with Range
    when `ranges`), so kills land mid-transfer; each request's (path, Range) goes to `log`."""

    def hook(handler) -> bool:
        if log is not None:
            log.append((handler.path, handler.headers.get("Range", "")))
        path = repo / handler.path.lstrip("/")
        if not path.is_file() or path.stat().st_size < 256 * 1024:
            return False
        size = path.stat().st_size
        match = _RANGE.match(handler.headers.get("Range", "")) if ranges else None
        start = int(match.group(1)) if match else 0
        handler.send_response(206 if match else 200)
        if match:
            handler.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        handler.send_header("Content-Length", str(size - start))
        handler.end_headers()
        with path.open("rb") as src:
            src.seek(start)
            try:
                while chunk := src.read(CHUNK):
                    handler.wfile.write(chunk)
                    time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                pass
        return True

    return hook


class Reader:
    """A client reading the served mirror in a loop and recording every inconsistency."""

    def __init__(self, url: str, keyring: Path, workdir: Path) -> None:
        self.url = url
        self.keyring = keyring
        self.session = requests.Session()
        self.errors: list[str] = []
        self.rounds = 0
        self.torn_yum_reads = 0
        self.stop = threading.Event()

    def get(self, rel: str) -> bytes:
        response = self.session.get(self.url + rel, timeout=10)
        if response.status_code != 200:
            raise AssertionError(f"{rel}: HTTP {response.status_code}")
        return response.content

    def head_size(self, rel: str) -> int:
        response = self.session.head(self.url + rel, timeout=10)
        if response.status_code != 200:
            raise AssertionError(f"{rel}: HTTP {response.status_code}")
        return int(response.headers["content-length"])

    def check_tuf(self) -> None:
        timestamp = Metadata.from_bytes(self.get("metadata/timestamp.json"))
        snap_version = timestamp.signed.snapshot_meta.version
        snapshot = Metadata.from_bytes(self.get(f"metadata/{snap_version}.snapshot.json"))
        targets_version = snapshot.signed.meta["targets.json"].version
        targets = Metadata.from_bytes(self.get(f"metadata/{targets_version}.targets.json"))
        for target in parse_targets({p: t.to_dict() for p, t in targets.signed.targets.items()}):
            if self.head_size(target.relpath) != target.length:
                raise AssertionError(f"{target.relpath}: wrong length")

    def check_apt(self) -> None:
        text = verify_clearsigned(self.get("apt/dists/stable/InRelease"), self.keyring, "InRelease")
        release = apt.parse_release(text.decode())
        sha, size = release.sha256["main/binary-amd64/Packages"]
        data = self.get(f"apt/dists/stable/main/binary-amd64/by-hash/SHA256/{sha}")
        if hashlib.sha256(data).hexdigest() != sha:
            raise AssertionError("Packages: Hash Sum mismatch")
        for package in apt.parse_packages(data.decode()):
            if self.head_size(f"apt/{package.filename}") != package.size:
                raise AssertionError(f"{package.filename}: wrong size")

    def check_yum(self) -> None:
        repomd = self.get("yum/stable/repodata/repomd.xml")
        asc = self.get("yum/stable/repodata/repomd.xml.asc")
        try:
            verify_detached(repomd, asc, self.keyring, "repomd.xml")
        except Exception:
            # repomd.xml and its .asc are two files: a read straddling the swap can pair an old
            # one with a new one (the yum format's limit, at the origin too). It must verify
            # when read again, or it is a real inconsistency.
            again = self.get("yum/stable/repodata/repomd.xml")
            if again == repomd:
                raise
            self.torn_yum_reads += 1
            repomd, asc = again, self.get("yum/stable/repodata/repomd.xml.asc")
            verify_detached(repomd, asc, self.keyring, "repomd.xml")
        for entry in yum.parse_repomd(repomd, "yum/stable"):
            data = self.get(entry.relpath)
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise AssertionError(f"{entry.relpath}: checksum mismatch")
            if entry.relpath.endswith("primary.xml.gz"):
                for package in yum.parse_primary(yum.decompress(entry.relpath, data)):
                    if self.head_size(yum.rpm_entry(package, "yum/stable").relpath) != package.size:
                        raise AssertionError(f"{package.location}: wrong size")

    def run(self) -> None:
        while not self.stop.is_set():
            for check in (self.check_tuf, self.check_apt, self.check_yum):
                try:
                    check()
                except Exception as exc:
                    self.errors.append(f"{check.__name__}: {exc}")
            self.rounds += 1


def synced_once(upstream, tmp_path: Path):
    """A mirror under tmp_path/mirror synced once with 2 workers; (origin, server, root, argv)."""
    origin, server = upstream
    root = tmp_path / "mirror"
    sync = [*sync_args(origin, server.url, root), "--workers", "2"]
    mirror_cli(*sync)
    return origin, server, root, sync


@pytest.mark.slow
def test_kill_9_during_sync_never_exposes_an_inconsistent_repository(
    upstream, tmp_path: Path
) -> None:
    # the mirror starts with the origin's first state
    origin, server, root, sync = synced_once(upstream, tmp_path)
    art = tmp_path / "art"
    art.mkdir()
    origin.publish(
        make_deb(art, "big", "1.0", size=2 << 20),
        *(make_tarball(art, f"blob{i}", "1.0", size=6 << 20) for i in range(3)),
    )
    requests_log: list[tuple[str, str]] = []
    server.hook = throttle(origin.repo, requests_log)
    rng = random.Random(20261126)
    with serving(root) as url:
        reader = Reader(url, origin.keyring, tmp_path)
        thread = threading.Thread(target=reader.run, daemon=True)
        thread.start()
        parts_seen = 0
        for _ in range(20):
            proc = subprocess.Popen(
                [sys.executable, "-m", "mirror", *sync],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.4, 1.6))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            parts_seen += len(list((root / ".mirror" / "staging").rglob("*.part")))
        staging = root / ".mirror" / "staging"
        complete = {
            p.relative_to(staging).as_posix()
            for p in staging.rglob("*")
            if p.is_file() and not p.name.endswith(".part") and is_content(p.relative_to(staging))
        }
        complete |= {
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and is_content(p.relative_to(root))
        }
        partial = {
            p.relative_to(staging).as_posix()[: -len(".part")]: p.stat().st_size
            for p in staging.rglob("*.part")
        }
        requests_log.clear()
        mirror_cli(*sync)
        time.sleep(0.5)
        reader.stop.set()
        thread.join(30)
    print(
        f"reader rounds={reader.rounds} torn_yum_reads={reader.torn_yum_reads} parts_seen={parts_seen}"
    )
    assert reader.errors == [], reader.errors[:5]
    assert parts_seen > 0, "no kill landed mid-download: the test did not test resuming"
    assert reader.rounds > 20
    fetched = {(path.lstrip("/"), rng_) for path, rng_ in requests_log}
    refetched = [p for p, _ in fetched if p in complete]
    assert refetched == [], f"complete files downloaded again: {refetched}"
    for path, size in partial.items():
        if size:
            assert (path, f"bytes={size}-") in fetched, f"{path} not resumed from {size}"
    assert verify_tree(root) == []
    assert (root / "apt/pool/main/b/big/big_1.0_amd64.deb").stat().st_size > 2 << 20


def downloading(staging: Path) -> bool:
    """A .part file under `staging` has bytes (files renamed away while looking: not yet)."""
    try:
        return any(p.stat().st_size > 0 for p in staging.rglob("*.part"))
    except FileNotFoundError:
        return False


def test_sigterm_during_sync_stops_it_at_once_and_publishes_nothing(
    upstream, tmp_path: Path
) -> None:
    origin, server, root, sync = synced_once(upstream, tmp_path)
    published = {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and ".mirror" not in p.relative_to(root).parts
    }
    art = tmp_path / "art"
    art.mkdir()
    origin.publish(*(make_tarball(art, f"slow{i}", "1.0", size=3 << 20) for i in range(2)))
    server.hook = throttle(origin.repo, pause=0.2, ranges=False)  # about 320 KiB/s
    staging = root / ".mirror" / "staging"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror", *sync],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not downloading(staging):
        assert proc.poll() is None and time.monotonic() < deadline, "no download started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "assist-mirror: interrupted", err
    # It did not wait for the transfers (each takes ~10 s here): their .part files stay to resume.
    assert any(p.stat().st_size < 3 << 20 for p in staging.rglob("*.part"))
    after = {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and ".mirror" not in p.relative_to(root).parts
    }
    assert after == published, "an interrupted sync published something"
    server.hook = None
    mirror_cli(*sync)  # the lock is free and the next sync completes
    assert verify_tree(root) == []
