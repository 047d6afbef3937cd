"""Defaults that do no harm, through the real console scripts: read-only commands on a machine
with no agent create nothing at the default prefix (pointed at a temp dir through
ALIYUN_ASSIST_PREFIX, the variable the default comes from) and say so plainly; `list` works from
--trust-root alone; a region typo is refused by every command that takes --region, before
anything is written; a wrong --trust-root gets a hint that names --trust-root."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.httpserver import StaticServer
from devkit.release import init_repo, keygen

pytestmark = pytest.mark.xdist_group("install-defaults")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An (empty) signed repository and, for the attack, the root of another one."""
    base = tmp_path_factory.mktemp("defaults")
    keys = keygen(base / "keys")
    other = keygen(base / "other-keys")
    return {"keys": keys, "other": other, "repo": init_repo(base / "repo", keys)}


@pytest.fixture
def mirror(repo: dict[str, Path]) -> Iterator[StaticServer]:
    with StaticServer(repo["repo"]) as server:
        yield server


@pytest.fixture
def default_prefix(tmp_path: Path) -> Path:
    """Where the default prefix points for the command (it must not appear)."""
    return tmp_path / "usr-local-share-aliyun-assist"


def run(default_prefix: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A console script with no --prefix, its default prefix redirected to a temp path."""
    env = {**os.environ, "ALIYUN_ASSIST_PREFIX": str(default_prefix)}
    env.pop("ALIYUN_ASSIST_REGION", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def install_list(
    repo: dict[str, Path], mirror: StaticServer, default_prefix: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`assist-install list --mirror M --trust-root R EXTRA…` with the default prefix."""
    trust_root = str(repo["keys"] / "root.json")
    return run(
        default_prefix,
        "installer.cli",
        "list",
        "--mirror",
        mirror.url,
        "--trust-root",
        trust_root,
        *extra,
    )


def test_list_without_an_install_works_from_trust_root_and_creates_nothing(
    repo: dict[str, Path], mirror: StaticServer, default_prefix: Path
) -> None:
    proc = install_list(repo, mirror, default_prefix, "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"mirror": "' + mirror.url in proc.stdout
    assert not default_prefix.exists()


@pytest.mark.parametrize(
    "module, command, code, hint",
    [
        ("installer.cli", "list", 2, "--trust-root"),  # list: the root to trust, or an install
        ("updater.cli", "check", 1, "assist-install agent"),  # update: install first
    ],
)
def test_without_an_install_it_says_so_and_creates_nothing(
    module: str, command: str, code: int, hint: str, mirror: StaticServer, default_prefix: Path
) -> None:
    proc = run(default_prefix, module, command, "--mirror", mirror.url)
    line = one_line(proc)
    assert proc.returncode == code
    assert f"no agent is installed in {default_prefix}" in line and hint in line
    assert not default_prefix.exists()


def region_commands(mirror_url: str, root: str, tmp_path: Path) -> dict[str, list[str]]:
    """Every command that takes --region, with the typo cn-hangzou."""
    remote = ["--mirror", mirror_url, "--trust-root", root, "--region", "cn-hangzou"]
    return {
        "install-list": ["installer.cli", "list", *remote],
        "install-install": ["installer.cli", "install", "hello", "--format", "deb", *remote],
        "install-agent": ["installer.cli", "agent", "--service", "none", *remote],
        "update-check": ["updater.cli", "check", *remote],
        "update-apply": ["updater.cli", "apply", *remote],
        "mirror-sync": [
            "mirror.cli",
            "sync",
            "--region",
            "cn-hangzou",
            "--upstream",
            mirror_url,
            "--root",
            str(tmp_path / "mirror"),
            "--trust-root",
            root,
        ],
    }


@pytest.mark.parametrize("name", list(region_commands("", "", Path())))
def test_region_typo_is_refused_before_anything_is_written(
    name: str,
    repo: dict[str, Path],
    mirror: StaticServer,
    default_prefix: Path,
    tmp_path: Path,
) -> None:
    argv = region_commands(mirror.url, str(repo["keys"] / "root.json"), tmp_path)[name]
    proc = run(default_prefix, *argv)
    line = one_line(proc)
    assert proc.returncode == 2
    assert "unknown region 'cn-hangzou'" in line and "cn-hangzhou" in line
    assert not default_prefix.exists()
    assert not (tmp_path / "mirror").exists()


def test_known_region_is_accepted(
    repo: dict[str, Path], mirror: StaticServer, default_prefix: Path
) -> None:
    proc = install_list(repo, mirror, default_prefix, "--region", "cn-hangzhou")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "case", ["missing", "not-json", "another-repository"], ids=lambda c: str(c)
)
def test_wrong_trust_root_gets_a_hint_naming_trust_root(
    case: str,
    repo: dict[str, Path],
    mirror: StaticServer,
    default_prefix: Path,
    tmp_path: Path,
) -> None:
    roots: dict[str, Any] = {
        "missing": tmp_path / "nope" / "root.json",
        "not-json": tmp_path / "root.json",
        "another-repository": repo["other"] / "root.json",
    }
    (tmp_path / "root.json").write_text("not json\n")
    root = str(roots[case])
    proc = run(
        default_prefix, "installer.cli", "list", "--mirror", mirror.url, "--trust-root", root
    )
    line = one_line(proc)
    assert f"--trust-root {root}" in line
    # a root that does not sign this repository is still a verification failure (fail closed)
    assert proc.returncode == (4 if case == "another-repository" else 2)
    assert not default_prefix.exists()


@pytest.mark.parametrize(
    "argv",
    [["updater.cli", "status"], ["updater.cli", "schedule"], ["agent.cli", "status"]],
    ids=lambda a: " ".join(a),
)
def test_other_read_only_commands_create_nothing(argv: list[str], default_prefix: Path) -> None:
    """Regression guard (these already wrote nothing): status and schedule on no install."""
    run(default_prefix, *argv)
    assert not default_prefix.exists()
