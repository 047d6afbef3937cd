"""Platform detection and the CLI error edge."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from common.cli import run_cli
from common.errors import VerificationError
from common.platform import (
    detect_init_system,
    detect_package_format,
    detect_platform,
    normalize_arch,
)


def test_arch_aliases() -> None:
    assert normalize_arch("AMD64") == "x86_64"
    assert normalize_arch("arm64") == "aarch64"


def test_package_format_by_database(tmp_path: Path) -> None:
    assert detect_package_format("windows", tmp_path) == "exe"
    assert detect_package_format("linux", tmp_path) == "tar.gz"
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text("")
    assert detect_package_format("linux", tmp_path) == "deb"


def test_init_system(tmp_path: Path) -> None:
    assert detect_init_system("linux", tmp_path) == "none"
    (tmp_path / "etc/init.d").mkdir(parents=True)
    assert detect_init_system("linux", tmp_path) == "sysv"
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert detect_init_system("linux", tmp_path) == "systemd"


def test_this_machine() -> None:
    info = detect_platform()
    assert info.os == "linux" and info.package_format == "deb"


def test_errors_become_one_line_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise VerificationError("bad signature on x.rpm", hint="do not install it")

    code = run_cli("assist-x", argparse.ArgumentParser(), fail, [])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4
    assert err == [
        "assist-x: error: bad signature on x.rpm — do not install it [verification-failed]"
    ]


def test_unexpected_errors_have_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    def crash(args: argparse.Namespace) -> int:
        raise KeyError("boom")

    assert run_cli("assist-x", argparse.ArgumentParser(), crash, []) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--debug" in err


def test_debug_before_a_subcommand_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    from common.cli import add_common_options

    parser = argparse.ArgumentParser()
    add_common_options(parser)
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_common_options(sub.add_parser("go"))

    def crash(args: argparse.Namespace) -> int:
        raise KeyError("boom")

    assert run_cli("assist-x", parser, crash, ["--debug", "go"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_multi_line_tool_messages_become_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise VerificationError(
            "tar said:\n  bad header\n  at offset 0", hint="re-export\nthe bundle"
        )

    run_cli("assist-x", argparse.ArgumentParser(), fail, [])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tar said: bad header at offset 0 — re-export the bundle" in err
