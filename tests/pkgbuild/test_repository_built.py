"""The artifacts `assist-pkgbuild build` makes, published and read back by the real clients.

Uses the session's `built_artifacts` (aliyun-assist 1.0.0, all four formats, --no-vendor).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_repository_support import (
    AptClient,
    DnfClient,
    checked,
    expected_custom,
    install_sh_stub,
    osslsigncode_verify,
    tuf_updater,
)

from devkit.httpserver import StaticServer
from pkgbuild.naming import parse_artifact_filename
from pkgbuild.repository import init_repository, publish_artifacts

pytestmark = pytest.mark.xdist_group("repository-clients")


@pytest.fixture(scope="module")
def built_repo(
    keydir: Path, built_artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    """A repository holding the session's built 1.0.0 artifacts, served on loopback."""
    repo = tmp_path_factory.mktemp("built") / "repo"
    init_repository(repo, keydir, {})
    paths = publish_artifacts(repo, keydir, list(built_artifacts.values()))
    with StaticServer(repo) as server:
        yield SimpleNamespace(
            repo=repo, keys=keydir, artifacts=built_artifacts, paths=paths, url=server.url
        )


def test_tuf_client_gets_every_built_artifact(built_repo: SimpleNamespace, tmp_path: Path) -> None:
    updater = tuf_updater(tmp_path, built_repo.keys / "root.json", built_repo.url)
    updater.refresh()
    assert sorted(built_repo.artifacts) == ["deb", "exe", "rpm", "tar.gz"]
    for fmt, artifact in built_repo.artifacts.items():
        info = parse_artifact_filename(artifact.name)
        target = updater.get_targetinfo(info.target_path)
        assert target is not None
        assert target.length == artifact.stat().st_size
        assert target.hashes["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
        assert target.custom == expected_custom(info, artifact) and target.custom["format"] == fmt
        assert Path(updater.download_target(target)).read_bytes() == artifact.read_bytes()


def test_apt_downloads_the_built_deb(
    built_repo: SimpleNamespace, tmp_path: Path, tool_env: dict[str, str]
) -> None:
    apt = AptClient(tmp_path / "apt", tool_env).setup(
        built_repo.url, built_repo.repo / "keys/archive-keyring.gpg"
    )
    assert apt.run("update", "--error-on=any").returncode == 0
    result = apt.run("download", "aliyun-assist")
    assert result.returncode == 0, result.stdout + result.stderr
    deb = built_repo.artifacts["deb"]
    assert (tmp_path / "apt/download" / deb.name).read_bytes() == deb.read_bytes()


def test_dnf_installs_the_built_rpm(
    built_repo: SimpleNamespace, tmp_path: Path, tool_env: dict[str, str]
) -> None:
    dnf = DnfClient(tmp_path / "dnf", tool_env).setup(built_repo.url)
    install_sh_stub(tmp_path / "dnf/installroot", tmp_path)
    # no shell in the empty installroot: the package's scriptlets cannot run there
    result = dnf.run("--setopt=tsflags=noscripts", "install", "aliyun-assist")
    assert result.returncode == 0, result.stdout + result.stderr
    assert dnf.installed("aliyun-assist").stdout.strip() == "aliyun-assist-1.0.0-1.x86_64"
    version = tmp_path / "dnf/installroot/usr/local/share/aliyun-assist/versions/1.0.0/VERSION"
    assert version.read_text().strip() == "1.0.0"


def test_native_signatures_of_published_built_artifacts_verify(
    built_repo: SimpleNamespace, tmp_path: Path
) -> None:
    rpm = built_repo.repo / "yum/stable/Packages" / built_repo.artifacts["rpm"].name
    checked(
        [
            "rpmkeys",
            "--dbpath",
            str(tmp_path),
            "--import",
            str(built_repo.repo / "keys/RPM-GPG-KEY-assist"),
        ]
    )
    assert (
        checked(["rpmkeys", "--dbpath", str(tmp_path), "-K", str(rpm)])
        .strip()
        .endswith("digests signatures OK")
    )
    exe = built_repo.artifacts["exe"]
    stored = built_repo.repo / "targets/aliyun-assist/1.0.0"
    published_exe = next(stored.glob(f"*.{exe.name}"))
    result = osslsigncode_verify(published_exe, built_repo.repo / "keys/authenticode.crt")
    assert result.returncode == 0, result.stdout + result.stderr
