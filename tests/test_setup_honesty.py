"""`make test` needs PostgreSQL: the Makefile sets it up where it is missing, and a PostgreSQL
test skipped anyway says why and what to run in pytest's summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_skipped_postgres_test_says_why_and_what_to_run() -> None:
    env = {**os.environ, "ASSIST_TEST_PG_HOST": "127.0.0.1:1"}  # nothing listens on port 1
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/server/test_store.py",
            "-m",
            "postgres",
            "-p",
            "no:randomly",
            "-p",
            "no:xdist",
            "-q",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped, proc.stdout
    for line in skipped:
        assert "PostgreSQL not reachable on 127.0.0.1:1" in line
        assert "run `make postgres`" in line


def test_make_test_sets_up_postgres_first() -> None:
    proc = subprocess.run(
        ["make", "-n", "test"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    plan = proc.stdout
    assert "pg_isready -h 127.0.0.1 -p 5432" in plan and "apt-get install -y -qq postgresql" in plan
    assert plan.index("pg_isready") < plan.index("pytest")
    assert "make test" in (REPO / ".ci" / "run").read_text()
