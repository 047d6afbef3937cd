"""How a benchmark reports: one JSON line per figure on stdout (`python -m bench` collects them)."""

from __future__ import annotations

import json
import statistics
from typing import Any


def emit(bench: str, ours: float, baseline: float, unit: str, target: str, **extra: Any) -> None:
    """Print one figure as a JSON line."""
    ratio = ours / baseline if baseline else None
    line = {
        "bench": bench,
        "ours": ours,
        "baseline": baseline,
        "ratio": ratio,
        "unit": unit,
        "target": target,
        **extra,
    }
    print(json.dumps(line), flush=True)


def median_figure(
    bench: str,
    ours: list[float],
    baseline: list[float],
    target: str,
    unit: str = "s",
    **extra: Any,
) -> None:
    """One figure from repeated runs: medians (4 places), their ratio (3 places), run count."""
    mo, mb = statistics.median(ours), statistics.median(baseline)
    emit(
        bench, round(mo, 4), round(mb, 4), unit, target,
        ratio=round(mo / mb, 3), runs=len(ours), **extra,
    )  # fmt: skip
