"""Run the benchmarks and print one table.

    .venv/bin/python -m bench                 # every bench/bench_*.py
    .venv/bin/python -m bench fetch agent     # only bench_fetch.py and bench_agent.py

Each module's main() runs in its own subprocess; every stdout line that is a JSON object with a
"bench" key is a figure ({"bench","ours","baseline","ratio","unit","target",...}); other lines go
to stderr. Figures are merged by name into bench/results.json (written atomically), so running
one benchmark keeps the others' last figures. Exit code 1 if a module failed or printed nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.atomic import atomic_write_json  # noqa: E402

RESULTS = BENCH_DIR / "results.json"
MODULE_TIMEOUT = 1800.0  # seconds per benchmark module
_TARGET = re.compile(r"^\s*(<=|>=|<|>)\s*([0-9.]+)x?(\s|$)")


def discover(names: list[str]) -> list[str]:
    """Module names to run: all bench_*.py, or the ones named (with or without bench_)."""
    available = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    if not names:
        return available
    wanted = [n if n.startswith("bench_") else f"bench_{n}" for n in names]
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; have {', '.join(available)}")
    return wanted


def run_module(module: str) -> tuple[list[dict[str, Any]], str | None]:
    """Run bench.<module>.main() in a subprocess; its figures and an error, if any."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    code = f"import bench.{module} as m; m.main()"
    figures: list[dict[str, Any]] = []
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            figure = parse_figure(line)
            if figure is None:
                sys.stderr.write(f"[{module}] {line}")
            else:
                figures.append(figure)
                sys.stderr.write(f"[{module}] {figure['bench']}: {figure.get('ratio')}\n")
        try:
            returncode = child.wait(timeout=max(1.0, MODULE_TIMEOUT - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            child.kill()
            return figures, "timed out"
    if returncode != 0:
        return figures, f"exit code {returncode}"
    if not figures:
        return figures, "printed no figures"
    return figures, None


def parse_figure(line: str) -> dict[str, Any] | None:
    """A figure if the line is a JSON object with a "bench" key."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "bench" in value else None


def meets(figure: dict[str, Any]) -> str:
    """ "ok" / "MISS": the benchmark's own `target_met`, else a "<= N[x]" target on the ratio;
    "-" for figures reported without a checkable target."""
    if isinstance(figure.get("target_met"), bool):
        return "ok" if figure["target_met"] else "MISS"
    match = _TARGET.match(str(figure.get("target", "")))
    ratio = figure.get("ratio")
    if match is None or not isinstance(ratio, (int, float)):
        return "-"
    op, bound = match.group(1), float(match.group(2))
    good = {
        "<=": ratio <= bound,
        "<": ratio < bound,
        ">=": ratio >= bound,
        ">": ratio > bound,
    }[op]
    return "ok" if good else "MISS"


def number(value: Any) -> str:
    """Compact numbers for the table."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def format_table(figures: list[dict[str, Any]]) -> str:
    """bench | ours | baseline | ratio | unit | target | met."""
    rows = [["bench", "ours", "baseline", "ratio", "unit", "target", "met"]]
    for f in figures:
        rows.append(
            [
                str(f["bench"]),
                number(f.get("ours")),
                number(f.get("baseline")),
                number(f.get("ratio")),
                str(f.get("unit", "")),
                str(f.get("target", "")),
                meets(f),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def merge_results(figures: list[dict[str, Any]], failures: dict[str, str]) -> dict[str, Any]:
    """Previous results updated with this run's figures (by bench name)."""
    previous: dict[str, Any] = {}
    if RESULTS.exists():
        try:
            previous = json.loads(RESULTS.read_text(encoding="utf-8"))
        except ValueError:
            previous = {}
    by_name = {f["bench"]: f for f in previous.get("results", []) if isinstance(f, dict)}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for figure in figures:
        by_name[figure["bench"]] = {**figure, "measured": stamp}
    return {
        "updated": stamp,
        "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "results": [by_name[name] for name in sorted(by_name)],
        "failures": {**previous.get("failures", {}), **failures},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the table, write bench/results.json."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = parser.parse_args(argv)
    figures: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for module in discover(args.names):
        sys.stderr.write(f"== {module}\n")
        found, error = run_module(module)
        figures.extend(found)
        if error:
            failures[module] = error
            sys.stderr.write(f"[{module}] FAILED: {error}\n")
    results = merge_results(figures, failures)
    for module in discover(args.names):
        if module not in failures:
            results["failures"].pop(module, None)
    atomic_write_json(RESULTS, results)
    print(format_table(figures))
    for module, error in failures.items():
        print(f"{module}: FAILED ({error})")
    print(f"results: {RESULTS}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
