"""The one region table (common.regions) as installer, updater and assist-mirror use it."""

from __future__ import annotations

import pytest

from common.config import MirrorConfig
from common.errors import ConfigError, UsageError
from common.mirrors import TIER_INTRANET, Candidate, candidate_mirrors
from common.regions import load_table, region_url


def test_the_intranet_tier_comes_from_the_one_region_table() -> None:
    """Installer/updater and assist-mirror derive a region's URL with the same lookup: an
    unknown region under the default template is refused with a hint, not guessed."""
    config = MirrorConfig(internet_origin="http://127.0.0.1:2")
    assert candidate_mirrors(config, "cn-hangzhou")[0] == Candidate(
        region_url("cn-hangzhou", load_table(None)), TIER_INTRANET
    )
    with pytest.raises(UsageError, match="unknown region 'mars-1'") as info:
        candidate_mirrors(config, "mars-1")
    assert "--mirror URL" in (info.value.hint or "")
    own = MirrorConfig(intranet_template="http://127.0.0.1:1/{region}/", internet_origin="")
    assert candidate_mirrors(own, "mars-1") == [
        Candidate("http://127.0.0.1:1/mars-1/", TIER_INTRANET)
    ]


def test_a_malformed_region_is_refused_by_the_mirror_too() -> None:
    """assist-mirror used to format any table key into a URL unchecked."""
    table = {**load_table(None), "cn/../evil": "http://127.0.0.1:1/{region}/"}
    with pytest.raises(ConfigError, match="invalid region"):
        region_url("cn/../evil", table)


def test_a_template_with_other_braces_is_not_formatted() -> None:
    """The mirror's str.format used to raise KeyError on a URL with other braces."""
    table = load_table(None, "http://127.0.0.1:1/{region}/{x}/")
    assert region_url("cn-hangzhou", table) == "http://127.0.0.1:1/cn-hangzhou/{x}/"
