"""The control-plane replicas an agent may talk to, and which one it talks to now.

Seeds come from the command line, the config or the registration (`--server A --server B`, or
`A,B`); the server adds the replicas it lists in a signed answer (docs/agent-protocol.md,
Replicas), kept in `state/replicas.json` so a restarted agent knows them even when its seed is
down. Every agent prefers one replica, the highest by a hash of its instance id and the URL
(rendezvous hashing), so a fleet spreads evenly and each agent goes back to the same replica
once it is healthy again. A replica that fails (no connection, 5xx) is left for a jittered,
growing while, and the agent moves to its next replica after a short jittered pause.

One `ReplicaSet` is shared by the agent's threads (long-poll, outbox, heartbeat).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from common.atomic import atomic_write_json
from common.errors import AssistError, UsageError

log = logging.getLogger(__name__)

STATE_FILE = "replicas.json"
MAX_REPLICAS = 64  # URLs kept from one server answer
DOWN_FIRST = 5.0  # seconds a replica is left after its first failure (doubles, jittered)
DOWN_CAP = 300.0  # seconds at most
SWITCH_PAUSE = (0.2, 1.0)  # seconds, jittered, before trying the next replica after a failure
DEFAULT_REFRESH = 600.0  # seconds between replica-list requests when the server names none


class Backoff(Protocol):
    def next_delay(self) -> float: ...


def normalize_server(url: str) -> str:
    """`host[:port]` or a URL, to a base URL without a trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    if not re.match(r"^https?://[^/\s]+", url):
        raise UsageError(f"not a server URL: {url!r}", hint="use https://HOST[:PORT] (or http://)")
    return url.rstrip("/")


def parse_servers(values: str | Iterable[str]) -> list[str]:
    """Server URLs from repeated options and/or comma lists, normalized, first-seen order."""
    items = [values] if isinstance(values, str) else list(values)
    urls: list[str] = []
    for item in items:
        for part in item.split(","):
            if part.strip() and normalize_server(part) not in urls:
                urls.append(normalize_server(part))
    return urls


def preference(instance_id: str, url: str) -> int:
    """The rendezvous weight of `url` for this instance (higher is preferred)."""
    digest = hashlib.sha256(f"{instance_id}\n{url}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def preferred_order(instance_id: str, urls: Sequence[str]) -> list[str]:
    """`urls` by this instance's preference, most preferred first."""
    return sorted(urls, key=lambda url: preference(instance_id, url), reverse=True)


class ReplicaSet:
    """Seeds plus the server's list, with a health record per URL (thread-safe)."""

    def __init__(
        self,
        seeds: str | Iterable[str],
        instance_id: str = "",
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seeds = parse_servers(seeds)
        if not self.seeds:
            raise UsageError("no server URL given", hint="pass --server URL (repeat it, or A,B)")
        self.instance_id = instance_id
        self.state_dir = state_dir
        self.clock = clock
        self.advertised: list[str] = self._load()
        self._down: dict[str, tuple[int, float]] = {}  # url -> (failures, left until)
        self._lock = threading.Lock()
        self._refresh_at = 0.0  # clock time the list is due again (now, at start)
        self._last = ""

    # -- choosing -----------------------------------------------------------------------------

    def ranking(self) -> list[str]:
        """Every known URL, the preferred first: the server's list by hash, then the seeds."""
        listed = preferred_order(self.instance_id, self.advertised or self.seeds)
        return listed + [url for url in self.seeds + self.advertised if url not in listed]

    def current(self) -> str:
        """The replica to use now: the most preferred one not left, else the one back soonest."""
        now = self.clock()
        with self._lock:
            ranking = self.ranking()
            up = [url for url in ranking if self._down.get(url, (0, 0.0))[1] <= now]
            choice = up[0] if up else min(ranking, key=lambda url: self._down[url][1])
            if choice != self._last:
                if self._last:
                    log.info("server replica %s -> %s", self._last, choice)
                self._last = choice
            return choice

    def any_up(self, besides: str = "") -> bool:
        """Whether some replica other than `besides` is not being left."""
        now = self.clock()
        with self._lock:
            return any(
                url != besides and self._down.get(url, (0, 0.0))[1] <= now for url in self.ranking()
            )

    def retry_delay(self, backoff: Backoff) -> float:
        """After a failure: a short jittered pause when another replica is up, else `backoff`."""
        if self.any_up():
            return random.uniform(*SWITCH_PAUSE)
        return backoff.next_delay()

    # -- health -------------------------------------------------------------------------------

    def failed(self, url: str, retry_after: float | None = None) -> None:
        """`url` did not answer (or answered 5xx): leave it for a jittered, growing while."""
        now = self.clock()
        with self._lock:
            failures, until = self._down.get(url, (0, 0.0))
            self._refresh_at = 0.0  # the list may have changed: ask again on the next replica
            if until > now:
                return  # another thread's request in the same outage: it counts once
            failures += 1
            pause = min(DOWN_CAP, DOWN_FIRST * 2 ** min(failures - 1, 16))
            if retry_after:
                pause = max(pause, min(DOWN_CAP, retry_after))
            self._down[url] = (failures, now + pause * random.uniform(0.5, 1.0))
        log.info("server replica %s failed (%d in a row)", url, failures)

    def succeeded(self, url: str) -> None:
        """`url` answered: it is healthy again."""
        if url in self._down:
            with self._lock:
                self._down.pop(url, None)

    # -- the server's list --------------------------------------------------------------------

    def refresh_due(self) -> bool:
        return self.clock() >= self._refresh_at

    def refresh(self, fetch: Callable[[], tuple[list[str], float]]) -> bool:
        """Ask the server for its replica list when due; False (and retry later) on failure."""
        if not self.refresh_due():
            return True
        try:
            urls, every = fetch()
        except AssistError as exc:
            log.info("replica list not refreshed: %s", exc)
            self._refresh_at = self.clock() + DEFAULT_REFRESH / 10
            return False
        self.adopt(urls, every)
        return True

    def adopt(self, urls: Iterable[str], every: float = DEFAULT_REFRESH) -> None:
        """Take the server's list (checked URLs only), and save it for the next start."""
        clean: list[str] = []
        for url in urls:
            try:
                if not isinstance(url, str):
                    raise UsageError("not a string")
                normal = normalize_server(url)
            except UsageError:
                log.warning("ignoring a replica URL the server listed: %r", url)
                continue
            if normal not in clean and len(clean) < MAX_REPLICAS:
                clean.append(normal)
        with self._lock:
            changed = clean != self.advertised
            self.advertised = clean
            self._refresh_at = self.clock() + (every if every > 0 else DEFAULT_REFRESH)
        if changed:
            log.info("server replicas: %s", ", ".join(clean) or "(none listed)")
            self._save()

    def _load(self) -> list[str]:
        if self.state_dir is None:
            return []
        try:
            record = json.loads((self.state_dir / STATE_FILE).read_text(encoding="utf-8"))
            return parse_servers([str(url) for url in record.get("replicas", [])])
        except (OSError, ValueError, AttributeError, UsageError):
            return []

    def _save(self) -> None:
        if self.state_dir is None:
            return
        record = {"replicas": self.advertised, "saved": int(time.time())}
        try:
            atomic_write_json(self.state_dir / STATE_FILE, record, mode=0o600)
        except OSError as exc:
            log.warning("cannot save the replica list: %s", exc)
