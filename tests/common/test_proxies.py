"""Proxy choice is one rule for the fetcher and the mirror prober: config, then ALIYUN_ASSIST_PROXY."""

from __future__ import annotations

from common.config import PROXY_ENV, MirrorConfig
from common.fetch import resolve_proxies
from common.mirrors import proxied_session

PROXY = "http://127.0.0.1:3128"
OTHER = "http://127.0.0.1:8888"


def test_configured_proxy_wins_over_the_environment() -> None:
    env = {PROXY_ENV: OTHER}
    assert resolve_proxies(PROXY, env) == {"http": PROXY, "https": PROXY}
    session = proxied_session(MirrorConfig(proxy=PROXY), env)
    assert session.proxies == {"http": PROXY, "https": PROXY}


def test_environment_proxy_when_none_is_configured() -> None:
    env = {PROXY_ENV: OTHER}
    assert resolve_proxies(None, env) == {"http": OTHER, "https": OTHER}
    assert proxied_session(MirrorConfig(), env).proxies == {"http": OTHER, "https": OTHER}


def test_no_proxy_leaves_requests_to_the_standard_variables() -> None:
    assert resolve_proxies("", {}) is None
    assert proxied_session(MirrorConfig(), {}).proxies == {}
