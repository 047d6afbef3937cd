"""common.atomic.read_json: a missing file raises the caller's error, a bad one ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.atomic import read_json
from common.errors import ConfigError, UsageError


def test_reads_the_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"a": [1, 2]}', encoding="utf-8")
    assert read_json(path, missing=UsageError("no")) == {"a": [1, 2]}


def test_missing_file_raises_the_given_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not set up") as info:
        read_json(tmp_path / "absent.json", missing=UsageError("not set up", hint="init it"))
    assert info.value.hint == "init it"
    assert not (tmp_path / "absent.json").exists()


def test_unreadable_file_is_a_config_error_with_the_hint(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read .*bad.json") as info:
        read_json(path, missing=UsageError("no"), unreadable_hint="regenerate it")
    assert info.value.hint == "regenerate it"
    assert path.read_text(encoding="utf-8") == "{not json"
