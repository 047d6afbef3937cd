"""The whole chain over loopback: origin repository (assist-pkgbuild) -> assist-mirror sync
--region cn-hangzhou --upstream -> assist-mirror serve -> apt-get and dnf install from the
mirror with their own signature checks on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import requests
from mirror_testlib import mirror_cli, serving, sync_args


@pytest.fixture
def served_mirror(upstream, tmp_path: Path):
    origin, server = upstream
    root = tmp_path / "mirror"
    proc = mirror_cli(*sync_args(origin, server.url, root), "--json")
    report = json.loads(proc.stdout)
    assert report["changed"] and report["fetched_files"] > 0
    with serving(root) as url:
        yield origin, root, url


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_apt_get_installs_from_the_mirror(served_mirror, tmp_path: Path, tool_env) -> None:
    origin, _root, url = served_mirror
    d = tmp_path / "apt"
    for sub in (
        "etc/apt/sources.list.d",
        "etc/apt/preferences.d",
        "etc/apt/apt.conf.d",
        "etc/apt/trusted.gpg.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/log/apt",
    ):
        (d / sub).mkdir(parents=True)
    (d / "var/lib/dpkg/status").write_text("")
    (d / "etc/apt/sources.list").write_text(
        f"deb [signed-by={origin.keyring}] {url}apt stable main\n"
    )
    opts = [
        f"-oDir={d}",
        f"-oDir::Etc={d}/etc/apt",
        f"-oDir::State::status={d}/var/lib/dpkg/status",
        "-oDebug::NoLocking=1",
        "-oAPT::Architecture=amd64",
        "-oAPT::Architectures::=amd64",
        "-oAcquire::Languages=none",
        f"-oDir::Log={d}/var/log/apt",
        f"-oDPkg::Options::=--root={d}",
        f"-oDPkg::Options::=--admindir={d}/var/lib/dpkg",
        "-oDPkg::Options::=--force-script-chrootless",
        "-oDPkg::Options::=--force-not-root",
        f"-oDPkg::Options::=--log={d}/var/log/dpkg.log",
    ]
    update = run(["apt-get", *opts, "update"], tool_env)
    assert "InRelease" in update.stdout and "NO_PUBKEY" not in update.stdout + update.stderr
    run(["apt-get", *opts, "install", "-y", "demo"], tool_env)
    assert (d / "opt/demo/VERSION").read_text() == "2.0\n"
    status = (d / "var/lib/dpkg/status").read_text()
    assert "Package: demo\n" in status and "Status: install ok installed" in status


def test_apt_refuses_the_mirror_with_another_key(served_mirror, tmp_path: Path, tool_env) -> None:
    """Signature checks really are on: with a different signed-by key apt update fails."""
    from devkit.release import pkgbuild

    _origin, _root, url = served_mirror
    other = tmp_path / "other"
    pkgbuild("keygen", "--out", str(other))
    d = tmp_path / "apt"
    (d / "var/lib/apt/lists/partial").mkdir(parents=True)
    (d / "etc/apt").mkdir(parents=True)
    (d / "var/lib/dpkg").mkdir(parents=True)
    (d / "var/lib/dpkg/status").write_text("")
    keyring = other / "public" / "archive-keyring.gpg"
    (d / "etc/apt/sources.list").write_text(f"deb [signed-by={keyring}] {url}apt stable main\n")
    proc = subprocess.run(
        [
            "apt-get",
            f"-oDir={d}",
            f"-oDir::Etc={d}/etc/apt",
            f"-oDir::State::status={d}/var/lib/dpkg/status",
            "-oDebug::NoLocking=1",
            "-oAPT::Update::Error-Mode=any",
            "update",
        ],
        capture_output=True,
        text=True,
        env=tool_env,
        check=False,
    )
    assert proc.returncode != 0 and "NO_PUBKEY" in proc.stdout + proc.stderr


def test_dnf_installs_from_the_mirror(served_mirror, tmp_path: Path, tool_env) -> None:
    _origin, _root, url = served_mirror
    repos = tmp_path / "repos"
    repos.mkdir()
    (repos / "assist.repo").write_text(
        f"[assist]\nname=assist\nbaseurl={url}yum/stable/\ngpgcheck=1\nrepo_gpgcheck=1\n"
        f"gpgkey={url}keys/RPM-GPG-KEY-assist\n"
    )
    installroot = tmp_path / "root"
    run(
        [
            "dnf",
            "-y",
            "--installroot",
            str(installroot),
            f"--setopt=reposdir={repos}",
            f"--setopt=cachedir={tmp_path / 'cache'}",
            "--releasever",
            "1",
            "--disablerepo=*",
            "--enablerepo=assist",
            "install",
            "demo",
        ],
        tool_env,
    )
    assert (installroot / "opt/demo/VERSION").read_text() == "2.0\n"
    query = run(["rpm", "--root", str(installroot), "-q", "demo"], tool_env)
    assert query.stdout.strip() == "demo-2.0-1.x86_64"


def test_serve_ranges_etags_types_and_no_traversal(served_mirror) -> None:
    _origin, root, url = served_mirror
    whole = requests.get(url + "metadata/timestamp.json", timeout=5)
    assert whole.status_code == 200 and whole.headers["content-type"] == "application/json"
    assert whole.content == (root / "metadata/timestamp.json").read_bytes()
    etag = whole.headers["etag"]
    assert (
        requests.get(
            url + "metadata/timestamp.json", headers={"If-None-Match": etag}, timeout=5
        ).status_code
        == 304
    )
    part = requests.get(url + "metadata/timestamp.json", headers={"Range": "bytes=5-9"}, timeout=5)
    assert part.status_code == 206 and part.content == whole.content[5:10]
    deb = next((root / "apt" / "pool").rglob("*.deb")).relative_to(root).as_posix()
    assert (
        requests.get(url + deb, timeout=5).headers["content-type"]
        == "application/vnd.debian.binary-package"
    )
    assert (
        requests.get(url + "apt/dists/stable/InRelease", timeout=5)
        .headers["content-type"]
        .startswith("text/plain")
    )
    for bad in (
        ".mirror/state.json",
        ".mirror/keyring.gpg",
        "%2e%2e/%2e%2e/etc/passwd",
        "apt/.dists-1/x",
    ):
        assert requests.get(url + bad, timeout=5).status_code == 404, bad
    raw = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--path-as-is",
            url + "../../../etc/passwd",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert raw.stdout == "404"


def test_mirrors_chain_into_a_tree(served_mirror, tmp_path: Path) -> None:
    """A region mirror can sync from its parent region's mirror (assist-mirror serve)."""
    origin, parent_root, url = served_mirror
    child = tmp_path / "child"
    mirror_cli(
        "sync",
        "--region",
        "cn-shanghai",
        "--upstream",
        url,
        "--root",
        str(child),
        "--trust-root",
        str(origin.trust_root),
        "--keyring",
        str(origin.keyring),
    )
    assert mirror_cli("verify", "--root", str(child)).returncode == 0
    for rel in (
        "metadata/timestamp.json",
        "apt/dists/stable/InRelease",
        "yum/stable/repodata/repomd.xml",
    ):
        assert (child / rel).read_bytes() == (parent_root / rel).read_bytes()
    status = json.loads(mirror_cli("status", "--root", str(child), "--json").stdout)
    assert status["public_url"] == "http://axt.cn-shanghai.alibaba-inc.com:8080/assist/"
    assert status["packages"]["demo"] == ["1.0", "2.0"]


def test_serve_handles_many_concurrent_clients(served_mirror) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _origin, root, url = served_mirror
    rpm = next((root / "yum/stable/Packages").glob("*.rpm"))
    expected = rpm.read_bytes()
    rel = rpm.relative_to(root).as_posix()

    def fetch(i: int) -> bool:
        if i % 2:
            part = requests.get(url + rel, headers={"Range": f"bytes={i}-"}, timeout=30)
            return part.status_code == 206 and part.content == expected[i:]
        return requests.get(url + rel, timeout=30).content == expected

    with ThreadPoolExecutor(64) as pool:
        assert all(pool.map(fetch, range(256)))
