"""assist-mirror serve under any request path and any Range / conditional headers (hypothesis):
a 2xx, 3xx or 4xx, never a 5xx, and never a byte from outside --root."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devkit.server import REPO_ROOT, _env, free_port, stop_group, wait_http

SECRET = b"outside the mirror root\n"
LATIN1 = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=30,
).map(str.strip)


@pytest.fixture(scope="module")
def mirror_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("fuzzmirror")
    (base / "secret.txt").write_bytes(SECRET)
    root = base / "root"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "timestamp.json").write_text('{"signed": {"version": 1}}')
    (root / ".mirror").mkdir()
    (root / ".mirror" / "state.json").write_text("{}")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mirror.cli",
            "serve",
            "--root",
            str(root),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=(base / "serve.log").open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
        env=_env(),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/metadata/timestamp.json", proc, 60)
        yield url
    finally:
        stop_group(proc)
    assert "Traceback" not in (base / "serve.log").read_text(errors="replace")


PATHS = st.one_of(
    st.sampled_from(
        [
            "/metadata/timestamp.json",
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/metadata/..%2f..%2fsecret.txt",
            "/.mirror/state.json",
            "/%00",
            "/metadata/%ff",
        ]
    ),
    st.text(max_size=30).map(lambda t: "/" + requests.utils.quote(t, safe="/%.")),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    PATHS,
    st.dictionaries(
        st.sampled_from(["Range", "If-None-Match", "If-Range", "If-Modified-Since"]), LATIN1
    ),
)
@example("/metadata/timestamp.json", {"Range": "bytes=²-5"})
@example("/metadata/timestamp.json", {"Range": "bytes=99999999999999999999999-"})
def test_any_path_and_range_never_cause_a_server_error(
    mirror_url: str, path: str, headers: dict[str, str]
) -> None:
    raw = {k: v.encode("latin-1") for k, v in headers.items()}
    response = requests.get(mirror_url + path, headers=raw, timeout=30, allow_redirects=False)
    assert response.status_code < 500, (path, headers, response.status_code)
    assert SECRET not in response.content
