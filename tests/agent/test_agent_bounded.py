"""A chatty task cannot grow the agent's state: spool, outbox and logs stay bounded.

These run real shell tasks through the real daemon and runner against the protocol stand-in,
and sample the disk usage of the agent's prefix while the task runs.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from pathlib import Path

from agent.daemon import MAX_QUEUED_CHUNKS
from agent.updates import MAX_UPDATE_LOG, rotate_log
from devkit.polling import Sampler

QUOTA = 24 * 1024
LINE = b"chatty line\n"
CHATTY_BYTES = 100_000_000


def disk_usage(root: Path) -> int:
    """Bytes allocated on disk under `root` (what du counts), files vanishing meanwhile ignored."""
    total = 0
    for path in root.rglob("*"):
        try:
            total += path.lstat().st_blocks * 512
        except OSError:
            pass
    return total


class DiskSampler(Sampler):
    """Sample the disk usage of a directory on a thread until stopped; keep the maximum."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.peak = 0
        self.samples = 0

    def sample(self) -> None:
        self.peak = max(self.peak, disk_usage(self.root))
        self.samples += 1


def expected_output() -> bytes:
    """What `yes 'chatty line' | head -c N; seq 1 3000` prints, last QUOTA bytes only."""
    seq = "".join(f"{i}\n" for i in range(1, 3001)).encode()
    need = QUOTA - len(seq)
    start = CHATTY_BYTES - need
    yes_tail = bytes(LINE[p % len(LINE)] for p in range(start, CHATTY_BYTES))
    return yes_tail + seq


def test_a_chatty_task_keeps_the_state_small_and_reports_tail_and_dropped_exactly(
    fake_server, start_agent
) -> None:  # type: ignore[no-untyped-def]
    h = start_agent()
    state = fake_server.state
    # the pause leaves the chatty part spooled for a while: at 100 MB in ~0.1 s on an idle box
    # the sampler saw too little of the run to mean anything (5 samples)
    script = f"yes 'chatty line' | head -c {CHATTY_BYTES}\nsleep 0.3\nseq 1 3000\n"
    with DiskSampler(h.prefix) as sampler:
        invoke = state.add_task(h.identity.instance_id, script=script, timeout=120)
        assert state.wait(lambda s: s.results_for(invoke), timeout=120)
    [result] = state.results_for(invoke)
    assert result["kind"] == "finish" and result["exit_code"] == 0
    output = base64.b64decode(result["output"])
    assert output == expected_output()
    seq_bytes = len("".join(f"{i}\n" for i in range(1, 3001)))
    assert result["dropped"] == CHATTY_BYTES + seq_bytes - QUOTA
    assert sampler.samples > 5
    assert sampler.peak < 4 * 1024 * 1024, f"state grew to {sampler.peak} bytes"
    assert not list((h.prefix / "state" / "spool").iterdir())  # reported: spool removed


def test_streamed_chunks_do_not_pile_up_while_the_server_is_away(fake_server, start_agent) -> None:  # type: ignore[no-untyped-def]
    h = start_agent(chunk_interval=0.1)
    state = fake_server.state
    script = "i=0; while [ $i -lt 60 ]; do echo line $i; i=$((i+1)); sleep 0.05; done\n"
    invoke = state.add_task(h.identity.instance_id, script=script)
    assert state.wait(lambda s: any(k[1] == invoke for k in s.chunks), timeout=20)
    state.refuse_running = True  # the task runs on while its chunks cannot be delivered
    db = sqlite3.connect(h.prefix / "state" / "agent.db")
    try:

        def terminal_queued() -> bool:
            row = db.execute(
                "SELECT COUNT(*) FROM outbox WHERE key = ?", (f"terminal/{invoke}/0",)
            ).fetchone()
            return bool(row[0])

        deadline = time.time() + 30
        while not terminal_queued() and time.time() < deadline:
            time.sleep(0.05)
        assert terminal_queued()
        keys = [r[0] for r in db.execute("SELECT key FROM outbox WHERE key LIKE 'running/%'")]
    finally:
        db.close()
    assert 0 < len(keys) <= MAX_QUEUED_CHUNKS <= 8
    offsets = sorted(int(k.rsplit("/", 1)[1]) for k in keys)
    assert offsets[-1] > 0  # the newest chunks are the ones kept


def test_update_log_is_rotated_when_it_grows_past_its_limit(tmp_path: Path) -> None:
    log = tmp_path / "update.log"
    log.write_bytes(b"x" * (MAX_UPDATE_LOG + 1))
    rotate_log(log, MAX_UPDATE_LOG)
    assert not log.exists()
    assert (tmp_path / "update.log.1").stat().st_size == MAX_UPDATE_LOG + 1
    log.write_bytes(b"small")
    rotate_log(log, MAX_UPDATE_LOG)
    assert log.read_bytes() == b"small"


def test_after_a_kill_9_the_restarted_agent_reports_the_exact_tail_from_the_ring_spool(
    tmp_path: Path, fake_server
) -> None:  # type: ignore[no-untyped-def]
    from agent_fakeserver import register

    from devkit.realagent import AgentProcess

    prefix = tmp_path / "p"
    (prefix / "config").mkdir(parents=True)
    (prefix / "config" / "assist.toml").write_text(
        '[agent]\npoll_timeout = 5.0\n[update]\nschedule = ""\n'
    )
    identity = register(fake_server.url, fake_server.activation(), prefix / "state")
    agent = AgentProcess(prefix, fake_server.url)
    lines = "".join(f"line {i:06d}\n" for i in range(10000)).encode()  # 120,000 bytes
    state = fake_server.state
    try:
        agent.wait_connected()
        script = "i=0; while [ $i -lt 10000 ]; do printf 'line %06d\\n' $i; i=$((i+1)); done\n"
        invoke = state.add_task(identity.instance_id, script=script + "sleep 60\n")
        spool = prefix / "state" / "spool" / f"{invoke}-0.out"
        deadline = time.time() + 60
        while time.time() < deadline:  # all printed (the ring's header counts every byte)
            if spool.exists() and int.from_bytes(spool.read_bytes()[8:16], "big") == len(lines):
                break
            time.sleep(0.1)
        assert spool.stat().st_size <= 2 * QUOTA + 16
        agent.kill9()
    finally:
        agent.stop()
    restarted = AgentProcess(prefix, fake_server.url)
    try:
        assert state.wait(lambda s: s.results_for(invoke), timeout=30), restarted.log()
        [result] = state.results_for(invoke)
        assert result["error_code"] == "AgentRestarted"
        assert base64.b64decode(result["output"]) == lines[-QUOTA:]
        assert result["dropped"] == len(lines) - QUOTA
        assert not spool.exists()
    finally:
        restarted.stop()
