"""The Starlette application: operator RPC endpoint, agent API, health, background chores."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server import lifecycle, overload, rpc
from server.agent_api import handlers, longpoll, replicas, reports, respond
from server.agent_api.auth import AgentError
from server.agent_api.files import file_report
from server.api import SignedNonce, load_actions, run_action
from server.collector import FullCollections
from server.inputs import ascii_int
from server.notify import Notifier
from server.state import AgentIdentity, ServerState, Settings
from server.store import Store, access, tasks
from server.store.conn import Conn
from server.store.db import asyncpg_dsn

log = logging.getLogger(__name__)

MAX_OPERATOR_BODY = 256 * 1024  # bytes: 18 KB of content plus every other parameter
MAX_AGENT_BODY = 2 * 1024 * 1024  # bytes
SUPERVISOR_CHECK = 1.0  # seconds between a worker's looks at its parent


# --- operator API ---------------------------------------------------------------------------


def api_response(root: str, body: dict[str, Any], fmt: str, status: int = 200) -> Response:
    """The body as JSON, or with Format=XML as the real API's XML under <root>."""
    if fmt == "XML":
        return Response(rpc.to_xml(root, body), status, media_type="application/xml")
    return JSONResponse(body, status_code=status)


def api_error_response(exc: rpc.ApiError, request_id: str, fmt: str = "JSON") -> Response:
    body = {
        "RequestId": request_id,
        "HostId": "ecs.aliyuncs.com",
        "Code": exc.code,
        "Message": exc.message,
        "Recommend": "",
    }
    return api_response("Error", body, fmt, exc.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; ValueError beyond `limit` bytes, or when the client went away (or was
    closed by its body deadline, common/connguard.py) before sending it all."""
    declared = request.headers.get("content-length")
    size = ascii_int(declared or "", 18)
    if size is not None and size > limit:
        raise ValueError("body too large")
    chunks: list[bytes] = []
    size = 0
    receive = request.receive  # ASGI messages straight: Request.stream() costs more per request
    while True:
        message = await receive()
        if message["type"] != "http.request":  # nobody reads the answer: no error to log
            raise ValueError("the client went away before its body ended")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ValueError("body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def authenticate_operator(state: ServerState, caller: rpc.Caller) -> tuple[str, SignedNonce]:
    """Check the signature (v1 or v3); the caller's account, and its nonce to store
    (server/api run_action stores it before the action has any effect)."""
    key = await state.store.read(
        lambda conn: access.get_access_key(conn, caller.key_id), small=True
    )
    if key is None:
        raise rpc.ApiError("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
    if not key["enabled"]:
        raise rpc.ApiError("InvalidAccessKeyId.Inactive", "Specified access key is disabled.")
    caller.check(key["secret"])
    expires = int(caller.timestamp) + rpc.TIMESTAMP_WINDOW + 60
    return str(key["account"]), SignedNonce(f"o:{caller.key_id}:{caller.nonce}", expires)


async def operator_endpoint(request: Request) -> Response:
    """The ECS RPC endpoint: `/?Action=…&…` by GET or POST (query and/or form body)."""
    state: ServerState = request.app.state.server
    request_id = rpc.new_request_id()
    v3 = rpc.is_v3(request.headers.get("authorization", ""))
    fmt = "JSON"  # until the request's own Format can be read
    try:
        try:
            body = await read_body(request, MAX_OPERATOR_BODY)
        except ValueError as exc:
            raise rpc.ApiError("InvalidParameter", "The request is too large.", 413) from exc
        if len(request.url.query) > MAX_OPERATOR_BODY:
            raise rpc.ApiError("InvalidParameter", "The request is too large.", 413)
        query = request.url.query.encode("latin-1", "replace")
        headers = request.headers.items()
        if v3:
            params, caller = rpc.read_v3(
                request.method, request.url.path, query, headers, body, time.time()
            )
        else:
            params = rpc.parse_form(query, body)
            caller = None
        # without Format the real API answers XML (signature v1) or JSON (v3)
        fmt = params.get("Format", "").upper() or ("JSON" if v3 else "XML")
        if fmt not in ("XML", "JSON"):
            fmt = "JSON"
        action_name = params.get("Action", "")
        if not action_name:
            raise rpc.missing("Action")
        if caller is None:
            caller = rpc.read_v1(request.method, params, time.time())
        account, nonce = await authenticate_operator(state, caller)
        handler = request.app.state.actions.get(action_name)
        if handler is None:
            await nonce.store(state.store)
            raise rpc.ApiError(
                "InvalidAction.NotFound",
                "Specified api is not found, please check your url and method.",
                404,
            )
        result = await run_action(state, action_name, handler, account, rpc.Params(params), nonce)
    except rpc.ApiError as exc:
        return api_error_response(exc, request_id, fmt)
    except Exception as exc:
        failed = overload.failure(
            exc,
            f"operator request {request_id}",
            "The request processing has failed due to some unknown error.",
        )
        err = rpc.ApiError(failed.code, failed.message, failed.status)
        response = api_error_response(err, request_id, fmt)
        response.headers.update(failed.headers)
        return response
    return api_response(f"{action_name}Response", {"RequestId": request_id, **result}, fmt)


# --- agent API ------------------------------------------------------------------------------

AgentHandler = Callable[[ServerState, AgentIdentity, bytes], Awaitable[dict[str, Any]]]
Endpoint = Callable[[Request], Awaitable[Response]]


def signed(handler: AgentHandler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an agent handler with body limits, signature checks and error mapping."""

    async def work(request: Request) -> dict[str, Any]:
        state: ServerState = request.app.state.server
        try:
            body = await read_body(request, MAX_AGENT_BODY)
        except ValueError as exc:
            raise AgentError("RequestTooLarge", "the body is too large", 413) from exc
        path, query = respond.target(request.scope)
        who = await state.authenticate(request.method, path, query, request.headers, body)
        return await handler(state, who, body)

    async def endpoint(request: Request) -> Response:
        return await respond.agent_answer(request.app.state.server, request, work(request))

    return endpoint


async def register_endpoint(request: Request) -> Response:
    state: ServerState = request.app.state.server
    try:
        try:
            body = await read_body(request, 64 * 1024)
        except ValueError as exc:
            raise AgentError("RequestTooLarge", "the body is too large", 413) from exc
        client = request.client.host if request.client else ""
        key = await state.signing.current()
        return JSONResponse(await handlers.register(state, body, client, key))
    except AgentError as exc:
        return respond.agent_error(exc)
    except Exception as exc:
        failed = overload.failure(exc, "registration", "server error")
        error = {"code": failed.code, "message": failed.message}
        return JSONResponse(error, failed.status, headers=failed.headers)


async def _report(kind: str, state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
    return await handlers.task_report(state, who, kind, body)


def report_endpoint(kind: str) -> Callable[[Request], Awaitable[Response]]:
    async def handler(state: ServerState, who: AgentIdentity, body: bytes) -> dict[str, Any]:
        return await _report(kind, state, who, body)

    return signed(handler)


async def health(request: Request) -> Response:
    state: ServerState = request.app.state.server
    return JSONResponse(
        {
            "ok": True,
            "replica": state.notifier.replica,
            "waiting": state.notifier.waiting(),
            "sessions": state.tickets.count(),
            "batched_writes": state.batch.stats(),
        }
    )


async def not_found(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/luban/"):
        return JSONResponse({"code": "NotFound", "message": "no such endpoint"}, 404)
    return JSONResponse(
        {
            "RequestId": rpc.new_request_id(),
            "Code": "InvalidAction.NotFound",
            "Message": "Specified api is not found, please check your url and method.",
        },
        404,
    )


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"code": "MethodNotAllowed", "message": "method not allowed"}, 405)


async def chores(state: ServerState) -> None:
    """Background upkeep every `chores_interval` seconds; one failing chore skips a round."""
    while True:
        await asyncio.sleep(state.settings.chores_interval)
        try:
            await run_chores(state)
        except Exception as exc:
            log.warning("upkeep failed: %s", exc)


async def run_chores(state: ServerState) -> None:
    """Purge old nonces and execution history, fail tasks abandoned by offline instances,
    drop stale events."""
    settings = state.settings
    now_ms = int(time.time() * 1000)
    grace_ms = settings.offline_grace * 1000
    history_cutoff = now_ms - settings.history_days * 86_400_000

    async def _tx(conn: Conn) -> list[tuple[str, str]]:
        await access.purge_nonces(conn, now_ms // 1000)
        forgotten = await tasks.purge_history(conn, history_cutoff, settings.history_keep)
        if forgotten:
            log.info("forgot %d finished executions past the history limits", forgotten)
        return await tasks.fail_abandoned_tasks(conn, now_ms, grace_ms)

    for invoke_id, instance_id in await state.store.write(_tx):
        log.warning("%s on %s: instance offline past its timeout, failed", invoke_id, instance_id)
    state.notifier.sweep()


async def watch_supervisor(settings: Settings) -> None:
    """A worker of `serve --workers N` stops once its supervisor is gone (killed with -9: a
    clean stop signals the workers itself), and removes the bus directory the supervisor would
    have removed, rather than keep serving on the port, orphaned."""
    while os.getppid() == settings.supervisor_pid:
        await asyncio.sleep(SUPERVISOR_CHECK)
    log.warning("the server's supervisor (pid %d) is gone: stopping", settings.supervisor_pid)
    if settings.bus_dir:
        shutil.rmtree(settings.bus_dir, ignore_errors=True)
    os.kill(os.getpid(), signal.SIGTERM)


class AgentFastPaths:
    """The ASGI application: the long-poll and the signed agent POSTs go straight to their
    endpoints (no router, no middleware: server/agent_api/longpoll.py, docs/scale.md
    Ingestion); everything else, and the lifespan, to Starlette. Agent endpoints answer their
    own errors; a failure to sign the answer reaches uvicorn, which answers 500 as Starlette's
    error middleware did."""

    def __init__(self, app: Starlette, posts: dict[str, Endpoint]) -> None:
        self.app = app
        self.state = app.state
        self.posts = posts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if path == longpoll.PATH and method == "GET":
                await longpoll.long_poll(self.app.state.server, scope, receive, send)
                return
            endpoint = self.posts.get(path) if method == "POST" else None
            if endpoint is not None:
                scope["app"] = self.app
                response = await endpoint(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings) -> AgentFastPaths:
    """Build the application; the database is opened (and migrated) at startup."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = Store(settings.db_url)
        await store.migrate()
        dsn = asyncpg_dsn(store.url) if store.dialect == "postgresql" else None
        notifier = Notifier(dsn, settings.bus_dir or None)
        await notifier.start()
        directory = replicas.ReplicaDirectory(
            store, settings.advertise_url, notifier.replica, settings.advertise_interval
        )
        state = ServerState(
            settings=settings,
            store=store,
            notifier=notifier,
            signing=respond.SigningKeys(store),
            replicas=directory,
        )
        app.state.server = state
        app.state.actions = load_actions()
        collections = FullCollections()
        collections.start()
        background = [
            asyncio.create_task(chores(state)),
            asyncio.create_task(directory.run()),
            asyncio.create_task(collections.run()),
        ]
        if settings.supervisor_pid:
            background.append(asyncio.create_task(watch_supervisor(settings)))
        log.info("assist-server ready (%s)", store.dialect)
        try:
            yield
        finally:
            collections.stop()
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state.crypto.close()
            await notifier.close()
            await state.batch.close()
            await store.close()

    posts: dict[str, Endpoint] = {
        "/luban/api/v1/session": signed(handlers.open_session),
        "/luban/api/v1/task/list": signed(handlers.task_list),
        "/luban/api/v1/task/running": signed(handlers.task_running),
        "/luban/api/heart-beat": signed(handlers.heartbeat),
        "/luban/api/v1/update/update_check": signed(handlers.update_check),
        "/luban/api/v1/server/keys": signed(handlers.server_keys),
        "/luban/api/v1/file/report": signed(file_report),
        "/luban/api/v1/task/reports": signed(reports.task_reports),
        "/luban/api/v1/server/replicas": signed(replicas.replica_list),
        **{
            f"/luban/api/v1/task/{kind}": report_endpoint(kind) for kind in lifecycle.TERMINAL_KINDS
        },
    }
    routes = [
        Route("/", operator_endpoint, methods=["GET", "POST"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/luban/api/instance/register", register_endpoint, methods=["POST"]),
        Route(longpoll.PATH, longpoll.Endpoint(), methods=["GET"]),
        # the router sees these only for another method (405); a POST skips it
        *(Route(path, endpoint, methods=["POST"]) for path, endpoint in posts.items()),
    ]
    starlette = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed},
    )
    return AgentFastPaths(starlette, posts)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
