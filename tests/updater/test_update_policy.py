"""Which version to update to, failure counting, blocklist, pruning — pure decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import LocalStateError, NotFoundError
from updater.policy import (
    NOTHING,
    REFUSE,
    UPDATE,
    Blocklist,
    count_failure,
    load_blocklist,
    plan_update,
    record_failure,
    save_blocklist,
    versions_to_prune,
)

AVAILABLE = ["1.0.0", "1.1.0", "1.2.0", "1.10.0"]


def test_newest_version_is_chosen_by_version_order_not_text() -> None:
    assert plan_update("1.0.0", AVAILABLE) == plan_update("1.0.0", AVAILABLE)
    assert plan_update("1.0.0", AVAILABLE).version == "1.10.0"


def test_up_to_date_is_nothing() -> None:
    assert plan_update("1.10.0", AVAILABLE).action == NOTHING


def test_blocklisted_newest_falls_back_to_newest_usable() -> None:
    plan = plan_update("1.0.0", ["1.0.0", "1.1.0", "1.2.0"], blocked=["1.2.0"])
    assert (plan.action, plan.version) == (UPDATE, "1.1.0")


def test_only_blocklisted_newer_version_is_refused() -> None:
    plan = plan_update("1.1.0", ["1.0.0", "1.1.0", "1.2.0"], blocked=["1.2.0"])
    assert (plan.action, plan.version) == (REFUSE, "1.2.0")
    assert "blocklisted" in plan.reason


def test_newer_version_than_a_blocked_one_is_allowed() -> None:
    plan = plan_update("1.1.0", ["1.1.0", "1.2.0", "1.3.0"], blocked=["1.2.0"])
    assert (plan.action, plan.version) == (UPDATE, "1.3.0")


def test_downgrade_needs_permission() -> None:
    assert plan_update("1.2.0", AVAILABLE, requested="1.0.0").action == REFUSE
    plan = plan_update("1.2.0", AVAILABLE, requested="1.0.0", allow_downgrade=True)
    assert (plan.action, plan.version) == (UPDATE, "1.0.0")


def test_requested_unpublished_version_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="9.9"):
        plan_update("1.0.0", AVAILABLE, requested="9.9")


def test_failures_block_at_threshold() -> None:
    bl = record_failure(Blocklist(), "1.2.0", 2)
    assert not bl.is_blocked("1.2.0") and bl.failures == {"1.2.0": 1}
    bl = record_failure(bl, "1.2.0", 2)
    assert bl.is_blocked("1.2.0") and bl.failures == {"1.2.0": 2}


def test_a_failure_is_counted_once_per_attempt() -> None:
    bl = record_failure(Blocklist(), "1.2.0", 3, "attempt-a")
    again = record_failure(bl, "1.2.0", 3, "attempt-a")  # a recovery repeating the rollback
    assert again == bl and again.failures == {"1.2.0": 1}
    other = record_failure(again, "1.2.0", 3, "attempt-b")
    assert other.failures == {"1.2.0": 2} and other.counted == ["attempt-a", "attempt-b"]


def test_blocklist_persists(tmp_path: Path) -> None:
    save_blocklist(tmp_path, Blocklist({"1.2.0": 2}, ["1.2.0"], ["a"]))
    assert load_blocklist(tmp_path) == Blocklist({"1.2.0": 2}, ["1.2.0"], ["a"])
    assert load_blocklist(tmp_path / "none") == Blocklist()


def test_prune_keeps_newest_and_never_current_or_previous() -> None:
    installed = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]
    assert versions_to_prune(installed, 3, ["1.4.0", "1.3.0"]) == ["1.0.0", "1.1.0"]
    # an old current is protected even when newer ones exist
    assert versions_to_prune(installed, 2, ["1.0.0"]) == ["1.1.0", "1.2.0", "1.3.0"]


@pytest.mark.parametrize("text", ["[]", '{"failures": 5}', '{"blocked": 3}', '"x"', "null"])
def test_a_damaged_blocklist_is_a_clear_error_and_never_stops_a_rollback(
    tmp_path: Path, text: str
) -> None:
    """Valid JSON of the wrong shape raised AttributeError/TypeError: a traceback at the CLI
    edge, and out of count_failure, which a rollback calls and must never wait on."""
    (tmp_path / "blocklist.json").write_text(text)
    with pytest.raises(LocalStateError, match="unreadable"):
        load_blocklist(tmp_path)
    count_failure(tmp_path, "1.4.0", 2, "attempt-1")  # logs, does not raise
    assert (tmp_path / "blocklist.json").read_text() == text  # left for the operator to see
