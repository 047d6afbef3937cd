"""Launcher: a command line the script runs under instead of the type's interpreter.

As the real API's `Launcher` (at most 1 KB), e.g. `python3 -u {{ACS::ScriptFileName|Ext(".py")}}`
or `env FOO=bar /bin/sh`. The line is split like a POSIX shell would (shlex, no shell runs it);
`{{ACS::ScriptFileName}}` stands for the script's path, and `|Ext(".py")` names the file's
extension. Without the placeholder the path is appended as the last argument.
"""

from __future__ import annotations

import re
import secrets
import shlex
from pathlib import Path

_PLACEHOLDER = re.compile(r"\{\{ACS::ScriptFileName(?:\|Ext\(\"([.A-Za-z0-9_-]{0,16})\"\))?\}\}")
_DEFAULT_SUFFIX = {"RunBatScript": ".bat", "RunPowerShellScript": ".ps1"}


class LauncherError(ValueError):
    """The launcher cannot be turned into a command line."""


def script_suffix(task_type: str, launcher: str = "") -> str:
    """The script file's extension: the launcher's Ext("…"), else what the interpreter expects."""
    found = _PLACEHOLDER.search(launcher)
    if found and found.group(1) is not None:
        return found.group(1)
    return _DEFAULT_SUFFIX.get(task_type, ".sh")


def launcher_argv(launcher: str, script: Path) -> list[str]:
    """The argv that runs `script` under `launcher`; LauncherError when it does not parse."""
    # the placeholder's own quotes (Ext(".py")) must not meet the shell-like split
    token = f"ACS-SCRIPT-{secrets.token_hex(8)}"
    placed = _PLACEHOLDER.sub(token, launcher)
    try:
        words = shlex.split(placed)
    except ValueError as exc:
        raise LauncherError(f"the launcher {launcher!r} does not parse: {exc}") from None
    if not words:
        raise LauncherError("the launcher is empty")
    if placed == launcher:
        return [*words, str(script)]
    return [word.replace(token, str(script)) for word in words]
