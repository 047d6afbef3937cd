"""Release repository against the real native clients: apt-get, dnf, rpmkeys, osslsigncode.

One repository with aliyun-assist 1.0.0 and 1.1.0 is published per module and served on
loopback; apt and dnf run with fully private configuration (nothing read from /etc/apt or the
host's repos) and the suite's blackhole proxy for anything but loopback. Tampering tests work on
a copy of the repository so the shared one stays intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_repository_support import (
    AptClient,
    DnfClient,
    build_all,
    build_deb,
    build_rpm,
    checked,
    osslsigncode_verify,
    run,
    tuf_updater,
)

from devkit.httpserver import StaticServer
from pkgbuild.naming import parse_artifact_filename
from pkgbuild.repository import init_repository, publish_artifacts, yank_version

pytestmark = pytest.mark.xdist_group("repository-clients")


def blackhole_env() -> dict[str, str]:
    """The same environment as the suite's tool_env fixture, for module-scoped set-up."""
    env = dict(os.environ)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env[var] = "http://127.0.0.1:9"
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost,::1"
    return env


@pytest.fixture(scope="module")
def served(keydir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """aliyun-assist 1.0.0 (all formats) and 1.1.0 (deb, rpm) in `stable`, served on loopback."""
    base = tmp_path_factory.mktemp("served")
    v1 = build_all(base / "v1", keydir, "1.0.0")
    v2 = {"deb": build_deb(base / "v2", "1.1.0"), "rpm": build_rpm(base / "v2", keydir, "1.1.0")}
    repo = base / "repo"
    init_repository(repo, keydir, {})
    publish_artifacts(repo, keydir, [*v1.values(), *v2.values()])
    with StaticServer(repo) as server:
        yield SimpleNamespace(repo=repo, keys=keydir, v1=v1, v2=v2, url=server.url, server=server)


def copy_repo(served: SimpleNamespace, dest: Path) -> Path:
    """A private copy of the served repository (symlinks kept) for tampering."""
    shutil.copytree(served.repo, dest, symlinks=True)
    return dest


def test_apt_downloads_the_published_deb(
    served: SimpleNamespace, tmp_path: Path, tool_env: dict[str, str]
) -> None:
    apt = AptClient(tmp_path / "apt", tool_env).setup(
        served.url, served.repo / "keys/archive-keyring.gpg"
    )
    update = apt.run("update")
    assert update.returncode == 0, update.stdout + update.stderr
    assert "W:" not in update.stdout + update.stderr  # signed, valid, nothing to warn about
    for version, artifact in (("1.1.0", served.v2["deb"]), ("1.0.0", served.v1["deb"])):
        got = apt.run("download", f"aliyun-assist={version}")
        assert got.returncode == 0, got.stdout + got.stderr
        fetched = tmp_path / "apt/download" / artifact.name
        assert fetched.read_bytes() == artifact.read_bytes()
    # apt read the indexes by hash, the form that survives a concurrent publish
    assert any("/by-hash/SHA" in path for path in served.server.requests)


def test_dnf_installs_the_published_rpm_with_gpg_checks(
    served: SimpleNamespace, tmp_path: Path, tool_env: dict[str, str]
) -> None:
    dnf = DnfClient(tmp_path / "dnf", tool_env).setup(served.url)
    result = dnf.run("install", "aliyun-assist")
    assert result.returncode == 0, result.stdout + result.stderr
    installed = dnf.installed("aliyun-assist")
    assert installed.stdout.strip() == "aliyun-assist-1.1.0-1.x86_64"
    payload = tmp_path / "dnf/installroot/usr/share/aliyun-assist/VERSION"
    assert payload.read_text().strip() == "1.1.0"
    assert "/yum/stable/repodata/repomd.xml.asc" in served.server.requests


def test_rpmkeys_accepts_the_published_rpm_with_the_repository_key(
    served: SimpleNamespace, tmp_path: Path
) -> None:
    rpm = served.v1["rpm"]
    stored = served.repo / "yum/stable/Packages" / rpm.name
    dbpath = tmp_path / "rpmdb"
    dbpath.mkdir()
    checked(
        [
            "rpmkeys",
            "--dbpath",
            str(dbpath),
            "--import",
            str(served.repo / "keys/RPM-GPG-KEY-assist"),
        ]
    )
    out = checked(["rpmkeys", "--dbpath", str(dbpath), "-K", str(stored)])
    assert out.strip().endswith("digests signatures OK"), out
    empty = tmp_path / "emptydb"
    empty.mkdir()
    assert run(["rpmkeys", "--dbpath", str(empty), "-K", str(stored)]).returncode != 0


def test_osslsigncode_verifies_the_published_exe_against_the_repository_certificate(
    served: SimpleNamespace, tmp_path: Path
) -> None:
    exe = served.v1["exe"]
    updater = tuf_updater(tmp_path, served.keys / "root.json", served.url)
    updater.refresh()
    target = updater.get_targetinfo(parse_artifact_filename(exe.name).target_path)
    assert target is not None and target.custom["os"] == "windows"
    downloaded = Path(updater.download_target(target))
    result = osslsigncode_verify(downloaded, served.repo / "keys/authenticode.crt")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Signature verification: ok" in result.stdout


@contextlib.contextmanager
def apt_on_a_copy(
    served: SimpleNamespace, tmp_path: Path, tool_env: dict[str, str]
) -> Iterator[tuple[Path, AptClient]]:
    """A copy of the served repository on a loopback server of its own (the test may spoil it),
    and an apt client that has run `apt update` against it."""
    repo = copy_repo(served, tmp_path / "repo")
    with StaticServer(repo) as server:
        apt = AptClient(tmp_path / "apt", tool_env).setup(
            server.url, repo / "keys/archive-keyring.gpg"
        )
        assert apt.run("update").returncode == 0
        yield repo, apt


def test_apt_update_refuses_a_modified_inrelease_and_keeps_the_old_lists(
    served: SimpleNamespace, tmp_path: Path, tool_env: dict[str, str]
) -> None:
    with apt_on_a_copy(served, tmp_path, tool_env) as (repo, apt):
        lists = tmp_path / "apt/var/lib/apt/lists"
        before = {p.name: p.read_bytes() for p in lists.glob("*_*")}
        assert any(name.endswith("InRelease") for name in before)
        inrelease = repo / "apt/dists/stable/InRelease"
        # an attacker announces a different Packages index under the old signature
        text = inrelease.read_text()
        packages_hash = hashlib.sha256(
            (repo / "apt/dists/stable/main/binary-amd64/Packages").read_bytes()
        ).hexdigest()
        assert packages_hash in text
        inrelease.write_text(text.replace(packages_hash, "0" * 64))
        later = inrelease.stat().st_mtime + 2  # served as changed, not 304 Not Modified
        os.utime(inrelease, (later, later))
        (repo / "apt/dists/stable/Release.gpg").unlink()  # no fallback either
        # apt keeps the old lists and only warns by default; --error-on=any makes it exit non-zero
        result = apt.run("update", "--error-on=any")
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "BADSIG" in output or "not signed" in output or "NO_PUBKEY" in output, output
        after = {p.name: p.read_bytes() for p in lists.glob("*_*")}
        assert after == before


def test_apt_download_refuses_a_modified_deb_in_the_pool(
    served: SimpleNamespace, tmp_path: Path, tool_env: dict[str, str]
) -> None:
    with apt_on_a_copy(served, tmp_path, tool_env) as (repo, apt):
        deb = repo / "apt/pool/main/a/aliyun-assist" / served.v1["deb"].name
        data = bytearray(deb.read_bytes())
        data[-10] ^= 0xFF
        deb.write_bytes(bytes(data))
        result = apt.run("download", "aliyun-assist=1.0.0")
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "Hash Sum mismatch" in output or "hash" in output.lower(), output
        assert not (tmp_path / "apt/download" / deb.name).exists()


def test_dnf_refuses_a_modified_repomd(
    served: SimpleNamespace, tmp_path: Path, tool_env: dict[str, str]
) -> None:
    repo = copy_repo(served, tmp_path / "repo")
    repomd = repo / "yum/stable/repodata/repomd.xml"
    text = repomd.read_text()
    # change a checksum the signature covers
    start = text.index('<checksum type="sha256">') + len('<checksum type="sha256">')
    repomd.write_text(text[:start] + "0" * 64 + text[start + 64 :])
    with StaticServer(repo) as server:
        dnf = DnfClient(tmp_path / "dnf", tool_env).setup(server.url)
        result = dnf.run("install", "aliyun-assist")
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "GPG" in output or "signature" in output.lower() or "repomd" in output, output
    assert dnf.installed("aliyun-assist").returncode != 0


@pytest.fixture(scope="module")
def yanked(keydir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """1.0.0 and 1.1.0 (deb, rpm) published, then 1.1.0 yanked from stable; served."""
    base = tmp_path_factory.mktemp("yanked")
    artifacts = []
    for version in ("1.0.0", "1.1.0"):
        artifacts += [
            build_deb(base / version, version),
            build_rpm(base / version, keydir, version),
        ]
    repo = base / "repo"
    init_repository(repo, keydir, {})
    publish_artifacts(repo, keydir, artifacts)
    removed = yank_version(repo, keydir, "aliyun-assist", "1.1.0")
    with StaticServer(repo) as server:
        yield SimpleNamespace(repo=repo, keys=keydir, url=server.url, removed=removed)


def test_yanked_version_is_gone_for_apt_dnf_and_tuf(
    yanked: SimpleNamespace, tmp_path: Path, tool_env: dict[str, str]
) -> None:
    assert sorted(yanked.removed) == [
        "aliyun-assist/1.1.0/aliyun-assist-1.1.0-1.x86_64.rpm",
        "aliyun-assist/1.1.0/aliyun-assist_1.1.0_amd64.deb",
    ]
    apt = AptClient(tmp_path / "apt", tool_env).setup(
        yanked.url, yanked.repo / "keys/archive-keyring.gpg"
    )
    assert apt.run("update").returncode == 0
    assert apt.run("download", "aliyun-assist=1.1.0").returncode != 0
    assert apt.run("download", "aliyun-assist").returncode == 0
    assert (tmp_path / "apt/download/aliyun-assist_1.0.0_amd64.deb").is_file()

    dnf = DnfClient(tmp_path / "dnf", tool_env).setup(yanked.url)
    assert dnf.run("install", "aliyun-assist-1.1.0").returncode != 0
    assert dnf.run("install", "aliyun-assist").returncode == 0
    assert dnf.installed("aliyun-assist").stdout.strip() == "aliyun-assist-1.0.0-1.x86_64"

    updater = tuf_updater(tmp_path / "tuf", yanked.keys / "root.json", yanked.url)
    updater.refresh()
    for path in yanked.removed:
        assert updater.get_targetinfo(path) is None
    assert updater.get_targetinfo("aliyun-assist/1.0.0/aliyun-assist_1.0.0_amd64.deb") is not None
    # the current index lists only 1.0.0; the yanked rpm stays on disk while the previous
    # generation (which a reader may still hold) lists it, and goes with the next publish
    listed = (yanked.repo / "yum/stable/repodata/.pkglist").read_text()
    assert listed == "Packages/aliyun-assist-1.0.0-1.x86_64.rpm\n"
    assert (yanked.repo / "yum/stable/Packages/aliyun-assist-1.1.0-1.x86_64.rpm").is_file()


def test_apt_clients_updating_during_publishes_never_fail(
    keydir: Path, tmp_path: Path, tool_env: dict[str, str]
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    debs = [build_deb(tmp_path / "d", f"2.{n}.0") for n in range(4)]
    failures: list[str] = []
    runs = 0
    stop = threading.Event()
    with StaticServer(repo) as server:
        apt = AptClient(tmp_path / "apt", tool_env).setup(
            server.url, repo / "keys/archive-keyring.gpg"
        )

        def update_loop() -> None:
            nonlocal runs
            while not stop.is_set():
                result = apt.run("update")
                runs += 1
                if result.returncode != 0 or "W:" in result.stdout + result.stderr:
                    failures.append(result.stdout + result.stderr)

        reader = threading.Thread(target=update_loop)
        reader.start()
        try:
            for deb in debs:
                publish_artifacts(repo, keydir, [deb])
        finally:
            stop.set()
            reader.join()
        final = apt.run("update")
        assert final.returncode == 0, final.stdout + final.stderr
        assert apt.run("download", "aliyun-assist=2.3.0").returncode == 0
    assert failures == []
    assert runs >= 1


def publish_once_when(server: StaticServer, marker: str, publish: object) -> list[str]:
    """Make the server run `publish()` just before answering the first request containing marker."""
    seen: list[str] = []

    def hook(handler: object) -> bool:
        path = str(getattr(handler, "path", ""))
        if marker in path and not seen:
            seen.append(path)
            publish()  # type: ignore[operator]
        return False  # then serve the file as it is now

    server.hook = hook
    return seen


@pytest.mark.parametrize("publishes", [1, 2], ids=["one-publish", "two-publishes"])
def test_apt_client_holding_an_older_inrelease_still_gets_its_indexes(
    keydir: Path, tmp_path: Path, tool_env: dict[str, str], publishes: int
) -> None:
    """Two quick publishes while apt is between InRelease and its indexes: the hash-named files of
    both older generations are still served (the grace period, not only the previous one)."""
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    publish_artifacts(repo, keydir, [build_deb(tmp_path / "a", "3.0.0")])
    newer = [build_deb(tmp_path / f"b{n}", f"3.{n + 1}.0") for n in range(publishes)]
    newest = f"3.{publishes}.0"
    with StaticServer(repo) as server:
        apt = AptClient(tmp_path / "apt", tool_env).setup(
            server.url, repo / "keys/archive-keyring.gpg"
        )
        # the publishes land between apt reading InRelease and fetching the Packages it lists
        seen = publish_once_when(
            server, "/by-hash/", lambda: [publish_artifacts(repo, keydir, [d]) for d in newer]
        )
        result = apt.run("update", "--error-on=any")
        assert result.returncode == 0, result.stdout + result.stderr
        assert seen, "apt did not fetch by hash"
        assert apt.run("download", "aliyun-assist=3.0.0").returncode == 0
        assert apt.run("download", f"aliyun-assist={newest}").returncode != 0  # old view
        server.hook = None
        assert apt.run("update", "--error-on=any").returncode == 0
        assert apt.run("download", f"aliyun-assist={newest}").returncode == 0


def test_apt_client_sees_a_publish_made_in_the_second_it_last_updated(
    keydir: Path, tmp_path: Path, tool_env: dict[str, str]
) -> None:
    """apt revalidates InRelease with If-Modified-Since (whole seconds). The InRelease it holds is
    dated a few seconds ahead here, as if the next publish came within the same second: that
    publish must still be answered 200, not 304 (which would leave apt on the old packages)."""
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    publish_artifacts(repo, keydir, [build_deb(tmp_path / "a", "4.0.0")])
    inrelease = repo / "apt/dists/stable/InRelease"
    ahead = int(time.time()) + 3
    os.utime(inrelease, (ahead, ahead))
    with StaticServer(repo) as server:
        apt = AptClient(tmp_path / "apt", tool_env).setup(
            server.url, repo / "keys/archive-keyring.gpg"
        )
        assert apt.run("update", "--error-on=any").returncode == 0
        publish_artifacts(repo, keydir, [build_deb(tmp_path / "b", "4.1.0")])
        assert inrelease.stat().st_mtime > ahead
        assert apt.run("update", "--error-on=any").returncode == 0
        assert apt.run("download", "aliyun-assist=4.1.0").returncode == 0


@pytest.mark.parametrize("publishes", [1, 2], ids=["one-publish", "two-publishes"])
def test_dnf_client_holding_an_older_repomd_still_gets_its_metadata(
    keydir: Path, tmp_path: Path, tool_env: dict[str, str], publishes: int
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo, keydir, {})
    publish_artifacts(repo, keydir, [build_rpm(tmp_path / "a", keydir, "3.0.0")])
    newer = [build_rpm(tmp_path / f"b{n}", keydir, f"3.{n + 1}.0") for n in range(publishes)]
    with StaticServer(repo) as server:
        dnf = DnfClient(tmp_path / "dnf", tool_env).setup(server.url)
        seen = publish_once_when(
            server, "primary.xml", lambda: [publish_artifacts(repo, keydir, [r]) for r in newer]
        )
        result = dnf.run("install", "aliyun-assist")
        assert result.returncode == 0, result.stdout + result.stderr
        assert seen, "dnf did not fetch primary.xml"
        assert dnf.installed("aliyun-assist").stdout.strip() == "aliyun-assist-3.0.0-1.x86_64"
