"""assist-pkgbuild command line: the real console script, and its pure option parsers."""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from common.errors import UsageError
from pkgbuild.cli import parse_duration, parse_expires, parse_thresholds
from pkgbuild.keys import stop_gpg_agent

SCRIPT = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "assist-pkgbuild"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script."""
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 7 * 86400), ("12h", 43200), ("30m", 1800), ("3600s", 3600), ("2w", 14 * 86400),
     ("90", 90)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7x", "-1d", "0d", "d", "1.5h", "7 days"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(text)


def test_parse_expires_fills_defaults_and_rejects_unknown_roles() -> None:
    expires = parse_expires("timestamp=1d,root=30d")
    assert expires == {
        "timestamp": datetime.timedelta(days=1),
        "snapshot": datetime.timedelta(days=30),
        "targets": datetime.timedelta(days=90),
        "root": datetime.timedelta(days=30),
    }
    assert parse_expires(None)["timestamp"] == datetime.timedelta(days=7)
    with pytest.raises(UsageError, match="unknown role"):
        parse_expires("mirror=1d")
    with pytest.raises(UsageError, match="invalid --expires"):
        parse_expires("timestamp")


def test_parse_thresholds() -> None:
    assert parse_thresholds("root=2,targets=1") == {"root": 2, "targets": 1}
    with pytest.raises(UsageError):
        parse_thresholds("root=two")


@pytest.mark.parametrize("command", ["keygen", "build", "init", "publish", "yank", "rotate-key"])
def test_every_subcommand_has_help(command: str) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"assist-pkgbuild {command}" in proc.stdout


def test_keygen_console_script_prints_fingerprints_and_refuses_rerun(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    proc = run("keygen", "--out", str(out), "--threshold", "root=2", "--json")
    try:
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert data["roles"]["root"] == {"threshold": 2, "keys": ["root-1", "root-2"]}
        assert data == {**json.loads((out / "keys.json").read_text()), "keydir": str(out)}
        again = run("keygen", "--out", str(out))
        assert again.returncode != 0
        lines = again.stderr.strip().splitlines()
        assert len(lines) == 1 and "refusing to overwrite" in lines[0]
        assert "Traceback" not in again.stderr
        assert (
            json.loads((out / "keys.json").read_text())["gpg_fingerprint"]
            == data["gpg_fingerprint"]
        )
    finally:
        stop_gpg_agent(out)


def test_keygen_bad_threshold_is_one_line_usage_error(tmp_path: Path) -> None:
    proc = run("keygen", "--out", str(tmp_path / "k"), "--threshold", "root=0")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "threshold for root" in proc.stderr
    assert not (tmp_path / "k").exists()


def test_build_console_script_json_and_files(keydir: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    proc = run(
        "build", "--version", "2.2.5", "--keys", str(keydir), "--arch", "x86_64,aarch64",
        "--formats", "deb,tar.gz", "--out", str(out), "--no-vendor", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert sorted(Path(a["path"]).name for a in listing) == [
        "aliyun-assist-2.2.5-linux-aarch64.tar.gz",
        "aliyun-assist-2.2.5-linux-x86_64.tar.gz",
        "aliyun-assist_2.2.5_amd64.deb",
        "aliyun-assist_2.2.5_arm64.deb",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(a["path"]).name for a in listing)
    for artifact in listing:
        path = Path(artifact["path"])
        assert artifact["size"] == path.stat().st_size
        assert artifact["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert artifact["version"] == "2.2.5" and artifact["package"] == "aliyun-assist"


def test_build_plain_text_output(keydir: Path, tmp_path: Path) -> None:
    proc = run(
        "build", "--version", "1.0.0", "--keys", str(keydir), "--formats", "tar.gz",
        "--out", str(tmp_path), "--no-vendor",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    path = tmp_path / "aliyun-assist-1.0.0-linux-x86_64.tar.gz"
    assert line.startswith(str(path)) and hashlib.sha256(path.read_bytes()).hexdigest() in line


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--version", "1.0-1"], "invalid version", 2),
        (["--version", "../x"], "invalid version", 2),
        (["--version", "1.0", "--formats", "zip"], "unknown format", 2),
        (["--version", "1.0", "--arch", "sparc"], "unsupported arch", 2),
        (["--version", "1.0", "--package", "Bad_Name"], "invalid package name", 2),
    ],
)
def test_build_bad_input_is_one_line_and_writes_nothing(
    keydir: Path, tmp_path: Path, args: list[str], message: str, code: int
) -> None:
    out = tmp_path / "dist"
    proc = run("build", "--keys", str(keydir), "--out", str(out), "--no-vendor", *args)
    assert proc.returncode == code
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_build_without_keys_names_keygen(tmp_path: Path) -> None:
    proc = run(
        "build", "--version", "1.0", "--keys", str(tmp_path / "nokeys"), "--out", str(tmp_path)
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "keygen" in proc.stderr


def test_build_with_empty_wheel_cache_names_the_fix(keydir: Path, tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    proc = run(
        "build", "--version", "1.0", "--keys", str(keydir), "--formats", "tar.gz",
        "--out", str(tmp_path / "dist"), "--wheel-cache", str(tmp_path / "wheels"),
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1
    assert "make wheels" in proc.stderr and "--no-vendor" in proc.stderr
    assert not list((tmp_path / "dist").glob("*"))


def test_verbose_before_the_subcommand_is_kept(keydir: Path, tmp_path: Path) -> None:
    proc = run(
        "-v", "build", "--version", "1.0.0", "--keys", str(keydir), "--formats", "tar.gz",
        "--out", str(tmp_path), "--no-vendor",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "INFO pkgbuild" in proc.stderr


def test_repository_commands_are_wired(tmp_path: Path) -> None:
    """keygen → build → init → publish → yank → rotate-key through the console script."""
    keys, repo, dist = tmp_path / "keys", tmp_path / "repo", tmp_path / "dist"
    try:
        assert run("keygen", "--out", str(keys)).returncode == 0
        built = run(
            "build", "--version", "1.0.0", "--keys", str(keys), "--formats", "tar.gz",
            "--out", str(dist), "--no-vendor", "--json",
        )  # fmt: skip
        artifact = json.loads(built.stdout)[0]["path"]
        init = run("init", "--repo", str(repo), "--keys", str(keys), "--expires", "timestamp=2d")
        assert init.returncode == 0, init.stderr
        published = run("publish", "--repo", str(repo), "--keys", str(keys), artifact)
        assert published.returncode == 0, published.stderr
        target = "aliyun-assist/1.0.0/aliyun-assist-1.0.0-linux-x86_64.tar.gz"
        assert published.stdout.split() == [target]
        timestamp = json.loads((repo / "metadata/timestamp.json").read_text())["signed"]
        expires = datetime.datetime.fromisoformat(timestamp["expires"].replace("Z", "+00:00"))
        left = expires - datetime.datetime.now(datetime.timezone.utc)
        assert datetime.timedelta(days=1) < left <= datetime.timedelta(days=2)
        yanked = run(
            "yank", "--repo", str(repo), "--keys", str(keys), "--package", "aliyun-assist",
            "--version", "1.0.0", "--json",
        )  # fmt: skip
        assert yanked.returncode == 0, yanked.stderr
        assert json.loads(yanked.stdout) == [target]
        rotated = run("rotate-key", "--repo", str(repo), "--keys", str(keys), "--role", "timestamp")
        assert rotated.returncode == 0, rotated.stderr
        assert (repo / "metadata/2.root.json").is_file()
        bad = run("rotate-key", "--repo", str(repo), "--keys", str(keys), "--role", "admin")
        assert bad.returncode == 2 and "invalid choice" in bad.stderr
    finally:
        stop_gpg_agent(keys)


def test_publish_to_missing_repository_is_one_line(keydir: Path, tmp_path: Path) -> None:
    proc = run("publish", "--repo", str(tmp_path / "none"), "--keys", str(keydir), "x.deb")
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_signing_commands_leave_no_gpg_agent_running(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert run("keygen", "--out", str(keys)).returncode == 0
    init = run("init", "--repo", str(tmp_path / "repo"), "--keys", str(keys))
    assert init.returncode == 0, init.stderr
    homedir = str((keys / "gpg").resolve())
    agents = subprocess.run(
        ["pgrep", "-f", f"gpg-agent --homedir {homedir}"], capture_output=True, text=True
    )
    assert agents.stdout.strip() == ""


def test_build_on_a_terminal_shows_overall_progress(keydir: Path, tmp_path: Path) -> None:
    """A pty as stdout and stderr: one `build` bar counting the artifacts as they are made."""
    import re
    import sys

    from devkit.terminal import run_on_a_terminal

    code, text = run_on_a_terminal(
        [sys.executable, "-m", "pkgbuild", "build", "--version", "2.2.5", "--keys", str(keydir),
         "--arch", "x86_64,aarch64", "--formats", "deb,tar.gz", "--no-vendor",
         "--out", str(tmp_path / "dist")],
    )  # fmt: skip
    assert code == 0, text
    counts = re.findall(r"build: +\d+%\|[^|]*\| (\d+)/(\d+) \[", text)
    assert counts and {total for _, total in counts} == {"4"}, text.replace("\r", "\n")
    assert max(int(done) for done, _ in counts) >= 1  # it counted up while building
    assert len(list((tmp_path / "dist").iterdir())) == 4
