"""`assist-server accesskey list|disable|enable`, run as the real console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from serverkit import Api, run_sql

from devkit.server import REPO_ROOT

SCRIPT = Path(sys.executable).parent / "assist-server"


def accesskey(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "accesskey", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def listed(api: Api) -> dict:
    """This test's key as `accesskey list --json` shows it."""
    proc = accesskey("list", "--db", api.server.db_url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert api.secret not in proc.stdout  # never the secret
    mine = [k for k in json.loads(proc.stdout) if k["AccessKeyId"] == api.key_id]
    assert len(mine) == 1
    return dict(mine[0])


def test_list_shows_keys_without_secrets(api: Api) -> None:
    key = listed(api)
    assert set(key) == {"AccessKeyId", "Account", "Created", "Enabled"}
    assert key["Account"].startswith("acct-") and key["Enabled"] is True
    assert key["Created"].endswith("Z") and key["Created"][:2] == "20"
    text = accesskey("list", "--db", api.server.db_url)
    assert text.returncode == 0, text.stderr
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith(api.key_id))
    assert line.split() == [api.key_id, key["Account"], key["Created"], "yes"]
    assert api.secret not in text.stdout


def test_disabled_key_is_refused_until_enabled_again(api: Api) -> None:
    assert api.ok("DescribeCommands")["TotalCount"] == 0
    off = accesskey("disable", api.key_id, "--db", api.server.db_url)
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip() == f"{api.key_id} disabled"
    assert api.error("DescribeCommands") == (400, "InvalidAccessKeyId.Inactive")
    assert listed(api)["Enabled"] is False
    rows = run_sql(
        api.server, "SELECT enabled FROM access_keys WHERE access_key_id = ?", api.key_id
    )
    assert [bool(r[0]) for r in rows] == [False]

    on = accesskey("enable", api.key_id, "--db", api.server.db_url, "--json")
    assert on.returncode == 0, on.stderr
    assert json.loads(on.stdout) == {"AccessKeyId": api.key_id, "Enabled": True}
    assert api.ok("DescribeCommands")["TotalCount"] == 0
    assert listed(api)["Enabled"] is True


def test_unknown_key_or_database_is_a_clear_error(api: Api, tmp_path: Path) -> None:
    unknown = accesskey("disable", "LTAInope", "--db", api.server.db_url)
    assert unknown.returncode == 1
    assert unknown.stderr.count("\n") == 1 and "no AccessKey 'LTAInope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert listed(api)["Enabled"] is True  # nothing else changed

    missing = tmp_path / "typo.db"
    for args in (["list"], ["enable", api.key_id]):
        proc = accesskey(*args, "--db", f"sqlite:///{missing}")
        assert proc.returncode == 2 and "no database at" in proc.stderr, proc.stderr
    assert not missing.exists()  # a mistyped path is not created

    usage = accesskey("disable", "--db", api.server.db_url)
    assert usage.returncode == 2 and "ACCESS_KEY_ID" in usage.stderr
