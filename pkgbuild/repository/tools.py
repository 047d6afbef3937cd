"""External tools the repository writer drives: gpg, dpkg-deb, rpm, apt-ftparchive, createrepo_c."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

from common.errors import AssistError, ToolError
from pkgbuild.keys import GPG_BATCH, gpg_env, gpg_fingerprint

log = logging.getLogger(__name__)


def run_tool(
    cmd: Sequence[str],
    *,
    hint: str,
    input_data: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    failure: type[AssistError] = ToolError,
) -> bytes:
    """Run `cmd` and return its stdout; a missing tool is a ToolError, a failure `failure`."""
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            list(cmd), input=input_data, capture_output=True, cwd=cwd, env=env, check=False
        )
    except FileNotFoundError as exc:
        raise ToolError(f"{cmd[0]} is not installed", hint="install it (make install)") from exc
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit code {proc.returncode}"
        raise failure(f"{Path(cmd[0]).name} failed: {detail}", hint=hint)
    return proc.stdout


def gpg_sign(keys: Path, data: bytes, mode: str) -> bytes:
    """Sign `data` with the release OpenPGP key: mode 'clearsign' or 'detach' (armored)."""
    flag = {"clearsign": "--clearsign", "detach": "--detach-sign"}[mode]
    env = gpg_env(keys)
    cmd = [
        "gpg",
        "--homedir",
        env["GNUPGHOME"],
        *GPG_BATCH,
        "--local-user",
        gpg_fingerprint(keys),
        "--digest-algo",
        "SHA256",
        "--armor",
        flag,
    ]
    return run_tool(
        cmd,
        input_data=data,
        env=env,
        hint="check the gpg/ directory of the key directory (assist-pkgbuild keygen)",
    )
