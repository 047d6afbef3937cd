"""assist-update status / rollback / recover through the real CLI entry point (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from updaterkit import make_updater

from devkit.fakepayload import LocalRepo
from updater import journal as jr
from updater.cli import main


def test_status_json_reports_layout_journal_blocklist_health(
    prefix: Path, artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    make_updater(prefix, LocalRepo(artifacts)).apply("1.1.0")
    capsys.readouterr()
    assert main(["status", "--prefix", str(prefix), "--json", "--service", "process"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["current"], info["previous"]) == ("1.1.0", "1.0.0")
    assert info["installed"] == ["1.0.0", "1.1.0"]
    assert info["journal"]["phase"] == "committed"
    assert info["health"]["version"] == "1.1.0" and info["health"]["running"]
    assert info["blocklist"] == {"failures": {}, "blocked": [], "reasons": {}}


def test_rollback_command_goes_back_and_restarts(
    prefix: Path, artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    make_updater(prefix, LocalRepo(artifacts)).apply("1.1.0")
    assert main(["rollback", "--prefix", str(prefix), "--service", "process"]) == 0
    assert "rolled back 1.1.0 -> 1.0.0" in capsys.readouterr().out
    assert (prefix / "current").readlink() == Path("versions/1.0.0")


def test_rollback_without_previous_is_a_clear_error(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rollback", "--prefix", str(prefix), "--service", "process"]) == 1
    assert "no previous version" in capsys.readouterr().err


def test_recover_command_aborts_an_interrupted_update(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = prefix / "state"
    j = jr.begin(jr.Journal(), "1.0.0", "1.1.0", "t", "tar.gz")
    jr.save_journal(state, jr.advance(jr.advance(j, jr.VERIFIED), jr.STAGED))
    assert main(["recover", "--prefix", str(prefix), "--service", "process"]) == 0
    assert capsys.readouterr().out.strip() == "aborted"
    assert jr.load_journal(state).phase == jr.ABORTED
    assert main(["recover", "--prefix", str(prefix), "--service", "process"]) == 0
    assert capsys.readouterr().out.strip() == "nothing"


def test_status_text_output(prefix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--prefix", str(prefix), "--service", "process"]) == 0
    out = capsys.readouterr().out
    assert "current:   1.0.0" in out and "journal:   idle" in out


def test_schedule_reports_next_run_or_disabled(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = prefix / "config" / "assist.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text('[update]\nschedule = "0 30 4 * * *"\nsplay = 60.0\n')
    assert main(["schedule", "--prefix", str(prefix), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["schedule"] == "0 30 4 * * *"
    assert "04:30:" in info["next"] or "04:31:00" in info["next"]
    config.write_text('[update]\nschedule = ""\n')
    assert main(["schedule", "--prefix", str(prefix)]) == 0
    assert "disabled" in capsys.readouterr().out


def test_blocklisted_version_shows_its_reason_and_unblock_clears_it(
    prefix: Path, artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Two failed updates to the broken 1.2.0 blocklist it; status says why (text and JSON);
    `unblock 1.2.0` forgets it, on disk too, so the next apply tries it again."""
    updater = make_updater(prefix, LocalRepo(artifacts), health_timeout=3.0)
    assert updater.apply("1.2.0").result == "rolled_back"
    assert updater.apply("1.2.0").result == "rolled_back"
    args = ["--prefix", str(prefix), "--service", "process"]
    capsys.readouterr()
    assert main(["status", *args, "--json"]) == 0
    blocklist = json.loads(capsys.readouterr().out)["blocklist"]
    assert blocklist["blocked"] == ["1.2.0"] and blocklist["failures"] == {"1.2.0": 2}
    assert "exited before it reported health" in blocklist["reasons"]["1.2.0"]
    assert main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert "1.2.0: 2 failed update(s); last: agent 1.2.0 exited before it reported" in out

    assert main(["unblock", "1.2.0", *args]) == 0
    assert "1.2.0 unblocked" in capsys.readouterr().out
    on_disk = json.loads((prefix / "state" / "blocklist.json").read_text())
    assert on_disk["blocked"] == [] and on_disk["failures"] == {} and on_disk["reasons"] == {}
    assert main(["status", *args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["blocklist"]["blocked"] == []
    assert updater.apply("1.2.0").result == "rolled_back"  # tried again, not refused


def test_unblock_of_a_version_that_is_not_blocklisted_is_a_clear_error(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["unblock", "9.9.9", "--prefix", str(prefix), "--service", "process"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "9.9.9 is not blocklisted" in err
    assert not (prefix / "state" / "blocklist.json").exists()
