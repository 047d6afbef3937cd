"""Parsing of outside input that cannot crash: every parser here answers a value or ValueError.

The traps it closes (docs/SECURITY.md, "malformed input"): `str.isdigit()` is true for "²" and
other non-ASCII digits that `int()` then refuses; `json.loads` and `ast.literal_eval` raise
RecursionError (not ValueError) on deeply nested input; a hex literal of thousands of digits
parses to an int that `str()` refuses to print (Python's integer string limit).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

MAX_INT_BITS = 64  # integers from outside input beyond this are refused


def ascii_int(text: str, max_digits: int = 18) -> int | None:
    """The integer spelled by 1..max_digits ASCII digits; None for anything else."""
    if not re.fullmatch(rf"[0-9]{{1,{max_digits}}}", text):
        return None
    return int(text)


def load_json(data: str | bytes) -> Any:
    """json.loads, with nesting too deep for the parser as a ValueError."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def load_literal(text: str) -> Any:
    """A Python literal (what str(dict) gives); ValueError for anything else or too deep."""
    try:
        return ast.literal_eval(text)
    except (SyntaxError, MemoryError, RecursionError, TypeError) as exc:
        raise ValueError("not a Python literal") from exc


def small_int(value: int) -> bool:
    """Whether `value` fits the integers outside input may carry (64 bits)."""
    return value.bit_length() <= MAX_INT_BITS
