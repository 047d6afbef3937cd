"""The server keeps the agent's output quota whatever an agent key sends: the tail of the
output, the rest counted as Dropped, and a bounded number of streamed chunks per execution."""

from __future__ import annotations

import base64
import os

from serverkit import Api, run_sql

from devkit.server import FakeAgent
from server.output_limits import (
    DEFAULT_QUOTA,
    MAX_CHUNKS,
    StoredChunk,
    b64_size,
    chunks_to_drop,
    clip_chunk,
    clip_report,
    clip_tail,
)

BIG = 700 * 1024  # bytes per report: its base64 is just under the 1 MiB a report may carry


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- the pure rule ---------------------------------------------------------------------------


def test_clip_tail_keeps_the_tail_and_counts_the_rest() -> None:
    assert clip_tail(b"abcdef", 2, 4) == (b"cdef", 4)
    assert clip_tail(b"abc", 2, 4) == (b"abc", 2)


def test_clip_report_keeps_the_quota_of_the_output() -> None:
    data = os.urandom(10_000)
    output, dropped = clip_report(b64(data), 7, 1000)
    assert base64.b64decode(output) == data[-1000:] and dropped == 7 + 9000
    assert clip_report(b64(b"x" * 500), 0, 1000) == (b64(b"x" * 500), 0)


def test_clip_chunk_moves_the_offset_to_the_kept_tail() -> None:
    data = bytes(range(256)) * 40
    offset, kept = clip_chunk(100, b64(data), 1000)
    assert offset == 100 + len(data) - 1000 and base64.b64decode(kept) == data[-1000:]
    assert clip_chunk(5, b64(b"small"), 1000) == (5, b64(b"small"))


def test_chunks_to_drop_keeps_the_newest_quota_and_at_most_max_chunks() -> None:
    chunks = [StoredChunk(o, 100) for o in range(0, 1000, 100)]  # 0..999 streamed
    assert chunks_to_drop(chunks, 250, 64) == [0, 100, 200, 300, 400, 500, 600]
    assert chunks_to_drop(chunks, 10_000, 3) == [0, 100, 200, 300, 400, 500, 600]
    assert chunks_to_drop([], 10, 1) == []
    assert b64_size(b64(b"abcd")) == 4 and b64_size("") == 0


# --- over HTTP, with the stored state ----------------------------------------------------------


def start_task(api: Api) -> tuple[FakeAgent, str]:
    agent = api.agent()
    command = api.ok(
        "CreateCommand", Name="chatty", Type="RunShellScript", CommandContent=b64(b"yes")
    )["CommandId"]
    invoke_id = api.ok("InvokeCommand", CommandId=command, **{"InstanceId.1": agent.instance_id})[
        "InvokeId"
    ]
    agent.tasks("kick")
    return agent, invoke_id


def results(api: Api, invoke_id: str) -> dict[str, object]:
    body = api.ok("DescribeInvocationResults", InvokeId=invoke_id)
    return dict(body["Invocation"]["InvocationResults"]["InvocationResult"][0])


def test_streamed_megabytes_keep_only_the_tail_and_bounded_chunks(api: Api) -> None:
    agent, invoke_id = start_task(api)
    stream = b""
    for i in range(8):  # 5.6 MB from one agent key, 700 KiB per report
        piece = bytes([65 + i]) * BIG
        agent.post(
            "/luban/api/v1/task/running",
            {"invoke_id": invoke_id, "offset": len(stream), "output": b64(piece)},
        )
        stream += piece
    shown = base64.b64decode(str(results(api, invoke_id)["Output"]))
    assert shown == stream[-DEFAULT_QUOTA:]
    assert stored_chunks(api, invoke_id)[0] <= 2  # the newest, and the one reaching into it
    for i in range(MAX_CHUNKS + 20):  # then many tiny chunks: the count is bounded too
        agent.post(
            "/luban/api/v1/task/running",
            {"invoke_id": invoke_id, "offset": len(stream), "output": b64(b"%03d" % i)},
        )
        stream += b"%03d" % i
    count, size = stored_chunks(api, invoke_id)
    assert count == MAX_CHUNKS and size <= 4 * MAX_CHUNKS
    shown = base64.b64decode(str(results(api, invoke_id)["Output"]))
    assert shown == stream[-3 * MAX_CHUNKS :]


def stored_chunks(api: Api, invoke_id: str) -> tuple[int, int]:
    """(chunks, base64 characters) stored for the task."""
    count, size = run_sql(
        api.server,
        "SELECT COUNT(*), SUM(LENGTH(data)) FROM output_chunks WHERE invoke_id = ?",
        invoke_id,
    )[0]
    return int(count), int(size or 0)


def test_terminal_report_beyond_the_quota_keeps_the_tail_and_counts_dropped(api: Api) -> None:
    agent, invoke_id = start_task(api)
    data = os.urandom(BIG)
    agent.report("finish", invoke_id, data, 0, dropped=123)
    result = results(api, invoke_id)
    assert base64.b64decode(str(result["Output"])) == data[-DEFAULT_QUOTA:]
    assert result["Dropped"] == 123 + BIG - DEFAULT_QUOTA
    (stored,) = run_sql(
        api.server,
        "SELECT output, dropped FROM invocation_instances WHERE invoke_id = ?",
        invoke_id,
    )
    assert base64.b64decode(stored[0]) == data[-DEFAULT_QUOTA:]
    assert stored[1] == 123 + BIG - DEFAULT_QUOTA
    (execution,) = run_sql(
        api.server, "SELECT LENGTH(output) FROM executions WHERE invoke_id = ?", invoke_id
    )
    assert execution[0] == len(b64(data[-DEFAULT_QUOTA:]))
