"""Verified streaming: `assist-update apply` unpacks a tar.gz while it downloads, from pieces the
signed metadata vouches for. Real repository (assist-pkgbuild keygen/init/publish), real loopback
servers, the real CLI in-process. The artifacts carry a 13 MiB random file, so they span four
4 MiB pieces; their agent is a stand-in (`--service none`: no agent is started here).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.hashing import PIECE
from devkit.httpserver import StaticServer
from devkit.release import init_repo, keygen, publish
from updater.cli import main as update_main

pytestmark = pytest.mark.xdist_group("update-stream")

BLOB = 13 << 20


def _tarball(out: Path, version: str, first: str = "", blob: int = BLOB) -> Path:
    """An agent tar.gz: VERSION and bin/assist-agent first, then lib/blob.bin (random);
    `first` names an extra member put before all of them (relative to versions/V/)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    members = [
        ("VERSION", f"{version}\n".encode(), 0o644),
        ("bin/assist-agent", b"#!/bin/sh\nexit 0\n", 0o755),
        ("lib/blob.bin", os.urandom(blob), 0o644),
    ]
    if first:
        members.insert(0, (first, b"x", 0o644))
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(f"versions/{version}/{name}")
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("stream-release")
    keys = keygen(base / "keys")
    arts = {
        v: _tarball(base / "dist" / f"aliyun-assist-{v}-linux-x86_64.tar.gz", v)
        for v in ("1.0.0", "1.1.0")
    }
    repo = init_repo(base / "repo", keys)
    publish(repo, keys, list(arts.values()))
    return {"keys": keys, "repo": repo, "arts": arts}


@pytest.fixture
def prefix(release: dict[str, Any], tmp_path: Path) -> Path:
    """1.0.0 unpacked and current."""
    prefix = tmp_path / "prefix"
    (prefix / "versions").mkdir(parents=True)
    with tarfile.open(release["arts"]["1.0.0"]) as tar:
        tar.extractall(prefix, filter="data")
    (prefix / "current").symlink_to("versions/1.0.0")
    return prefix


def _apply(release: dict[str, Any], prefix: Path, *mirrors: str) -> int:
    (prefix / "config").mkdir(exist_ok=True)
    (prefix / "config" / "assist.toml").write_text(
        "[mirror]\nread_timeout = 2.0\nretries = 0\nprobe_timeout = 2.0\n"
    )
    args = ["apply", "--prefix", str(prefix), "--service", "none"]
    for mirror in mirrors:
        args += ["--mirror", mirror]
    return update_main([*args, "--trust-root", str(release["keys"] / "root.json")])


def _target(release: dict[str, Any], version: str) -> Path:
    [stored] = (release["repo"] / "targets" / "aliyun-assist" / version).iterdir()
    return stored


def _tree_digest(tree: Path) -> dict[str, str]:
    return {
        str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(tree.rglob("*"))
        if p.is_file()
    }


def _expected_tree(release: dict[str, Any], version: str, tmp_path: Path) -> dict[str, str]:
    out = tmp_path / "expected"
    with tarfile.open(release["arts"][version]) as tar:
        tar.extractall(out, filter="data")
    return _tree_digest(out / "versions" / version)


def _serve(handler: Any, data: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()


def test_publish_signs_the_pieces_of_a_tarball(release: dict[str, Any]) -> None:
    meta = release["repo"] / "metadata"
    targets_file = max(meta.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    targets = json.loads(targets_file.read_text())["signed"]["targets"]
    info = targets["aliyun-assist/1.1.0/aliyun-assist-1.1.0-linux-x86_64.tar.gz"]
    data = release["arts"]["1.1.0"].read_bytes()
    pieces = info["custom"]["pieces"]
    assert pieces["size"] == PIECE and len(pieces["sha256"]) == -(-len(data) // PIECE) >= 4
    assert pieces["sha256"] == [
        hashlib.sha256(data[i : i + PIECE]).hexdigest() for i in range(0, len(data), PIECE)
    ]


def test_apply_unpacks_the_tarball_while_it_still_downloads(
    release: dict[str, Any], prefix: Path, tmp_path: Path
) -> None:
    """The server holds the body after three pieces until the first members show up in the
    staging directory: they can only be there if unpacking began before the download ended."""
    data = _target(release, "1.1.0").read_bytes()
    staging = prefix / "versions" / ".staging-1.1.0"
    seen_during_download: list[bool] = []

    def hold_after_three_pieces(handler: Any) -> bool:
        if "/targets/" not in handler.path:
            return False
        _serve(handler, data)
        handler.wfile.write(data[: 3 * PIECE])
        handler.wfile.flush()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (staging / "VERSION").is_file():
            time.sleep(0.02)
        seen_during_download.append((staging / "VERSION").is_file())
        assert not (prefix / "versions" / "1.1.0").exists()  # only staging, not versions/V yet
        handler.wfile.write(data[3 * PIECE :])
        return True

    with StaticServer(release["repo"]) as server:
        server.hook = hold_after_three_pieces
        assert _apply(release, prefix, server.url) == 0
    assert seen_during_download == [True]
    assert os.readlink(prefix / "current") == "versions/1.1.0"
    assert _tree_digest(prefix / "versions" / "1.1.0") == _expected_tree(release, "1.1.0", tmp_path)
    assert not staging.exists()


def test_a_mirror_tampering_with_one_piece_is_left_and_the_tree_is_the_signed_one(
    release: dict[str, Any], prefix: Path, tmp_path: Path
) -> None:
    """The first-ranked mirror flips a byte in the third piece. Nothing of that piece is
    unpacked; the download starts over on the other mirror, the pieces already unpacked are not
    unpacked twice, and the staged tree is exactly the signed one."""
    data = _target(release, "1.1.0").read_bytes()
    bad = bytearray(data)
    bad[2 * PIECE + 12345] ^= 0xFF
    served_bad: list[int] = []

    def tamper(handler: Any) -> bool:
        if "/targets/" not in handler.path:
            return False
        served_bad.append(1)
        _serve(handler, bytes(bad))
        handler.wfile.write(bytes(bad))
        return True

    def slow_probe(handler: Any) -> bool:
        if handler.path.endswith("timestamp.json"):
            # ranks second: a stall of the whole process longer than this delay makes both probes
            # about as slow (0.3 s made that a coin flip); still well within the 2 s probe timeout
            time.sleep(1.0)
        return False

    with StaticServer(release["repo"]) as evil, StaticServer(release["repo"]) as good:
        evil.hook, good.hook = tamper, slow_probe
        assert _apply(release, prefix, evil.url, good.url) == 0
        assert served_bad and any("/targets/" in path for path in good.requests)
    assert os.readlink(prefix / "current") == "versions/1.1.0"
    assert _tree_digest(prefix / "versions" / "1.1.0") == _expected_tree(release, "1.1.0", tmp_path)
    assert not list((prefix / "versions").glob(".staging-*"))


def test_the_only_mirror_tampering_leaves_nothing_behind(
    release: dict[str, Any], prefix: Path
) -> None:
    data = _target(release, "1.1.0").read_bytes()
    bad = data[: PIECE + 7] + bytes([data[PIECE + 7] ^ 1]) + data[PIECE + 8 :]

    def tamper(handler: Any) -> bool:
        if "/targets/" not in handler.path:
            return False
        _serve(handler, bad)
        handler.wfile.write(bad)
        return True

    journal = prefix / "state" / "update.json"
    with StaticServer(release["repo"]) as server:
        server.hook = tamper
        assert _apply(release, prefix, server.url) == 4  # verification failed
    assert os.readlink(prefix / "current") == "versions/1.0.0"
    assert sorted(p.name for p in (prefix / "versions").iterdir()) == ["1.0.0"]
    assert not journal.exists() or json.loads(journal.read_text()).get("phase") != "downloading"
    # the unpacker thread ended (counted by name: idle pooled threads of the fetcher stay)
    assert [t.name for t in threading.enumerate() if t.name == "stage-stream"] == []


def test_a_signed_tarball_refused_early_stops_the_download(
    release: dict[str, Any], prefix: Path, tmp_path: Path
) -> None:
    """A properly signed 1.2.0 (40 MiB) whose first member climbs out (`../`): the unpacker
    refuses it in the first piece, and the download ends within a piece or two — the server,
    sending slowly, never gets to write the whole file."""
    repo = tmp_path / "repo"
    shutil.copytree(release["repo"], repo, symlinks=True)
    dist = tmp_path / "dist"
    bad = _tarball(dist / "aliyun-assist-1.2.0-linux-x86_64.tar.gz", "1.2.0", "../up", 40 << 20)
    publish(repo, release["keys"], [bad])
    data = bad.read_bytes()
    total = len(data)
    sent: list[int] = []

    def slow_body(handler: Any) -> bool:
        if "/targets/" not in handler.path:
            return False
        _serve(handler, data)
        done = 0
        with contextlib.suppress(OSError):  # the client hangs up
            while done < total:
                handler.wfile.write(data[done : done + (256 << 10)])
                done += 256 << 10
                time.sleep(0.005)
        sent.append(min(done, total))
        return True

    with StaticServer(repo) as server:
        server.hook = slow_body
        assert _apply({**release, "repo": repo}, prefix, server.url) == 4
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sent and sent[0] < total // 2, (sent, total)
    assert os.readlink(prefix / "current") == "versions/1.0.0"
    assert sorted(p.name for p in (prefix / "versions").iterdir()) == ["1.0.0"]
    assert not (prefix.parent / "up").exists()


def test_a_download_already_in_the_cache_is_unpacked_from_the_file(
    release: dict[str, Any], prefix: Path, tmp_path: Path
) -> None:
    """Nothing streams when the verified artifact is already cached: it is unpacked from disk."""
    stored = _target(release, "1.1.0")
    cache = prefix / "state" / "cache" / "1.1.0"
    cache.mkdir(parents=True)
    name = stored.name.split(".", 1)[1]
    (cache / name).write_bytes(stored.read_bytes())
    with StaticServer(release["repo"]) as server:
        assert _apply(release, prefix, server.url) == 0
        assert not any("/targets/" in path for path in server.requests)
    assert _tree_digest(prefix / "versions" / "1.1.0") == _expected_tree(release, "1.1.0", tmp_path)


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    yield
    leftovers = [t.name for t in threading.enumerate() if t.name == "stage-stream"]
    assert leftovers == []
