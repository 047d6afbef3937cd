"""Output spool benchmark: how fast the agent drains a chatty task.

    .venv/bin/python bench/bench_spool.py

Prints one JSON line (medians of BENCH_SPOOL_RUNS runs, default 3):

- agent_chatty_task_drain: the real runner (agent.runner.Execution) pumping BENCH_SPOOL_BYTES
  (default 200 MB) of `head -c N /dev/zero` through the bounded ring spool (agent.spool.Spool),
  against the same run with an unbounded append-only spool file (what the agent did before the
  spool was bounded). Also prints the bytes each left on disk. Target: ratio <= 1.5.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from agent.runner import Execution, RunLimits, Task  # noqa: E402
from agent.spool import Spool  # noqa: E402
from bench.figures import median_figure  # noqa: E402

QUOTA = 24 * 1024


class AppendSpool:
    """The baseline: every byte appended to one file, unbuffered."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.handle = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in discard

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def discard(self) -> None:
        self.handle.close()
        self.path.unlink()


def drain(kind: str, size: int) -> tuple[float, int]:
    """Seconds the runner takes to pump `size` bytes into a spool, and the bytes left on disk."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spool" / "t-0.out"
        spool: Spool | AppendSpool = Spool(path, QUOTA) if kind == "ring" else AppendSpool(path)
        task = Task("t-bench", content=f"head -c {size} /dev/zero\n".encode(), timeout=600)
        limits = RunLimits(output_quota=QUOTA, work_dir=Path(tmp))
        start = time.perf_counter()
        outcome = Execution(task, "0", {}, limits, on_output=spool.write).run()
        elapsed = time.perf_counter() - start
        assert outcome.dropped == size - QUOTA, outcome
        on_disk = path.stat().st_size
        spool.discard()
        return elapsed, on_disk


def main() -> None:
    """Print the chatty-task drain figure."""
    runs = int(os.environ.get("BENCH_SPOOL_RUNS", "3"))
    size = int(os.environ.get("BENCH_SPOOL_BYTES", str(200_000_000)))
    ours: list[float] = []
    base: list[float] = []
    disk = {"ring": 0, "append": 0}
    for _ in range(runs):
        for kind, times in (("append", base), ("ring", ours)):
            elapsed, disk[kind] = drain(kind, size)
            times.append(elapsed)
    median_figure(
        "agent_chatty_task_drain",
        ours,
        base,
        "<= 1.5",
        output_bytes=size,
        spool_bytes=disk["ring"],
        baseline_spool_bytes=disk["append"],
    )


if __name__ == "__main__":
    main()
