"""The SendFile writer on a real filesystem (agent/filewrite.py): atomic, owner and mode, no
symlink anywhere along TargetDir, Overwrite, the size limit, the documented error codes."""

from __future__ import annotations

import base64
import os
import pwd
import stat
from pathlib import Path

import pytest

from agent.filewrite import MAX_CONTENT, FileRefused, FileTask, write_file

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="giving a file to another user needs root")


def task(target: Path | str, **fields: object) -> FileTask:
    values: dict[str, object] = {
        "invoke_id": "f-test",
        "name": "app.conf",
        "content": b"key=value\n",
        "target_dir": str(target),
        "file_owner": pwd.getpwuid(os.geteuid()).pw_name,
        "file_group": __import__("grp").getgrgid(os.getegid()).gr_name,
    }
    values.update(fields)
    return FileTask(**values)  # type: ignore[arg-type]


def refused(t: FileTask) -> str:
    with pytest.raises(FileRefused) as info:
        write_file(t)
    return info.value.code


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under `path` with its mode and content (links by target)."""
    found: dict[str, tuple[int, bytes]] = {}
    for entry in sorted(path.rglob("*")):
        info = entry.lstat()
        data = b""
        if stat.S_ISREG(info.st_mode):
            data = entry.read_bytes()
        elif stat.S_ISLNK(info.st_mode):
            data = os.readlink(entry).encode()
        found[str(entry.relative_to(path))] = (info.st_mode, data)
    return found


@needs_root
def test_file_lands_with_mode_and_owner_nobody_and_missing_dirs_are_made(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "app" / "conf.d"
    path = write_file(
        task(target, file_mode="0640", file_owner="nobody", file_group="nogroup", content=b"x\n")
    )
    written = target / "app.conf"
    assert path == str(written)
    info = written.stat()
    assert written.read_bytes() == b"x\n"
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_uid == pwd.getpwnam("nobody").pw_uid
    assert info.st_gid == __import__("grp").getgrnam("nogroup").gr_gid
    assert sorted(p.name for p in target.iterdir()) == ["app.conf"]  # no temp file left
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_default_mode_is_0644_and_setuid_bits_survive_chown(tmp_path: Path) -> None:
    write_file(task(tmp_path))
    assert stat.S_IMODE((tmp_path / "app.conf").stat().st_mode) == 0o644
    write_file(task(tmp_path, name="tool", file_mode="4755"))
    assert stat.S_IMODE((tmp_path / "tool").stat().st_mode) == 0o4755


def test_target_dir_that_is_a_symlink_out_is_refused_and_nothing_written(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to(outside)
    before = snapshot(tmp_path)
    assert refused(task(allowed / "link")) == "FilePathInvalid"
    assert refused(task(allowed / "link" / "deeper")) == "FilePathInvalid"
    assert snapshot(tmp_path) == before
    assert list(outside.iterdir()) == []


def test_symlink_anywhere_along_the_path_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real)
    before = snapshot(tmp_path)
    assert refused(task(tmp_path / "alias" / "sub")) == "FilePathInvalid"
    assert refused(task(str(tmp_path / "real" / ".." / "alias"))) == "FilePathInvalid"
    assert snapshot(tmp_path) == before


def test_file_in_place_of_a_directory_and_relative_paths_are_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a dir")
    assert refused(task(tmp_path / "plain" / "sub")) == "FilePathInvalid"
    assert refused(task("relative/dir")) == "FilePathInvalid"
    assert refused(task("C:\\Windows\\Temp")) == "FilePathInvalid"


def test_overwrite_false_keeps_the_existing_file_and_true_replaces_it(tmp_path: Path) -> None:
    existing = tmp_path / "app.conf"
    existing.write_bytes(b"old\n")
    assert refused(task(tmp_path, content=b"new\n")) == "FileAlreadyExists"
    assert existing.read_bytes() == b"old\n"
    inode = existing.stat().st_ino
    write_file(task(tmp_path, content=b"new\n", overwrite=True))
    assert existing.read_bytes() == b"new\n"
    assert existing.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf"]


def test_overwrite_replaces_a_symlink_itself_never_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    target = tmp_path / "dir"
    target.mkdir()
    (target / "app.conf").symlink_to(victim)
    assert refused(task(target)) == "FileAlreadyExists"
    write_file(task(target, overwrite=True, content=b"new\n"))
    assert victim.read_bytes() == b"precious\n"
    assert not (target / "app.conf").is_symlink()
    assert (target / "app.conf").read_bytes() == b"new\n"


def test_size_limit(tmp_path: Path) -> None:
    write_file(task(tmp_path, name="max", content=b"a" * MAX_CONTENT))
    assert (tmp_path / "max").stat().st_size == MAX_CONTENT
    assert refused(task(tmp_path, name="big", content=b"a" * (MAX_CONTENT + 1))) == (
        "FileContentTooLarge"
    )
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"file_owner": "no-such-user-xyz"}, "AccountNotExists"),
        ({"file_group": "no-such-group-xyz"}, "UserGroupNotExists"),
        ({"file_mode": "0999"}, "FileAuthorityInvalid"),
        ({"file_mode": "17777"}, "FileAuthorityInvalid"),
        ({"name": "../escape"}, "FileNameInvalid"),
        ({"name": ".."}, "FileNameInvalid"),
        ({"name": ""}, "FileNameInvalid"),
    ],
)
def test_documented_error_codes(tmp_path: Path, fields: dict[str, object], code: str) -> None:
    assert refused(task(tmp_path / "t", **fields)) == code
    assert not (tmp_path / "t").exists()  # refused before anything was made


def test_from_wire_decodes_base64_and_refuses_garbage() -> None:
    raw = {"invoke_id": "f-1", "name": "n", "content": base64.b64encode(b"\x00\xff").decode()}
    parsed = FileTask.from_wire({**raw, "target_dir": "/tmp"})
    assert parsed.content == b"\x00\xff" and parsed.file_mode == "0644"
    assert parsed.file_owner == "root" and parsed.overwrite is False
    with pytest.raises(ValueError):
        FileTask.from_wire({**raw, "content": "not base64!"})
