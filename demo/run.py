"""The demo script; each capability adds its steps here."""

from __future__ import annotations


def main() -> int:
    """Run the demo steps and print a short report of each."""
    print("demo: nothing to show yet")
    return 0
