"""Every command's help has the same shape: descriptions, option help with defaults, one example,
and --debug/-v on every level (issue 13, "help and progress")."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import finish_parser, subcommand_paths

COMMANDS = {
    "assist-pkgbuild": "pkgbuild.cli",
    "assist-install": "installer.cli",
    "assist-update": "updater.cli",
    "assist-mirror": "mirror.cli",
    "assist-server": "server.cli",
    "assist": "server.operator_cli",
    "assist-agent": "agent.cli",
}
BIN = Path(sys.executable).parent


def finished(module_name: str) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The command's parser as run_cli shows it."""
    module = importlib.import_module(module_name)
    parser = module.build_parser()
    finish_parser(parser, module.EXAMPLES)
    return parser, module.EXAMPLES


@pytest.mark.parametrize("module_name", COMMANDS.values())
def test_every_subcommand_has_a_description_an_example_and_the_common_options(
    module_name: str,
) -> None:
    parser, examples = finished(module_name)
    for path, sub in subcommand_paths(parser):
        assert sub.description, f"{module_name} {path!r} has no description"
        assert "\n" not in sub.description.strip(), f"{path!r}: description is not one line"
        assert path in examples and sub.epilog and "example:" in sub.epilog, (
            f"{module_name} {path!r} has no example"
        )
        assert sub.prog.split()[-1] in examples[path] or not path, (
            f"{path!r}: its example does not run it: {examples[path]}"
        )
        assert "--debug" in sub._option_string_actions, f"{path!r} lacks --debug"
        assert "-v" in sub._option_string_actions, f"{path!r} lacks -v"
    assert set(examples) == {path for path, _ in subcommand_paths(parser)}, "stale examples"


@pytest.mark.parametrize("module_name", COMMANDS.values())
def test_every_option_has_help_text(module_name: str) -> None:
    parser, _ = finished(module_name)
    for path, sub in subcommand_paths(parser):
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{module_name} {path!r}: {action.option_strings or action.dest}"


def test_help_shows_defaults() -> None:
    parser, _ = finished("mirror.cli")
    serve = dict(subcommand_paths(parser))["serve"]
    text = serve.format_help()
    assert "(default: 127.0.0.1:8081)" in text, text


@pytest.mark.parametrize("command", COMMANDS)
def test_the_real_console_script_prints_its_example_and_takes_debug_first(command: str) -> None:
    proc = subprocess.run(
        [str(BIN / command), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "example:" in proc.stdout and "--debug" in proc.stdout


def test_progress_bars_name_a_file_by_its_own_name_within_80_columns() -> None:
    from common.progress import LABEL_WIDTH, display_name

    hashed = "targets/" + "ab" * 32 + ".aliyun-assist-2.2.5-linux-x86_64.tar.gz"
    assert display_name(hashed).startswith("aliyun-assist-2.2.5")
    assert len(display_name(hashed)) <= LABEL_WIDTH
    assert display_name("metadata/timestamp.json") == "timestamp.json"
