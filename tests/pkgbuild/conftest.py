"""Shared pkgbuild fixtures: one key directory and one set of built artifacts per session.

`keydir` runs keygen once (thresholds 1); `other_keydir` is a second, unrelated key set (an
attacker's); `keydir_factory(thresholds)` makes fresh ones per test. `built_artifacts` builds
aliyun-assist 1.0.0 for the host arch in all four formats once, with --no-vendor, and returns
{format: Path}; `artifact_builder(version, formats=…, arch=…, package=…, source=…)` builds and
memoises any other set. Session-scoped results are shared read-only: copy before you modify.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pkgbuild.keys import generate_keys, stop_gpg_agent


def make_keydir(base: Path, thresholds: dict[str, int] | None = None) -> Path:
    """Run keygen into a fresh directory under `base`."""
    keydir = base / "keys"
    generate_keys(keydir, thresholds)
    return keydir


@pytest.fixture(scope="session")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A KEYDIR made once per session by keygen (read-only for tests)."""
    path = make_keydir(tmp_path_factory.mktemp("keydir"))
    yield path
    stop_gpg_agent(path)


@pytest.fixture
def keydir_factory(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Make fresh key directories (optionally with thresholds); their gpg-agents stop afterwards."""
    numbers = itertools.count()
    yield from keydir_maker(lambda: tmp_path / f"k{next(numbers)}")


@pytest.fixture(scope="module")
def fresh_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Path]]:
    """Make key directories a module may modify (rotation, other expiries, thresholds)."""
    yield from keydir_maker(lambda: tmp_path_factory.mktemp("k"))


def keydir_maker(new_base: Callable[[], Path]) -> Iterator[Callable[..., Path]]:
    """A fixture body: `make(thresholds)` runs keygen under a fresh `new_base()`; the gpg-agents
    of every directory made stop when the fixture ends."""
    made: list[Path] = []

    def make(thresholds: dict[str, int] | None = None) -> Path:
        path = make_keydir(new_base(), thresholds)
        made.append(path)
        return path

    yield make
    for path in made:
        stop_gpg_agent(path)


@pytest.fixture(scope="session")
def other_keydir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A second, unrelated KEYDIR: an attacker's or a stale key set."""
    path = make_keydir(tmp_path_factory.mktemp("other-keydir"))
    yield path
    stop_gpg_agent(path)


class ArtifactBuilder:
    """Build artifacts once per distinct request in a session (memoised by its arguments)."""

    def __init__(self, base: Path, keydir: Path) -> None:
        self.base = base
        self.keydir = keydir
        self._built: dict[tuple[object, ...], dict[str, Path]] = {}

    def __call__(
        self,
        version: str,
        formats: tuple[str, ...] = ("deb", "rpm", "exe", "tar.gz"),
        arch: str = "x86_64",
        package: str = "aliyun-assist",
        source: Path | None = None,
    ) -> dict[str, Path]:
        """{format: path} of NAME version V for `arch`, built with --no-vendor."""
        from pkgbuild.formats import BuildRequest, build_artifacts

        key = (version, formats, arch, package, source)
        if key not in self._built:
            out = self.base / f"dist-{len(self._built)}"
            request = BuildRequest(
                version=version, keys=self.keydir, source=source, arches=[arch],
                formats=list(formats), package=package, out=out, vendor=False,
            )  # fmt: skip
            self._built[key] = {a.format: a.path for a in build_artifacts(request)}
        return dict(self._built[key])


@pytest.fixture(scope="session")
def artifact_builder(tmp_path_factory: pytest.TempPathFactory, keydir: Path) -> ArtifactBuilder:
    """Build (and cache for the session) artifacts signed with `keydir`; treat them read-only."""
    return ArtifactBuilder(tmp_path_factory.mktemp("artifacts"), keydir)


@pytest.fixture(scope="session")
def built_artifacts(artifact_builder: ArtifactBuilder) -> dict[str, Path]:
    """aliyun-assist 1.0.0 for the host arch in all four formats: {"deb": Path, "rpm": …}."""
    import platform

    from common.platform import normalize_arch

    return artifact_builder("1.0.0", arch=normalize_arch(platform.machine()))
