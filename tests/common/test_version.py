"""common.version.version_sort_key: packaging order, unparseable strings first by text."""

from __future__ import annotations

from common.version import version_sort_key


def test_versions_sort_by_packaging_order_not_text() -> None:
    ordered = sorted(["2.10.0", "2.9.1", "2.2.5", "10.0"], key=version_sort_key)
    assert ordered == ["2.2.5", "2.9.1", "2.10.0", "10.0"]


def test_unparseable_versions_sort_first_by_text() -> None:
    ordered = sorted(["1.0", "zeta", "0.1", "alpha-x"], key=version_sort_key)
    assert ordered == ["alpha-x", "zeta", "0.1", "1.0"]


def test_equal_versions_have_equal_keys() -> None:
    assert version_sort_key("1.0") == version_sort_key("1.0.0")
    assert version_sort_key("junk") != version_sort_key("1.0")
