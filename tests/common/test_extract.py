"""The one safe extractor (common/extract.py): members are created without following any link."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from common.errors import VerificationError
from common.extract import extract_tar, member_path


def make_tar(members: list[tuple[str, bytes, str]]) -> tarfile.TarFile:
    """An in-memory tar of (name, type, linkname or file content) members, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size, info.mode = len(extra), 0o644
                tar.addfile(info, io.BytesIO(extra.encode()))
            else:
                info.linkname, info.mode = extra, 0o700
                tar.addfile(info)
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r")


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "victim").write_text("untouched\n")
    tmp_path.chmod(0o755)
    out = tmp_path / "dest"
    out.mkdir()
    return out


def test_ordinary_tree_with_inner_links_is_unpacked(dest: Path) -> None:
    tar = make_tar(
        [
            ("bin", tarfile.DIRTYPE, ""),
            ("bin/tool", tarfile.REGTYPE, "#!/bin/sh\n"),
            ("bin/alias", tarfile.SYMTYPE, "tool"),
            ("lib/a/b/deep.txt", tarfile.REGTYPE, "deep"),
            ("bin/hard", tarfile.LNKTYPE, "bin/tool"),
        ]
    )
    assert extract_tar(tar, dest) == 5
    assert (dest / "bin" / "alias").read_text() == "#!/bin/sh\n"
    assert os.path.samefile(dest / "bin" / "hard", dest / "bin" / "tool")
    assert (dest / "lib" / "a" / "b" / "deep.txt").read_text() == "deep"


@pytest.mark.parametrize(
    "members",
    [
        # a file written under a link to the tree's parent
        [
            ("up", tarfile.SYMTYPE, "l/.."),
            ("l", tarfile.SYMTYPE, "."),
            ("up/victim2", tarfile.REGTYPE, "x"),
        ],
        # a directory member over a link chain that leaves the tree (issue 10.1)
        [("l", tarfile.SYMTYPE, "."), ("a", tarfile.SYMTYPE, "l/.."), ("a", tarfile.DIRTYPE, "")],
        # a file member over an existing link (would write through it)
        [
            ("l", tarfile.SYMTYPE, "."),
            ("a", tarfile.SYMTYPE, "l/../victim"),
            ("a", tarfile.REGTYPE, "x"),
        ],
        # a link through a dangling name that only later points out
        [("a", tarfile.SYMTYPE, "x/.."), ("x", tarfile.SYMTYPE, ".")],
        # a hard link to a file reached through a link
        [("l", tarfile.SYMTYPE, ".."), ("h", tarfile.LNKTYPE, "l/victim")],
        # a hard link to a file in a directory that does not exist
        [("h", tarfile.LNKTYPE, "nodir/file")],
        # a link created inside a directory reached through a link
        [
            ("l", tarfile.SYMTYPE, "."),
            ("a", tarfile.SYMTYPE, "l/.."),
            ("a/new", tarfile.SYMTYPE, "."),
        ],
    ],
    ids=[
        "file-under-link",
        "dir-over-chain",
        "file-over-link",
        "dangling-chain",
        "hardlink-through-link",
        "hardlink-to-nothing",
        "link-under-link",
    ],
)
def test_refused_archive_changes_nothing_outside_dest(
    dest: Path, members: list[tuple[str, bytes, str]]
) -> None:
    parent = dest.parent
    before = {
        p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in parent.iterdir() if p != dest
    }
    parent_stat = (parent.stat().st_mode, parent.stat().st_mtime_ns)
    with pytest.raises(VerificationError):
        extract_tar(make_tar(members), dest)
    assert (parent.stat().st_mode, parent.stat().st_mtime_ns) == parent_stat
    assert {
        p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in parent.iterdir() if p != dest
    } == before
    assert (parent / "victim").read_text() == "untouched\n"


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a\\b", "dev", "fifo"])
def test_unsafe_names_and_types_are_refused(dest: Path, name: str) -> None:
    kind = {"dev": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}.get(name, tarfile.REGTYPE)
    with pytest.raises(VerificationError):
        extract_tar(make_tar([(name, kind, "")]), dest)
    assert not (dest.parent / "x").exists()


def test_member_path_keeps_the_prefix_and_its_ancestors() -> None:
    assert member_path("./usr/", "usr/share/") is None
    assert member_path("usr/share/x/y", "usr/share/") == "x/y"
    with pytest.raises(VerificationError):
        member_path("etc/x", "usr/share/")


def deep_chain_members(levels: int) -> list[tuple[str, bytes, str]]:
    """Links in a directory deeper than PATH_MAX that climb `levels` directories, each link
    lexically inside, then one through the top of the chain to a file of the host."""
    deep = "/".join(["d" * 200] * 25)  # 5,024 characters: longer than PATH_MAX (4,096)
    members = [(f"{deep}/l", tarfile.SYMTYPE, ".")]
    previous = "l"
    for step in range(levels):
        members.append((f"{deep}/u{step}", tarfile.SYMTYPE, f"{previous}/.."))
        previous = f"u{step}"
    members.append((f"{deep}/escape", tarfile.SYMTYPE, f"{previous}/etc/hostname"))
    return members


def test_a_link_chain_deeper_than_path_max_is_refused(dest: Path) -> None:
    """The links are made without being followed, but the final check of where they lead must
    see them: a tree too deep to walk by path is refused, not skipped (it led to /etc here)."""
    with pytest.raises(VerificationError, match="too deep|cannot check"):
        extract_tar(make_tar(deep_chain_members(40)), dest)


def test_a_directory_nesting_too_deep_to_walk_is_refused_before_it_is_made(dest: Path) -> None:
    """1,500 nested directories (a 3 KB path, under PATH_MAX) made the link check and the
    caller's clean-up die of RecursionError, leaving the tree behind; now a clear refusal."""
    with pytest.raises(VerificationError, match="nested too deep"):
        extract_tar(make_tar([("a/" * 1500 + "f", tarfile.REGTYPE, "x")]), dest)
    assert list(dest.iterdir()) == []


def test_a_link_chain_longer_than_the_kernel_follows_is_a_refused_archive(dest: Path) -> None:
    """1,200 links each naming the one before: realpath recursed to a RecursionError (a crash
    with a traceback at the CLI edge); the kernel itself gives up after 40."""
    members = [("l0", tarfile.SYMTYPE, ".")]
    members += [(f"l{k}", tarfile.SYMTYPE, f"l{k - 1}") for k in range(1, 1200)]
    with pytest.raises(VerificationError, match="chain"):
        extract_tar(make_tar(members), dest)
