"""Identity storage and signing, the SQLite outbox/ledger, and the bounded pool."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.identity import (
    Identity,
    NotRegisteredError,
    canonical_string,
    generate_key,
    load_identity,
    save_identity,
    sign_headers,
)
from agent.outbox import AgentDatabase, Report, batches
from agent.pool import TaskPool
from common.errors import LocalStateError


def test_identity_round_trip_keeps_key_private(tmp_path: Path) -> None:
    key = generate_key()
    save_identity(tmp_path, Identity("mi-1", key, "http://127.0.0.1:1"))
    assert stat.S_IMODE(os.stat(tmp_path / "agent.key").st_mode) == 0o600
    loaded = load_identity(tmp_path)
    assert loaded.instance_id == "mi-1" and loaded.server == "http://127.0.0.1:1"
    assert loaded.public_key_b64() == Identity("", key).public_key_b64()


def test_identity_refuses_missing_and_world_readable_keys(tmp_path: Path) -> None:
    with pytest.raises(NotRegisteredError):
        load_identity(tmp_path)
    save_identity(tmp_path, Identity("mi-1", generate_key()))
    os.chmod(tmp_path / "agent.key", 0o644)
    with pytest.raises(LocalStateError, match="readable by others"):
        load_identity(tmp_path)


def test_signature_covers_the_canonical_string() -> None:
    ident = Identity("mi-9", generate_key())
    body = b'{"reason":"kick"}'
    headers = sign_headers(ident, "POST", "/luban/api/v1/task/list", "", body, now=1000, nonce="n1")
    assert headers["X-Assist-Timestamp"] == "1000"
    expected = b"\n".join(
        [
            b"POST",
            b"/luban/api/v1/task/list",
            b"",
            b"1000",
            b"n1",
            hashlib.sha256(body).hexdigest().encode(),
        ]
    )
    assert canonical_string("post", "/luban/api/v1/task/list", "", 1000, "n1", body) == expected
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(ident.public_key_b64()))
    public.verify(base64.b64decode(headers["X-Assist-Signature"]), expected)  # raises if wrong


def test_outbox_dedupes_by_key_and_survives_reopen(tmp_path: Path) -> None:
    store = AgentDatabase(tmp_path)
    assert store.enqueue("k1", "/v1/task/running", {"a": 1})
    assert not store.enqueue("k1", "/v1/task/running", {"a": 2})
    store.close()
    store = AgentDatabase(tmp_path)
    [report] = store.due_reports(now=1e12)
    assert (report.key, report.body) == ("k1", {"a": 1})
    store.postpone(report.id, next_try=1e12)
    assert store.due_reports(now=0) == []
    store.acknowledge(report.id)
    assert store.pending_count() == 0


def test_ledger_claims_once_and_lists_unfinished(tmp_path: Path) -> None:
    store = AgentDatabase(tmp_path)
    assert store.claim_execution("t-1", "0", 5)
    assert not store.claim_execution("t-1", "0", 6)
    store.set_process("t-1", "0", 1234, "99")
    [started] = store.started_executions()
    assert (started.invoke_id, started.pid, started.proc_start) == ("t-1", 1234, "99")
    store.finish_execution("t-1", "0", "terminal/t-1/0", "/v1/task/finish", {"start_time": 5})
    assert store.started_executions() == []
    assert store.execution_known("t-1", "0")
    assert store.pending_count() == 1
    assert store.first_seen_boot("t-2", "boot-a") == "boot-a"
    assert store.first_seen_boot("t-2", "boot-b") == "boot-a"


def test_pool_bounds_running_and_queued() -> None:
    pool = TaskPool(max_running=2, max_queued=1)
    gate = threading.Event()
    started = threading.Semaphore(0)

    def job() -> None:
        started.release()
        gate.wait(10)

    assert pool.submit("a", job) and pool.submit("b", job)
    assert started.acquire(timeout=5) and started.acquire(timeout=5)
    assert pool.submit("c", job)  # queued
    assert not pool.submit("d", job)  # beyond 2 running + 1 queued
    assert pool.submit("a", job)  # already held: accepted once, not twice
    assert pool.counts() == (2, 1)
    gate.set()
    assert pool.wait_idle(10)
    assert pool.counts() == (0, 0) and not pool.holds("c")


def test_prune_keeps_executions_whose_report_is_still_queued(tmp_path: Path) -> None:
    store = AgentDatabase(tmp_path)
    for invoke in ("t-acked", "t-queued"):
        store.claim_execution(invoke, "0", 1)
        store.finish_execution(
            invoke, "0", f"terminal/{invoke}/0", "/v1/task/finish", {"start_time": 1}
        )
    acked = next(r for r in store.due_reports(1e12) if r.key == "terminal/t-acked/0")
    store.acknowledge(acked.id)
    store.prune_executions(older_than=1e12)
    assert not store.execution_known("t-acked", "0")
    assert store.execution_known("t-queued", "0")  # the server still lists it: never run twice


def queue_periodic_runs(store: AgentDatabase, runs: int, output: bytes) -> None:
    """What the daemon queues for each run of a timed task while the server is away: four
    streamed chunks (the per-execution cap) and the terminal report with the output tail."""
    for run in range(runs):
        execution = str(run)
        group = f"running/t-1/{execution}/"
        for offset in range(4):
            chunk = {"invoke_id": "t-1", "execution_id": execution, "offset": offset * 8192}
            chunk["output"] = base64.b64encode(output[:8192]).decode()
            store.enqueue_capped(f"{group}{offset}", "/v1/task/running", chunk, group, 4)
        store.claim_execution("t-1", execution, run)
        body = {
            "invoke_id": "t-1",
            "execution_id": execution,
            "exit_code": 0,
            "output": base64.b64encode(output).decode(),
            "dropped": 7,
        }
        store.finish_execution(
            "t-1", execution, f"terminal/t-1/{execution}", "/v1/task/finish", body
        )


def test_a_timed_task_while_the_server_is_away_keeps_the_outbox_within_its_budget(
    tmp_path: Path,
) -> None:
    """Every run of a periodic task queued ~75 KB of output (terminal tail and streamed chunks)
    and nothing bounded the sum: a task every second filled ~6 GB a day into agent.db. Now the
    outbox keeps at most its output budget; older runs keep their status and count their
    output as dropped, so no result is lost."""
    store = AgentDatabase(tmp_path, output_budget=1 << 20)
    output = bytes(range(256)) * 96  # 24 KiB, the default quota
    queue_periodic_runs(store, 200, output)  # ~15 MB of output queued before this fix
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir() if p.name.startswith("agent.db"))
    assert on_disk < 4 << 20, on_disk
    reports = store.due_reports(now=1e12, limit=10_000)
    terminal = [r for r in reports if r.key.startswith("terminal/")]
    assert [r.body["execution_id"] for r in terminal] == [str(run) for run in range(200)]
    assert all(r.body["exit_code"] == 0 for r in terminal)
    newest = terminal[-1].body
    assert (base64.b64decode(newest["output"]), newest["dropped"]) == (output, 7)
    oldest = terminal[0].body
    assert (oldest["output"], oldest["dropped"]) == ("", 7 + len(output))
    assert store.pending_count() == len(reports)
    store.close()


def test_batches_keep_the_order_and_stay_within_the_byte_bound() -> None:
    sizes = [400, 300, 200, 900, 100, 2000, 50]
    reports = [Report(i, f"k{i}", "/v1/task/finish", {}, 0, size) for i, size in enumerate(sizes)]
    groups = list(batches(reports, max_bytes=1000))
    assert [[r.id for r in g] for g in groups] == [[0, 1, 2], [3, 4], [5], [6]]
    assert [r.id for g in groups for r in g] == list(range(len(sizes)))  # nothing lost, in order
    assert all(sum(r.size for r in g) <= 1000 for g in groups if len(g) > 1)
