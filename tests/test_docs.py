"""The docs name real things: every test that docs/SECURITY.md cites exists in tests/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_NAME = re.compile(r"(?<![/\w])test_[A-Za-z0-9_{},]+(?![\w.])")
TEST_FILE = re.compile(r"tests/[\w/]+\.py")


def defined_tests() -> set[str]:
    """Every `def test_…` under tests/."""
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.update(re.findall(r"def (test_\w+)", path.read_text(encoding="utf-8")))
    return names


def expand(name: str) -> list[str]:
    """`test_new_{timestamp,snapshot}_x` → the names it stands for."""
    match = re.search(r"\{([^}]*)\}", name)
    if not match:
        return [name]
    return [
        expanded
        for part in match.group(1).split(",")
        for expanded in expand(name[: match.start()] + part + name[match.end() :])
    ]


def test_every_test_named_in_security_md_exists() -> None:
    text = (ROOT / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    known = defined_tests()
    cited = {name for raw in TEST_NAME.findall(text) for name in expand(raw.rstrip("_,"))}
    cited = {name for name in cited if not name.endswith(".py")}
    missing = sorted(name for name in cited if name not in known)
    assert not missing, f"docs/SECURITY.md cites tests that do not exist: {missing}"
    files = {path for path in TEST_FILE.findall(text)}
    absent = sorted(path for path in files if not (ROOT / path).exists())
    assert not absent, f"docs/SECURITY.md cites test files that do not exist: {absent}"
