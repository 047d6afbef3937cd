"""apply / rollback against real processes (process manager) with fake payloads and a local repo.

The repository here is a local stand-in (devkit.fakepayload.LocalRepo); TUF-verified end-to-end runs
over loopback HTTP live in tests/updater/test_update_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from updaterkit import make_updater

from common.errors import LockedError, NoSpaceError, VerificationError
from common.layout import Layout
from common.platform import pid_alive
from common.service import ProcessManager
from devkit.fakepayload import LocalRepo
from updater import journal as jr
from updater.engine import RefusedError
from updater.lock import hold_lock
from updater.policy import load_blocklist
from updater.recovery import recover
from updater.swap import read_pointer


def _health(prefix: Path) -> dict[str, object]:
    return json.loads((prefix / "state" / "health.json").read_text())


def test_apply_updates_to_newest_healthy_version(prefix: Path, artifacts: dict[str, Path]) -> None:
    old_pid = ProcessManager(prefix).main_pid()
    repo = LocalRepo({v: artifacts[v] for v in ("1.0.0", "1.1.0")})
    outcome = make_updater(prefix, repo).apply()
    assert (outcome.result, outcome.from_version, outcome.to_version) == (
        "updated",
        "1.0.0",
        "1.1.0",
    )
    layout = Layout(prefix)
    assert read_pointer(layout) == "1.1.0" and read_pointer(layout, "previous") == "1.0.0"
    health = _health(prefix)
    new_pid = ProcessManager(prefix).main_pid()
    assert health["version"] == "1.1.0" and health["pid"] == new_pid and new_pid != old_pid
    assert old_pid is not None and not pid_alive(old_pid)
    assert jr.load_journal(layout.state_dir).phase == jr.COMMITTED
    assert not list((prefix / "versions").glob(".staging-*"))


def test_the_new_tree_is_flushed_to_disk_before_current_points_at_it(
    prefix: Path, artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut cannot be staged here; what can be checked is the order: the filesystem of
    the new tree is synced (for real: syncfs) while `current` still names the old version."""
    import updater.swap

    real = updater.swap.sync_filesystem
    seen: list[tuple[str, str | None]] = []

    def recording(path: Path) -> None:
        real(path)
        seen.append((Path(path).name, read_pointer(Layout(prefix))))

    monkeypatch.setattr(updater.swap, "sync_filesystem", recording)
    repo = LocalRepo({v: artifacts[v] for v in ("1.0.0", "1.1.0")})
    assert make_updater(prefix, repo).apply().result == "updated"
    assert seen == [("1.1.0", "1.0.0")]


def test_broken_version_is_rolled_back_then_blocklisted(
    prefix: Path, artifacts: dict[str, Path]
) -> None:
    repo = LocalRepo(artifacts)
    assert make_updater(prefix, repo).apply("1.1.0").result == "updated"
    outcome = make_updater(prefix, repo, health_timeout=2.0).apply()
    assert (outcome.result, outcome.to_version) == ("rolled_back", "1.2.0")
    layout = Layout(prefix)
    assert read_pointer(layout) == "1.1.0"
    journal = jr.load_journal(layout.state_dir)
    assert journal.phase == jr.ROLLED_BACK and journal.rollback_to == "1.1.0" and journal.error
    assert _health(prefix)["version"] == "1.1.0"  # the old agent was restarted and reports
    assert load_blocklist(layout.state_dir).failures == {"1.2.0": 1}
    assert not load_blocklist(layout.state_dir).blocked
    assert make_updater(prefix, repo, health_timeout=2.0).apply().result == "rolled_back"
    assert load_blocklist(layout.state_dir).blocked == ["1.2.0"]
    with pytest.raises(RefusedError, match="blocklisted"):
        make_updater(prefix, repo).apply()
    assert read_pointer(layout) == "1.1.0" and ProcessManager(prefix).main_pid()


def test_rollback_goes_ahead_when_the_blocklist_cannot_be_written(
    prefix: Path, artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure count is best effort (a full disk right after unpacking is when it fails):
    the rollback to the old version must happen all the same. (The full disk is simulated:
    writing the blocklist raises ENOSPC.)"""
    import errno

    import updater.policy

    repo = LocalRepo(artifacts)
    assert make_updater(prefix, repo).apply("1.1.0").result == "updated"

    def disk_full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(updater.policy, "save_blocklist", disk_full)
    outcome = make_updater(prefix, repo, health_timeout=2.0).apply("1.2.0")
    assert (outcome.result, outcome.to_version) == ("rolled_back", "1.2.0")
    layout = Layout(prefix)
    assert read_pointer(layout) == "1.1.0"
    assert jr.load_journal(layout.state_dir).phase == jr.ROLLED_BACK
    assert _health(prefix)["version"] == "1.1.0"


def test_verification_failure_leaves_current_and_journal_unchanged(
    prefix: Path, artifacts: dict[str, Path]
) -> None:
    layout = Layout(prefix)
    jr.save_journal(layout.state_dir, jr.Journal(phase=jr.COMMITTED, to_version="1.0.0"))
    before = (layout.state_dir / "update.json").read_bytes()

    def refuse(path: Path, fmt: str, keys: Path) -> None:
        raise VerificationError("bad native signature")

    updater = make_updater(prefix, LocalRepo(artifacts))
    updater.verify_native = refuse
    with pytest.raises(VerificationError):
        updater.apply("1.1.0")
    assert (layout.state_dir / "update.json").read_bytes() == before
    assert read_pointer(layout) == "1.0.0"
    assert sorted(p.name for p in (prefix / "versions").iterdir()) == ["1.0.0"]


def test_no_space_refuses_before_touching_anything(
    prefix: Path, artifacts: dict[str, Path]
) -> None:
    repo = LocalRepo(artifacts)
    repo.length_override = 1 << 60
    with pytest.raises(NoSpaceError):
        make_updater(prefix, repo).apply("1.1.0")
    assert jr.load_journal(prefix / "state").phase == jr.IDLE
    assert read_pointer(Layout(prefix)) == "1.0.0"


def test_second_updater_is_locked_out(prefix: Path, artifacts: dict[str, Path]) -> None:
    with hold_lock(prefix / "state"):
        with pytest.raises(LockedError):
            make_updater(prefix, LocalRepo(artifacts)).apply()
        # the agent starting meanwhile must not "recover" an update in progress
        assert recover(prefix) == "busy"
    assert read_pointer(Layout(prefix)) == "1.0.0"


def test_downgrade_needs_allow_downgrade(prefix: Path, artifacts: dict[str, Path]) -> None:
    repo = LocalRepo(artifacts)
    make_updater(prefix, repo).apply("1.1.0")
    with pytest.raises(RefusedError, match="allow-downgrade"):
        make_updater(prefix, repo).apply("1.0.0")
    assert make_updater(prefix, repo).apply("1.0.0", allow_downgrade=True).result == "updated"
    assert read_pointer(Layout(prefix)) == "1.0.0"


def test_manual_rollback_goes_to_previous_without_network(
    prefix: Path, artifacts: dict[str, Path]
) -> None:
    make_updater(prefix, LocalRepo(artifacts)).apply("1.1.0")
    outcome = make_updater(prefix, None).rollback()  # type: ignore[arg-type]
    assert (outcome.from_version, outcome.to_version) == ("1.1.0", "1.0.0")
    assert read_pointer(Layout(prefix)) == "1.0.0"
    assert jr.load_journal(prefix / "state").phase == jr.ROLLED_BACK


def test_keep_k_versions_prunes_old_versions_and_cache(
    prefix: Path, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    from devkit.fakepayload import make_tarball

    extra = {v: make_tarball(tmp_path / f"x/a-{v}.tar.gz", v) for v in ("1.3.0", "1.4.0")}
    repo = LocalRepo({"1.1.0": artifacts["1.1.0"], **extra})
    for version in ("1.1.0", "1.3.0", "1.4.0"):
        make_updater(prefix, repo, keep_versions=2).apply(version)
    assert sorted(p.name for p in (prefix / "versions").iterdir()) == ["1.3.0", "1.4.0"]
    assert sorted(p.name for p in (prefix / "state" / "cache").iterdir()) == ["1.3.0", "1.4.0"]


def test_apply_without_an_installed_agent_is_refused(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    from common.errors import LocalStateError

    empty = tmp_path / "empty"
    with pytest.raises(LocalStateError, match="no agent is installed") as info:
        make_updater(empty, LocalRepo(artifacts)).apply()
    assert "assist-install agent" in (info.value.hint or "")
    assert not (empty / "current").exists() and not (empty / "state" / "update.json").exists()
