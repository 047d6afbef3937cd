"""The journal state machine: pure transitions and atomic persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import LocalStateError
from updater import journal as jr
from updater.recovery import ABORT, FINISH_ROLLBACK, NOTHING, ROLLBACK, plan_recovery


def test_happy_path_transitions_are_allowed_in_order() -> None:
    j = jr.begin(jr.Journal(), "1.0.0", "1.1.0", "aliyun-assist/1.1.0/x.tar.gz", "tar.gz")
    for phase in (jr.VERIFIED, jr.STAGED, jr.SWAPPED, jr.HEALTH_CHECK, jr.COMMITTED):
        j = jr.advance(j, phase)
    assert j.phase == jr.COMMITTED
    assert j.history == (
        jr.DOWNLOADING,
        jr.VERIFIED,
        jr.STAGED,
        jr.SWAPPED,
        jr.HEALTH_CHECK,
        jr.COMMITTED,
    )
    assert (j.from_version, j.to_version) == ("1.0.0", "1.1.0")


@pytest.mark.parametrize(
    ("start", "bad"),
    [
        (jr.DOWNLOADING, jr.SWAPPED),  # skipping verification
        (jr.VERIFIED, jr.COMMITTED),
        (jr.STAGED, jr.HEALTH_CHECK),
        (jr.HEALTH_CHECK, jr.ABORTED),  # after the swap only a rollback undoes
        (jr.ROLLING_BACK, jr.COMMITTED),
    ],
)
def test_illegal_transition_is_refused(start: str, bad: str) -> None:
    j = jr.Journal(phase=start)
    with pytest.raises(LocalStateError, match="illegal update transition"):
        jr.advance(j, bad)


def test_begin_refuses_unfinished_journal() -> None:
    with pytest.raises(LocalStateError, match="in progress"):
        jr.begin(jr.Journal(phase=jr.STAGED), "1", "2", "t", "tar.gz")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    j = jr.advance(jr.begin(jr.Journal(), "1.0.0", "1.1.0", "t", "tar.gz"), jr.VERIFIED)
    jr.save_journal(tmp_path, j)
    assert jr.load_journal(tmp_path) == j
    assert json.loads((tmp_path / "update.json").read_text())["phase"] == "verified"
    assert [p.name for p in tmp_path.iterdir()] == ["update.json"]  # no temp files left


def test_missing_journal_is_idle(tmp_path: Path) -> None:
    assert jr.load_journal(tmp_path).phase == jr.IDLE


@pytest.mark.parametrize("text", ["{not json", '{"phase": "exploded"}', "[]"])
def test_damaged_journal_is_a_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "update.json").write_text(text)
    with pytest.raises(LocalStateError):
        jr.load_journal(tmp_path)


@pytest.mark.parametrize(
    ("phase", "action"),
    [
        (jr.IDLE, NOTHING),
        (jr.COMMITTED, NOTHING),
        (jr.ROLLED_BACK, NOTHING),
        (jr.ABORTED, NOTHING),
        (jr.DOWNLOADING, ABORT),
        (jr.VERIFIED, ABORT),
        (jr.STAGED, ABORT),
        (jr.SWAPPED, ROLLBACK),
        (jr.HEALTH_CHECK, ROLLBACK),
        (jr.ROLLING_BACK, FINISH_ROLLBACK),
    ],
)
def test_recovery_plan_for_every_phase(phase: str, action: str) -> None:
    assert plan_recovery(jr.Journal(phase=phase)) == action


def test_agent_start_skips_recovery_only_when_nothing_can_be_interrupted(tmp_path: Path) -> None:
    """may_need_recovery: the agent's cheap question before it imports the updater's recovery."""
    from common.layout import Layout
    from updater.recovery import recover

    layout = Layout(tmp_path)
    layout.versions_dir.mkdir(parents=True)
    layout.state_dir.mkdir()
    assert not jr.may_need_recovery(layout)  # fresh install: no journal
    finished = jr.advance(jr.begin(jr.Journal(), "1.0.0", "1.1.0", "t", "tar.gz"), jr.ABORTED)
    jr.save_journal(layout.state_dir, finished)
    assert not jr.may_need_recovery(layout)
    for phase, expected in {
        **dict.fromkeys(jr.PHASES, True),
        **dict.fromkeys(jr.TERMINAL, False),
    }.items():
        jr.journal_path(layout.state_dir).write_text(json.dumps({"phase": phase}))
        assert jr.may_need_recovery(layout) is expected, phase
    jr.journal_path(layout.state_dir).write_text("{not json")
    assert jr.may_need_recovery(layout)
    jr.journal_path(layout.state_dir).unlink()
    staging = layout.versions_dir / ".staging-1.1.0"
    staging.mkdir()
    assert jr.may_need_recovery(layout)
    assert recover(tmp_path) == NOTHING and not staging.exists()  # recovery cleans it up
    assert not jr.may_need_recovery(layout)
    (tmp_path / ".current.4242.tmp").symlink_to("versions/1.1.0")
    assert jr.may_need_recovery(layout)
