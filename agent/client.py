"""The HTTP seam to the server: one signed JSON call per protocol endpoint.

`AgentClient` takes its `requests.Session` from the caller, so tests can hand it one pointed at
a loopback server; nothing else in the agent speaks HTTP.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import platform
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.identity import Identity, sign_headers
from agent.replicas import ReplicaSet
from agent.replicas import normalize_server as normalize_server  # re-exported
from agent.sessions import RETRY_FAILED, RETRY_UNSUPPORTED, SessionHolder
from common import protocol, sessions
from common.errors import AssistError, DownloadError, UsageError

log = logging.getLogger(__name__)
T = TypeVar("T")

API = "/luban/api"
MAX_ANSWER = 8 * 1024 * 1024  # bytes of one server answer (task lists of 18 KiB scripts fit)
KEYS_PATH = "/v1/server/keys"
REPORTS_PATH = "/v1/task/reports"  # several queued reports in one request
REPLICAS_PATH = "/v1/server/replicas"
RETRYABLE_CODES = {"InvalidSignature", "ReplayedRequest"}  # clock skew, nonce clash: try again
NOTIFY_PATH = "/v1/notify"


class ServerUnavailableError(DownloadError):
    """The server could not be reached or answered 5xx: try again later."""

    reference = "server-unavailable"


class ServerRefusedError(AssistError):
    """The server answered 4xx with an error code: the request itself is wrong."""

    reference = "server-refused"

    def __init__(self, status: int, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"server refused ({status} {code}): {message}", hint=hint)
        self.status = status
        self.code = code

    @property
    def retryable(self) -> bool:
        """True when the same report may succeed later (auth glitch, throttling, a batch item
        the server could not take just now)."""
        return self.status in (408, 425, 429) or self.status >= 500 or self.code in RETRYABLE_CODES


def tls_verify(ca_file: str = "") -> str | bool:
    """What https is verified against: the pinned CA file, else the system's store.

    The system store (ssl's default paths) rather than requests' bundled list, so a CA an
    operator installed on the VM counts; True (requests' own list) only if there is none.
    """
    if ca_file:
        if not Path(ca_file).is_file():
            raise UsageError(f"--ca-file {ca_file}: no such file", hint="give a PEM CA bundle")
        return ca_file
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.capath):
        if candidate and Path(candidate).exists():
            return candidate
    return True


def warn_plain_http(server: str) -> bool:
    """Log a warning for http:// to a non-loopback host; True when it warned."""
    parts = urlsplit(server)
    if parts.scheme != "http" or is_loopback(parts.hostname or ""):
        return False
    log.warning("%s is plain http: tasks are signed; contents are visible on the wire", server)
    return True


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback name or address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after(value: str | None) -> float | None:
    """Seconds of a Retry-After header in its delay-seconds form (None otherwise)."""
    text = (value or "").strip()
    return float(text) if text.isascii() and text.isdigit() and len(text) < 7 else None


class AgentClient:
    """Signed JSON calls to the control plane: to the replica its ReplicaSet picks."""

    def __init__(
        self,
        server: str | ReplicaSet,  # one URL, a comma list, or a set shared between clients
        identity: Identity | None,
        session: requests.Session | None = None,
        timeout: float = 30.0,  # seconds per request (long-polls add their own wait)
        ca_file: str = "",  # PEM CA bundle that https servers must chain to (else the system's)
        sessions: SessionHolder | None = None,  # shared by the clients of one agent
    ) -> None:
        self.replicas = server if isinstance(server, ReplicaSet) else ReplicaSet(server)
        self.identity = identity
        self.sessions = sessions or SessionHolder()
        self.session = session or requests.Session()
        self.timeout = timeout
        self.ca_file = ca_file
        self.verify = tls_verify(ca_file)
        self.poll_beat_at = 0.0  # monotonic time of the last long-poll answer that was a heartbeat
        self.kicks = KickGuard()

    @property
    def server(self) -> str:
        """The replica requests go to now."""
        return self.replicas.current()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: str = "",
        timeout: float | None = None,
        signed: bool = True,
        verify: bool = True,
        shared: bool = False,
    ) -> Any:
        """Send one request and return the decoded JSON answer, or raise a Server*Error.

        A signed request's answer must carry the control plane's signature over this request
        (ResponseRefusedError otherwise); `verify=False` only for the key chain itself. With
        `shared` (the long-poll), a kick's answer signed once for all the instances it names
        is taken too, once; one this agent cannot tell from a replay becomes its bare events.
        A signed request goes in the agent's session when it has one (common/sessions.py);
        one the server refuses as out of session (an authenticated SessionExpired) is sent again
        once, in a new session or signed.
        """
        in_session = signed and verify and path != sessions.SESSION_PATH  # not the key chain
        session = self._session() if in_session else None
        try:
            return self._send(method, path, body, query, timeout, signed, verify, shared, session)
        except ServerRefusedError as exc:
            if session is None or exc.code != sessions.SESSION_EXPIRED:
                raise
            log.info("the server ended the session: opening another")
            self.sessions.drop(session)
        session = self._session()
        return self._send(method, path, body, query, timeout, signed, verify, shared, session)

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        query: str,
        timeout: float | None,
        signed: bool,
        verify: bool,
        shared: bool,
        session: sessions.Session | None,
    ) -> Any:
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")
        server = self.replicas.current()
        full_path = urlsplit(server).path + API + path
        headers = {"Content-Type": "application/json"} if body is not None else {}
        sent: dict[str, str] = {}
        if signed:
            if self.identity is None:
                raise AssistError("cannot sign a request without an identity")
            if session is not None:
                sent = sessions.mac_request(
                    session, self.identity.instance_id, method, full_path, query, data
                )
            else:
                sent = sign_headers(self.identity, method, full_path, query, data)
            headers.update(sent)
        url = server + API + path + (f"?{query}" if query else "")
        wait = timeout or self.timeout
        try:
            response = self.session.request(
                method,
                url,
                data=data or None,
                headers=headers,
                timeout=wait,
                stream=True,
                verify=self.verify,  # per request: REQUESTS_CA_BUNDLE must not override a pin
            )
            try:
                content = self._read_capped(
                    response, time.monotonic() + wait + self.timeout, server
                )
            finally:
                response.close()
        except requests.exceptions.SSLError as exc:
            self.replicas.failed(server)
            raise ServerUnavailableError(
                f"cannot reach {server}: its TLS certificate is not trusted ({exc})",
                hint="pass --ca-file with the control plane's CA (or set [agent] ca_file)"
                if not self.ca_file
                else f"check that {self.ca_file} holds the CA that issued the server's certificate",
            ) from exc
        except requests.RequestException as exc:
            self.replicas.failed(server)
            raise ServerUnavailableError(f"cannot reach {server}: {exc}") from exc
        except ServerUnavailableError:
            self.replicas.failed(server)
            raise
        if response.status_code >= 500:
            self.replicas.failed(server, retry_after(response.headers.get("Retry-After")))
        else:
            self.replicas.succeeded(server)
        if path == sessions.SESSION_PATH and response.status_code == 404:
            # a server without sessions answers unsigned: believing it only keeps this agent
            # on Ed25519 signatures, which is no weaker
            raise ServerRefusedError(404, "NotFound", "the server has no sessions")
        if signed and verify:
            fresh = self._check_signed(sent, full_path, response, content, shared, session)
            if not fresh:
                log.warning("a shared kick taken before or older than this agent: asking again")
                return {"events": bare_events(self._decode(response, content, server))}
        return self._decode(response, content, server)

    def _session(self) -> sessions.Session | None:
        """The session to send in: the current one, else a new one (None: sign with Ed25519,
        for a server without sessions or while one cannot be opened)."""
        holder = self.sessions
        current = holder.usable()
        if current is not None or self.identity is None or not holder.may_open():
            return current or holder.still_valid()
        if not holder.lock.acquire(blocking=False):  # another thread is opening one
            return holder.still_valid()
        try:
            current = holder.usable()
            if current is None and holder.may_open():
                current = self._open_session()
        finally:
            holder.lock.release()
        return current or holder.still_valid()

    def _open_session(self) -> sessions.Session | None:
        """One handshake (Ed25519-signed both ways); None, and a pause, when it fails."""
        assert self.identity is not None
        own = X25519PrivateKey.generate()
        body = sessions.open_request(own)
        try:
            answer = self._send(
                "POST", sessions.SESSION_PATH, body, "", None, True, True, False, None
            )
            session = sessions.session_from(own, answer, self.identity.instance_id)
        except ServerRefusedError as exc:
            pause = RETRY_UNSUPPORTED if exc.status == 404 else RETRY_FAILED
            log.info("no session (%s): requests are signed one by one", exc)
            self.sessions.wait(pause)
            return None
        except (AssistError, KeyError, TypeError, ValueError) as exc:
            log.info("cannot open a session now (%s): signing requests one by one", exc)
            self.sessions.wait(RETRY_FAILED)
            return None
        self.sessions.took(session)
        return session

    def _check_signed(
        self,
        sent: dict[str, str],
        path: str,
        response: requests.Response,
        content: bytes,
        shared: bool = False,
        session: sessions.Session | None = None,
    ) -> bool:
        """Refuse an answer the control plane did not sign for this very request; False for a
        shared kick (`shared` requests only) that is signed but may be a replay. An answer to
        a request in a session may carry the session's HMAC instead of a signature.

        An unknown key may be a rotation: the key chain is fetched once and followed from the
        pinned key (docs/agent-protocol.md, Server key).
        """
        assert self.identity is not None
        instance_id = self.identity.instance_id
        headers = response.headers
        nonce = sent[protocol.HEADER_NONCE]
        mac_only = protocol.HEADER_SERVER_SIGNATURE not in headers
        if sessions.HEADER_SERVER_MAC in headers and (session is not None or mac_only):

            def check_mac() -> None:
                if session is None:  # authenticated for a session this request was not sent in
                    protocol.check_echoes(headers, instance_id, nonce, path)
                    raise protocol.ResponseRefusedError(
                        protocol.REFUSED_BAD_SIGNATURE,
                        f"the answer to {path} is for a session not used here",
                    )
                status = response.status_code
                sessions.check_mac_response(
                    session.keys, instance_id, nonce, path, status, content, headers
                )

            refusing(content, check_mac)
            self.kicks.answered(int(headers[protocol.HEADER_SERVER_TIMESTAMP]))
            return True
        if shared and response.status_code == 200 and protocol.HEADER_KICK_SIGNATURE in headers:
            kick_id, stamp = self._trusting(
                path,
                content,
                lambda trusted: protocol.check_kick(trusted, instance_id, path, content, headers),
            )
            return self.kicks.fresh(kick_id, stamp)
        self._trusting(
            path,
            content,
            lambda trusted: protocol.check_response(
                trusted,
                instance_id,
                nonce,
                path,
                response.status_code,
                content,
                headers,
            ),
        )
        self.kicks.answered(int(headers[protocol.HEADER_SERVER_TIMESTAMP]))
        return True

    def _trusting(self, path: str, content: bytes, check: Callable[[Any], Any]) -> Any:
        """check(trusted keys), following a key rotation once if the key is unknown."""
        assert self.identity is not None
        trust = self.identity.trust
        if trust is None:
            raise protocol.ResponseRefusedError(
                protocol.REFUSED_UNKNOWN_KEY,
                "no control-plane key is pinned yet (state/server-key.json)",
            )

        def following() -> Any:
            try:
                return check(trust.trusted())
            except protocol.ResponseRefusedError as exc:
                if exc.code != protocol.REFUSED_UNKNOWN_KEY or path.endswith(KEYS_PATH):
                    raise
                if not trust.follow(self.server_keys()):
                    raise
                return check(trust.trusted())

        return refusing(content, following)

    def server_keys(self) -> list[tuple[str, str]]:
        """The control plane's key chain, oldest first: [(public_key, endorsement)…].

        The answer is read unverified: follow_rotations checks every link from the pinned key,
        and the first-use upgrade path (agent/upgrade.py) says so.
        """
        answer = self.call("POST", KEYS_PATH, {}, verify=False)
        keys = answer.get("keys") if isinstance(answer, dict) else None
        chain: list[tuple[str, str]] = []
        for item in keys if isinstance(keys, list) else []:
            if isinstance(item, dict):
                chain.append(
                    (str(item.get("public_key") or ""), str(item.get("endorsement") or ""))
                )
        return chain

    def server_replicas(self) -> tuple[list[str], float]:
        """The replicas the control plane lists (signed answer), and seconds to keep the list."""
        answer = self.call("POST", REPLICAS_PATH, {})
        urls = answer.get("replicas") if isinstance(answer, dict) else None
        try:
            every = float(answer.get("refresh") or 0)
        except (TypeError, ValueError):
            every = 0.0
        return [str(url) for url in urls if isinstance(url, str)] if isinstance(
            urls, list
        ) else [], every

    def _read_capped(self, response: requests.Response, deadline: float, server: str) -> bytes:
        """The answer's body, refused past MAX_ANSWER bytes or the deadline (monotonic)."""
        content = bytearray()
        for piece in response.iter_content(65536):
            content += piece
            if len(content) > MAX_ANSWER:
                raise ServerUnavailableError(
                    f"{server} answered more than {MAX_ANSWER} bytes; answer ignored",
                    hint="check that --server points at an assist-server",
                )
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"{server} took too long to answer")
        return bytes(content)

    def _decode(self, response: requests.Response, content: bytes, server: str) -> Any:
        """Turn a response into JSON or the right error."""
        text = content[:200].decode("utf-8", "replace")
        if response.status_code >= 500:
            raise ServerUnavailableError(f"{server} answered {response.status_code}: {text}")
        try:
            payload = json.loads(content)
        except (ValueError, RecursionError):
            payload = None
        if response.status_code >= 400:
            code = payload.get("code", "") if isinstance(payload, dict) else ""
            message = payload.get("message", "") if isinstance(payload, dict) else ""
            raise ServerRefusedError(response.status_code, code or "HTTP", message or text)
        if payload is None:
            raise ServerUnavailableError(f"{server} answered something that is not JSON")
        return payload

    def register(
        self,
        activation_id: str,
        activation_code: str,
        public_key: str,
        instance_name: str = "",
        instance_id: str = "",
        agent_version: str = "",
        server_key: str = "",
    ) -> tuple[str, str]:
        """Exchange an activation for an instance id and the control plane's key.

        The code never crosses the wire: the agent sends a MAC keyed from it, and accepts the
        returned key only with the server's MAC over both keys, the id and both nonces (or
        when it equals `server_key`, pinned out of band). Returns (instance_id, server_key).
        """
        nonce, now = protocol.new_nonce(), int(time.time())
        mac_key = protocol.activation_mac_key(
            activation_id, protocol.activation_secret(activation_code)
        )
        body: dict[str, Any] = {
            "activation_id": activation_id,
            "public_key": public_key,
            "nonce": nonce,
            "timestamp": now,
            "proof": protocol.agent_proof(
                mac_key, activation_id, public_key, instance_id, nonce, now
            ),
            "instance_name": instance_name or socket.gethostname(),
            "hostname": socket.gethostname(),
            "os_type": "windows" if platform.system() == "Windows" else "linux",
            "agent_version": agent_version,
        }
        if instance_id:
            body["instance_id"] = instance_id
        answer = self.call("POST", "/instance/register", body, signed=False)
        if not isinstance(answer, dict) or not answer.get("instance_id"):
            raise ServerUnavailableError(f"register answer has no instance_id: {answer!r}")
        instance = str(answer["instance_id"])
        returned = str(answer.get("server_key") or "")
        expected = protocol.server_proof(
            mac_key,
            activation_id,
            public_key,
            returned,
            instance,
            nonce,
            str(answer.get("server_nonce") or ""),
        )
        proven = protocol.proofs_equal(expected, str(answer.get("server_proof") or ""))
        if server_key and returned != server_key:
            raise protocol.ResponseRefusedError(
                protocol.REFUSED_UNKNOWN_KEY,
                "the server's key is not the one given with --server-key; not registered",
            )
        if not server_key and not proven:
            raise protocol.ResponseRefusedError(
                protocol.REFUSED_BAD_SIGNATURE,
                "the server did not prove it holds the activation code: its key cannot be"
                " trusted, registration abandoned",
            )
        return instance, returned

    def list_tasks(self, reason: str) -> dict[str, Any]:
        """The tasks this instance should have, invocations to stop, and files to write."""
        answer = self.call("POST", "/v1/task/list", {"reason": reason})
        return {
            "run": list(answer.get("run") or []),
            "stop": list(answer.get("stop") or []),
            "files": list(answer.get("files") or []),
        }

    def post_report(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send one queued report (running chunk or terminal) and return the acknowledgement."""
        answer = self.call("POST", path, body)
        return answer if isinstance(answer, dict) else {}

    def post_reports(self, reports: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Send several queued reports, (path, body) each, in one request (task/reports); the
        answers, in order, are what each would have had on its own (docs/agent-protocol.md)."""
        items = [{"path": path, "body": body} for path, body in reports]
        answer = self.call("POST", REPORTS_PATH, {"reports": items})
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise ServerUnavailableError("the server's answer to a batch of reports is malformed")
        return [r if isinstance(r, dict) else {} for r in results]

    def heartbeat(self, body: dict[str, Any]) -> float:
        """Report liveness; return the server's next interval in seconds (0 if none given)."""
        answer = self.call("POST", "/heart-beat", body)
        try:
            return float(answer.get("next_interval") or 0)
        except (TypeError, ValueError, AttributeError):
            return 0.0

    def notify(self, wait: float) -> list[dict[str, Any]]:
        """Long-poll for events; returns [] when nothing happened within `wait` seconds (0:
        what is there now, without waiting)."""
        seconds = max(0, int(wait))
        answer = self.call(
            "GET",
            NOTIFY_PATH,
            query=f"timeout={seconds}&{protocol.SHARED_KICKS}",
            timeout=seconds + self.timeout,
            shared=True,
        )
        events = answer.get("events") if isinstance(answer, dict) else None
        if isinstance(answer, dict) and answer.get("heartbeat") is True:
            self.poll_beat_at = time.monotonic()  # the server counted this poll as a heartbeat
        return [e for e in events or [] if isinstance(e, dict)]

    def update_check(self, body: dict[str, Any]) -> dict[str, Any]:
        """Ask whether an operator wants this instance updated now."""
        answer = self.call("POST", "/v1/update/update_check", body)
        return answer if isinstance(answer, dict) else {}


def bare_events(answer: Any) -> list[dict[str, str]]:
    """A long-poll answer's events without their contents: each only says what to ask for
    in a request of the agent's own (list tasks, check for updates), so a played-back answer
    cannot make the agent act on anything it carried."""
    events = answer.get("events") if isinstance(answer, dict) else None
    kinds = [e.get("type") for e in events or [] if isinstance(e, dict)]
    return [{"type": kind} for kind in kinds if kind in ("task", "stop", "update", "settings")]


def refusing(content: bytes, check: Callable[[], T]) -> T:
    """check(); a refusal it raises carries the refused bytes (for reporting which invocations
    they named) and is logged."""
    try:
        return check()
    except protocol.ResponseRefusedError as exc:
        exc.body = content
        log.error("%s", exc)
        raise


class KickGuard:
    """Takes each shared kick once (docs/agent-protocol.md, Shared kicks).

    A shared answer is signed once for every instance a kick woke, so it names no nonce of
    this agent's: a recorded one could be played back. Taken are only kicks signed after this
    process's first answer signed for one of its own requests (server time), and each kick id
    once; a kick not taken becomes its bare events (bare_events: list your tasks, check for
    updates), which a replay cannot abuse.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.floor: int | None = None  # server time of this process's first own-signed answer
        self._seen: dict[str, int] = {}  # kick id -> its server time

    def answered(self, stamp: int) -> None:
        """An answer signed for one of this process's requests came, at server time `stamp`."""
        with self._lock:
            if self.floor is None:
                self.floor = stamp

    def fresh(self, kick_id: str, stamp: int) -> bool:
        """Whether to take this kick: signed after the floor, and not taken before."""
        with self._lock:
            if self.floor is None or stamp <= self.floor or kick_id in self._seen:
                return False
            horizon = stamp - 2 * protocol.RESPONSE_WINDOW  # older ones fail the time check
            for old in [k for k, t in self._seen.items() if t < horizon]:
                del self._seen[old]
            self._seen[kick_id] = stamp
            return True
