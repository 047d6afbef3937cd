"""User path faults at the CLI edge: a read-only filesystem, a file where a directory is needed,
a directory another user owns. Each runs the real console scripts as subprocesses and checks the
one-line error (path named, option named, exit 1, never "[internal]") and that nothing was
written. The read-only case uses a real read-only bind mount (root only), the permission case a
real unprivileged user (setpriv to nobody)."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.cli import explain_os_error, option_holding
from common.errors import NoSpaceError, PathError
from devkit.mounts import read_only_mount

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
DEAD_MIRROR = "http://127.0.0.1:9/"  # nothing listens: the path fault must come first


def run(*argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a console script (optionally as the unprivileged nobody) and capture its output."""
    cmd = [str(BIN / argv[0]), *argv[1:]]
    if user == "nobody":
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def commands(base: Path) -> dict[str, tuple[list[str], str]]:
    """Commands that write under a path the user chose, and the option that chose it."""
    return {
        "install-install": (
            ["assist-install", "install", "hello", "--format", "deb", "--prefix", f"{base}/p"]
            + ["--mirror", DEAD_MIRROR],
            "--prefix",
        ),
        "install-agent": (
            ["assist-install", "agent", "--prefix", f"{base}/p", "--mirror", DEAD_MIRROR],
            "--prefix",
        ),
        "update-apply": (
            ["assist-update", "apply", "--prefix", f"{base}/p", "--mirror", DEAD_MIRROR],
            "--prefix",
        ),
        "pkgbuild-keygen": (["assist-pkgbuild", "keygen", "--out", f"{base}/keys"], "--out"),
        "mirror-sync": (
            [
                "assist-mirror",
                "sync",
                "--region",
                "cn-hangzhou",
                "--upstream",
                DEAD_MIRROR,
                "--root",
                f"{base}/m",
                "--trust-root",
                "/dev/null",
            ],
            "--root",
        ),
    }


def assert_one_line_path_error(
    proc: subprocess.CompletedProcess[str], path: Path, option: str
) -> None:
    """Exit 1, one stderr line naming the path, what to do and the option; no [internal]."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "[internal]" not in lines[0] and "Traceback" not in proc.stderr
    assert str(path) in lines[0] and f"another {option}" in lines[0]
    assert lines[0].endswith("[bad-path]")


def tree(path: Path) -> list[str]:
    """Everything under path, for before/after comparisons."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A real read-only filesystem: a read-only bind mount of an empty directory."""
    target = tmp_path / "ro"
    with read_only_mount(target, "--bind", "-o", "ro", str(target)) as mounted:
        yield mounted


@pytest.mark.parametrize("name", list(commands(Path("/x"))))
def test_read_only_filesystem_is_a_user_error_naming_the_path(
    name: str, read_only_dir: Path
) -> None:
    argv, option = commands(read_only_dir)[name]
    proc = run(*argv)
    assert_one_line_path_error(proc, read_only_dir, option)
    assert "read-only file system" in proc.stderr
    assert tree(read_only_dir) == []


@pytest.mark.parametrize("name", list(commands(Path("/x"))))
def test_path_under_a_file_names_the_file_in_the_way(name: str, tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("keep me\n")
    argv, option = commands(blocker)[name]
    proc = run(*argv)
    assert_one_line_path_error(proc, blocker, option)
    assert f"{blocker} is a file where a directory is needed" in proc.stderr
    assert blocker.read_text() == "keep me\n"
    assert tree(tmp_path) == ["afile"]


@pytest.mark.parametrize("name", ["install-agent", "update-apply", "pkgbuild-keygen"])
def test_directory_of_another_user_is_permission_denied_not_internal(
    name: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as nobody")
    tmp_path.chmod(0o755)  # nobody may reach it…
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)  # …but not this root-owned directory
    argv, option = commands(locked)[name]
    proc = run(*argv, user="nobody")
    assert_one_line_path_error(proc, locked, option)
    assert "permission denied" in proc.stderr and "allowed to use it" in proc.stderr
    assert tree(locked) == []


def test_other_os_errors_stay_internal(capsys: pytest.CaptureFixture[str]) -> None:
    from common.cli import run_cli

    def crash(args: argparse.Namespace) -> int:
        raise OSError(errno.EIO, "Input/output error", "/dev/sdz")

    assert run_cli("assist-x", argparse.ArgumentParser(), crash, []) == 1
    assert "[internal]" in capsys.readouterr().err


def test_full_disk_is_no_space_with_exit_4() -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", "/srv/m/x")
    error = explain_os_error(exc, argparse.Namespace(root="/srv/m"))
    assert isinstance(error, NoSpaceError) and error.exit_code == 4
    assert "/srv/m/x" in error.message and "--root" in (error.hint or "")


def test_option_holding_prefers_the_deepest_directory() -> None:
    args = argparse.Namespace(keys="/k", repo="/k/repo", mirror=["http://h/"], json=True)
    assert option_holding(args, "/k/repo/metadata/1.root.json") == "--repo"
    assert option_holding(args, "/k/keys.json") == "--keys"
    assert option_holding(args, "/elsewhere") is None


def test_missing_file_is_a_path_error() -> None:
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope/root.json")
    error = explain_os_error(exc, argparse.Namespace(trust_root="/nope/root.json"))
    assert isinstance(error, PathError) and error.exit_code == 1
    assert error.message == "/nope/root.json: no such file or directory"
    assert error.hint == "check the path or pass another --trust-root"


def test_a_fault_without_a_path_does_not_suggest_another_path() -> None:
    error = explain_os_error(
        PermissionError(errno.EACCES, "Permission denied"), argparse.Namespace()
    )
    assert error.message == "permission denied"
    assert error.hint == "run as a user allowed to use it (e.g. root)"
