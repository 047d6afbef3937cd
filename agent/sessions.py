"""The agent's session with its control plane, shared by the agent's clients (one per thread).

A session replaces the Ed25519 signature of every request and answer by an HMAC
(common/sessions.py, docs/agent-protocol.md Sessions). It is opened on first use, again an hour
before it ends or when the server says it ended (a key rotation, a re-registration), and kept
in memory only: a restarted agent opens a new one. A control plane that does not know sessions
(404) is asked again an hour later; meanwhile every request is signed with Ed25519 as before, as
it is while another thread opens a session, for 30 s after a handshake failed, and when the
server ends a session less than SPACING after it began (a replica still on a rotated key).
"""

from __future__ import annotations

import threading
import time

from common.sessions import Session

RETRY_UNSUPPORTED = 3600.0  # seconds before asking a server without sessions again
RETRY_FAILED = 30.0  # seconds before trying again after a handshake that failed otherwise
SPACING = 10.0  # seconds at least between two handshakes (the server refuses closer ones)


class SessionHolder:
    """The current session, and whether to try opening one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while a session is opened; the others do not wait
        self.session: Session | None = None
        self.opened = 0  # sessions opened by this process (for the tests and the log)
        self._wait_until = 0.0  # monotonic: no handshake before

    def usable(self, now: float | None = None) -> Session | None:
        """The session to sign with now, if it is not due for renewal."""
        session = self.session
        return session if session is not None and not session.due(now) else None

    def still_valid(self, now: float | None = None) -> Session | None:
        """The session, due for renewal or not, while its ticket has not ended."""
        session = self.session
        now = time.time() if now is None else now
        return session if session is not None and now < session.expires else None

    def may_open(self) -> bool:
        return time.monotonic() >= self._wait_until

    def took(self, session: Session) -> None:
        self.session = session
        self.opened += 1
        self.wait(SPACING)  # a session the server ends at once is not replaced at once

    def paused_for(self) -> float:
        """Seconds before the next handshake may be tried."""
        return max(0.0, self._wait_until - time.monotonic())

    def wait(self, seconds: float) -> None:
        """No handshake for `seconds` (the server has no sessions, or the last one failed)."""
        self._wait_until = time.monotonic() + seconds

    def drop(self, session: Session) -> None:
        """The server refused `session`: the next request opens another."""
        if self.session is session:
            self.session = None
