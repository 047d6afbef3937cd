"""The .tar.gz: entries relative to the prefix, root-owned, sane modes, reproducible."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

from pkgbuild.formats import BuildRequest, build_artifacts


def test_entries_owner_and_modes(built_artifacts: dict[str, Path]) -> None:
    tarball = built_artifacts["tar.gz"]
    assert tarball.name == "aliyun-assist-1.0.0-linux-x86_64.tar.gz"
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "versions/1.0.0"
    assert all(n.startswith("versions/1.0.0/") for n in names[1:])
    assert not any(".." in n.split("/") or n.startswith("/") for n in names)
    assert "versions/1.0.0/bin/assist-agent" in names and "versions/1.0.0/VERSION" in names
    assert not any("__pycache__" in n for n in names)
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "root", "root")
        assert member.isdir() or member.isfile(), member.name
        assert member.mode in (0o755, 0o644), (member.name, oct(member.mode))
        if member.name.startswith("versions/1.0.0/bin/") or member.isdir():
            assert member.mode == 0o755
    by_name = {m.name: m for m in members}
    assert by_name["versions/1.0.0/share/root.json"].mode == 0o644


def test_rebuild_is_byte_identical(keydir: Path, tmp_path: Path) -> None:
    def build(out: Path) -> bytes:
        request = BuildRequest(
            version="3.1.4", keys=keydir, arches=["x86_64"], formats=["tar.gz"], out=out,
            vendor=False,
        )  # fmt: skip
        (artifact,) = build_artifacts(request)
        return artifact.path.read_bytes()

    assert build(tmp_path / "a") == build(tmp_path / "b")


def test_plain_package_tarball(
    artifact_builder: Callable[..., dict[str, Path]], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (src / "bin" / "hello").chmod(0o700)
    (src / "README").write_text("hi\n")
    tarball = artifact_builder("0.3", formats=("tar.gz",), package="hello-tool", source=src)[
        "tar.gz"
    ]
    assert tarball.name == "hello-tool-0.3-linux-x86_64.tar.gz"
    with tarfile.open(tarball) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert modes == {"bin": 0o755, "bin/hello": 0o755, "README": 0o644}
