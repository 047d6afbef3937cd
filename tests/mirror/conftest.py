"""Fixtures for mirror tests: a real release repository built with assist-pkgbuild."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.httpserver import StaticServer
from devkit.release import Release, make_deb, make_rpm, make_tarball, pkgbuild


@pytest.fixture(scope="session")
def release_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys = tmp_path_factory.mktemp("mirror-keys") / "keys"
    pkgbuild("keygen", "--out", str(keys))
    return keys


@pytest.fixture(scope="session")
def origin(tmp_path_factory: pytest.TempPathFactory, release_keys: Path) -> Release:
    """demo 1.0 and 2.0 as deb + rpm + tar.gz, and tool 0.1 as a deb, in channel stable."""
    work = tmp_path_factory.mktemp("mirror-origin")
    repo = work / "repo"
    pkgbuild("init", "--repo", str(repo), "--keys", str(release_keys))
    result = Release(repo, release_keys, work)
    art = work / "artifacts"
    art.mkdir()
    result.publish(
        make_deb(art, "demo", "1.0"),
        make_rpm(art, release_keys, "demo", "1.0"),
        make_tarball(art, "demo", "1.0"),
        make_deb(art, "tool", "0.1"),
    )
    result.publish(
        make_deb(art, "demo", "2.0"),
        make_rpm(art, release_keys, "demo", "2.0"),
        make_tarball(art, "demo", "2.0"),
    )
    return result


@pytest.fixture
def upstream(origin: Release, tmp_path: Path) -> Iterator[tuple[Release, StaticServer]]:
    """A private copy of the origin repository served on loopback."""
    copy = origin.copy(tmp_path / "upstream")
    with StaticServer(copy.repo) as server:
        yield copy, server
