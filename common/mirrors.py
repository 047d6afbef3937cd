"""Mirror selection (docs/architecture.md, Mirror selection): region detection, candidate tiers, concurrent probing, ranking.

Decisions (`candidate_mirrors`, `rank_mirrors`; the region table is common.regions) are pure functions over data; the
I/O (metadata service, probing) sits at the edges and takes its HTTP session as a parameter.

Tiers: 0 = explicit (`--mirror` / config `mirrors`), 1 = the region's intranet mirror,
2 = the internet origin. When explicit mirrors are given they are the only candidates: an
operator who names a mirror means it, and a fleet in a closed region must not reach outward.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from common.atomic import atomic_write_text
from common.config import REGION_ENV, MirrorConfig
from common.errors import ConfigError, DownloadError, UsageError
from common.httpbounds import get_with_deadline, read_small_body, resolve_proxies
from common.regions import default_table, region_url, valid_region

log = logging.getLogger(__name__)

PROBE_PATH = "metadata/timestamp.json"
PROBE_MAX_BYTES = 1 << 20  # a timestamp.json is a few hundred bytes; anything huge is garbage

TIER_EXPLICIT = 0
TIER_INTRANET = 1
TIER_INTERNET = 2
TIER_NAMES = {TIER_EXPLICIT: "explicit", TIER_INTRANET: "intranet", TIER_INTERNET: "internet"}


@dataclass(frozen=True)
class Candidate:
    """A mirror base URL and the tier it came from (lower is preferred)."""

    url: str
    tier: int


@dataclass(frozen=True)
class ProbeResult:
    """How a candidate answered the probe: latency in seconds, or the error."""

    candidate: Candidate
    latency: float | None  # seconds; None when the probe failed
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.latency is not None


def normalize_url(url: str) -> str:
    """Base URLs always end with one slash so paths join by concatenation; http(s) only."""
    url = url.strip()
    if not re.match(r"^https?://[^/\s]+", url):
        raise UsageError(
            f"not a mirror URL: {url!r}", hint="use http://HOST[:PORT]/PATH/ or https://…"
        )
    return url.rstrip("/") + "/"


def candidate_mirrors(
    config: MirrorConfig, region: str, explicit: Sequence[str] = ()
) -> list[Candidate]:
    """Candidates in tier order: explicit only if given, else intranet (if region) + internet."""
    named = [*explicit, *config.mirrors]
    if named:
        return _dedupe([Candidate(normalize_url(u), TIER_EXPLICIT) for u in named])
    out: list[Candidate] = []
    if region and config.intranet_template:
        url = region_url(region, default_table(config.intranet_template))
        out.append(Candidate(normalize_url(url), TIER_INTRANET))
    if config.internet_origin:
        out.append(Candidate(normalize_url(config.internet_origin), TIER_INTERNET))
    return _dedupe(out)


def _dedupe(candidates: list[Candidate]) -> list[Candidate]:
    """Keep the first occurrence of each URL."""
    seen: set[str] = set()
    out = []
    for cand in candidates:
        if cand.url not in seen:
            seen.add(cand.url)
            out.append(cand)
    return out


def rank_mirrors(results: Sequence[ProbeResult]) -> list[str]:
    """Mirrors that answered, best first: by tier, then latency; failed ones are dropped."""
    good = [r for r in results if r.ok]
    good.sort(key=lambda r: (r.candidate.tier, r.latency))
    return [r.candidate.url for r in good]


def detect_region(
    config: MirrorConfig,
    *,
    cli_region: str | None = None,
    region_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
) -> str:
    """Region: --region > env > config > cached state/region-id > metadata service; '' if unknown."""
    env = os.environ if env is None else env
    for source, value in (
        ("--region", cli_region),
        (REGION_ENV, env.get(REGION_ENV)),
        ("config", config.region),
    ):
        if value:
            return _checked_region(value.strip(), source)
    cached = read_cached_region(region_file)
    if cached:
        return cached
    region = query_metadata_region(config, session=session)
    if region and region_file is not None:
        atomic_write_text(region_file, region + "\n", mode=0o600)
    return region


def _checked_region(region: str, source: str) -> str:
    """Refuse a malformed region id (it ends up in a URL)."""
    if not valid_region(region):
        raise ConfigError(
            f"invalid region id {region!r} from {source}", hint="use a region id like cn-hangzhou"
        )
    return region


def read_cached_region(region_file: Path | None) -> str:
    """The region cached by an earlier detection (Layout.region_file), if valid."""
    if region_file is None:
        return ""
    try:
        text = region_file.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return text if valid_region(text) else ""


def query_metadata_region(config: MirrorConfig, session: requests.Session | None = None) -> str:
    """Ask the instance metadata service for the region (short timeout); '' when unavailable."""
    if not config.metadata_url:
        return ""
    http = session or requests.Session()
    deadline = time.monotonic() + config.metadata_timeout
    try:
        with get_with_deadline(
            http,
            config.metadata_url,
            config.metadata_timeout,
            timeout=config.metadata_timeout,
            stream=True,
            headers={"Accept-Encoding": "identity"},
        ) as resp:
            body = read_small_body(resp, 256, deadline) if resp.status_code == 200 else b""
        text = body.decode("ascii", "replace").strip()
    except (requests.RequestException, DownloadError) as exc:
        log.info("metadata service unavailable: %s", exc)
        return ""
    if not valid_region(text):
        log.info("metadata service returned no usable region")
        return ""
    return text


def probe_mirror(
    candidate: Candidate, timeout: float, session: requests.Session | None = None
) -> ProbeResult:
    """Fetch the candidate's timestamp.json within `timeout` seconds in total; must be TUF JSON."""
    http = session or requests.Session()
    start = time.monotonic()
    deadline = start + timeout
    try:
        with http.get(
            candidate.url + PROBE_PATH,
            timeout=timeout,
            stream=True,
            headers={"Accept-Encoding": "identity"},
        ) as resp:
            if resp.status_code != 200:
                return ProbeResult(candidate, None, f"HTTP {resp.status_code}")
            body = read_small_body(resp, PROBE_MAX_BYTES, deadline)
    except (requests.RequestException, DownloadError) as exc:
        return ProbeResult(candidate, None, str(exc) or type(exc).__name__)
    try:
        doc = json.loads(body)
    except ValueError:
        return ProbeResult(candidate, None, "not JSON")
    if not isinstance(doc, dict) or "signed" not in doc:
        return ProbeResult(candidate, None, "not TUF metadata")
    return ProbeResult(candidate, time.monotonic() - start)


def probe_mirrors(
    candidates: Sequence[Candidate], timeout: float, session: requests.Session | None = None
) -> list[ProbeResult]:
    """Probe all candidates at once; a candidate that does not finish in time counts as failed.

    Each probe runs on a daemon thread, and the caller waits for them only until the deadline:
    a mirror that trickles or hangs (even in DNS, which no socket timeout covers) can neither
    delay the ranking nor keep the process alive once its work is done.
    """
    if not candidates:
        return []
    answers: dict[int, ProbeResult] = {}

    def run(index: int, candidate: Candidate) -> None:
        try:
            answers[index] = probe_mirror(candidate, timeout, session)
        except Exception as exc:  # noqa: BLE001 - a probe's failure is its result
            answers[index] = ProbeResult(candidate, None, f"{type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=run, args=(i, c), name=f"probe-{i}", daemon=True)
        for i, c in enumerate(candidates)
    ]
    deadline = time.monotonic() + timeout + 0.5
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    results = [
        answers.get(i) or ProbeResult(c, None, "probe timed out") for i, c in enumerate(candidates)
    ]
    for res in results:
        log.info(
            "mirror %s (%s): %s",
            res.candidate.url,
            TIER_NAMES.get(res.candidate.tier, res.candidate.tier),
            f"{res.latency * 1000:.0f} ms" if res.latency is not None else res.error,
        )
    return results


def proxied_session(config: MirrorConfig, env: Mapping[str, str] | None = None) -> requests.Session:
    """A session using the configured proxy, else ALIYUN_ASSIST_PROXY, else the standard env."""
    session = requests.Session()
    proxies = resolve_proxies(config.proxy, env)
    if proxies:
        session.proxies = proxies
    return session


def select_mirrors(
    config: MirrorConfig,
    *,
    cli_mirrors: Sequence[str] = (),
    cli_region: str | None = None,
    region_file: Path | None = None,
    session: requests.Session | None = None,
) -> list[str]:
    """Detect the region, probe the candidates, and return the working mirrors best first."""
    explicit = [*cli_mirrors, *config.mirrors]
    region = (
        ""  # explicit mirrors are the only candidates: no need to ask anyone for the region
        if explicit
        else detect_region(config, cli_region=cli_region, region_file=region_file, session=session)
    )
    candidates = candidate_mirrors(config, region, cli_mirrors)
    session = session or proxied_session(config)
    if not candidates:
        raise ConfigError("no mirror configured", hint="pass --mirror URL or set [mirror] mirrors")
    ranked = rank_mirrors(probe_mirrors(candidates, config.probe_timeout, session))
    if not ranked:
        tried = ", ".join(c.url for c in candidates)
        raise DownloadError(
            f"no mirror answered (tried {tried})",
            hint="check the network or proxy, or pass --mirror URL",
        )
    return ranked
