"""The HTTP seam to the server: one signed JSON call per protocol endpoint.

`AgentClient` takes its `requests.Session` from the caller, so tests can hand it one pointed at
a loopback server; nothing else in the agent speaks HTTP.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import requests

from agent.identity import Identity, sign_headers
from common.errors import AssistError, DownloadError, UsageError

log = logging.getLogger(__name__)

API = "/luban/api"
MAX_ANSWER = 8 * 1024 * 1024  # bytes of one server answer (task lists of 18 KiB scripts fit)
RETRYABLE_CODES = {"InvalidSignature", "ReplayedRequest"}  # clock skew, nonce clash: try again


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
        """True when the same report may succeed later (auth glitch, throttling)."""
        return self.status in (408, 425, 429) or self.code in RETRYABLE_CODES


def normalize_server(url: str) -> str:
    """`host[:port]` or a URL, to a base URL without a trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    if not re.match(r"^https?://[^/\s]+", url):
        raise UsageError(f"not a server URL: {url!r}", hint="use https://HOST[:PORT] (or http://)")
    return url.rstrip("/")


class AgentClient:
    """Signed JSON calls to one server."""

    def __init__(
        self,
        server: str,
        identity: Identity | None,
        session: requests.Session | None = None,
        timeout: float = 30.0,  # seconds per request (long-polls add their own wait)
    ) -> None:
        self.server = normalize_server(server)
        self.identity = identity
        self.session = session or requests.Session()
        self.timeout = timeout
        self._base_path = urlsplit(self.server).path

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: str = "",
        timeout: float | None = None,
        signed: bool = True,
    ) -> Any:
        """Send one request and return the decoded JSON answer, or raise a Server*Error."""
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")
        full_path = self._base_path + API + path
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if signed:
            if self.identity is None:
                raise AssistError("cannot sign a request without an identity")
            headers.update(sign_headers(self.identity, method, full_path, query, data))
        url = self.server + API + path + (f"?{query}" if query else "")
        wait = timeout or self.timeout
        try:
            response = self.session.request(
                method, url, data=data or None, headers=headers, timeout=wait, stream=True
            )
            try:
                content = self._read_capped(response, time.monotonic() + wait + self.timeout)
            finally:
                response.close()
        except requests.RequestException as exc:
            raise ServerUnavailableError(f"cannot reach {self.server}: {exc}") from exc
        return self._decode(response, content)

    def _read_capped(self, response: requests.Response, deadline: float) -> bytes:
        """The answer's body, refused past MAX_ANSWER bytes or the deadline (monotonic)."""
        content = bytearray()
        for piece in response.iter_content(65536):
            content += piece
            if len(content) > MAX_ANSWER:
                raise ServerUnavailableError(
                    f"{self.server} answered more than {MAX_ANSWER} bytes; answer ignored",
                    hint="check that --server points at an assist-server",
                )
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"{self.server} took too long to answer")
        return bytes(content)

    def _decode(self, response: requests.Response, content: bytes) -> Any:
        """Turn a response into JSON or the right error."""
        text = content[:200].decode("utf-8", "replace")
        if response.status_code >= 500:
            raise ServerUnavailableError(f"{self.server} answered {response.status_code}: {text}")
        try:
            payload = json.loads(content)
        except (ValueError, RecursionError):
            payload = None
        if response.status_code >= 400:
            code = payload.get("code", "") if isinstance(payload, dict) else ""
            message = payload.get("message", "") if isinstance(payload, dict) else ""
            raise ServerRefusedError(response.status_code, code or "HTTP", message or text)
        if payload is None:
            raise ServerUnavailableError(f"{self.server} answered something that is not JSON")
        return payload

    def register(
        self,
        activation_id: str,
        activation_code: str,
        public_key: str,
        instance_name: str = "",
        instance_id: str = "",
        agent_version: str = "",
    ) -> str:
        """Exchange an activation for an instance id."""
        body = {
            "activation_id": activation_id,
            "activation_code": activation_code,
            "public_key": public_key,
            "instance_name": instance_name or socket.gethostname(),
            "hostname": socket.gethostname(),
            "os_type": "windows" if platform.system() == "Windows" else "linux",
            "agent_version": agent_version,
        }
        if instance_id:
            body["instance_id"] = instance_id
        answer = self.call("POST", "/instance/register", body, signed=False)
        instance = answer.get("instance_id") if isinstance(answer, dict) else None
        if not instance:
            raise ServerUnavailableError(f"register answer has no instance_id: {answer!r}")
        return str(instance)

    def list_tasks(self, reason: str) -> dict[str, Any]:
        """The tasks this instance should have, and invocations to stop."""
        answer = self.call("POST", "/v1/task/list", {"reason": reason})
        return {"run": list(answer.get("run") or []), "stop": list(answer.get("stop") or [])}

    def post_report(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send one queued report (running chunk or terminal) and return the acknowledgement."""
        answer = self.call("POST", path, body)
        return answer if isinstance(answer, dict) else {}

    def heartbeat(self, body: dict[str, Any]) -> float:
        """Report liveness; return the server's next interval in seconds (0 if none given)."""
        answer = self.call("POST", "/heart-beat", body)
        try:
            return float(answer.get("next_interval") or 0)
        except (TypeError, ValueError, AttributeError):
            return 0.0

    def notify(self, wait: float) -> list[dict[str, Any]]:
        """Long-poll for events; returns [] when nothing happened within `wait` seconds."""
        seconds = max(1, int(wait))
        answer = self.call(
            "GET", "/v1/notify", query=f"timeout={seconds}", timeout=seconds + self.timeout
        )
        events = answer.get("events") if isinstance(answer, dict) else None
        return [e for e in events or [] if isinstance(e, dict)]

    def update_check(self, body: dict[str, Any]) -> dict[str, Any]:
        """Ask whether an operator wants this instance updated now."""
        answer = self.call("POST", "/v1/update/update_check", body)
        return answer if isinstance(answer, dict) else {}
