"""assist-mirror serve: the published tree over HTTP with Starlette StaticFiles and uvicorn.

StaticFiles gives Range requests, ETag / If-None-Match (304) and refuses paths outside the
root; on top we hide every dot path (.mirror state, staged trees reached only via their
symlink), set repository content types, and tell caches which files change in place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from common.errors import LocalStateError
from common.listen import ConnLimits
from mirror.storage import content_type

# Files replaced in place at every sync: caches must revalidate them.
MUTABLE = (
    "timestamp.json",
    "root.json",
    "InRelease",
    "Release",
    "Release.gpg",
    "repomd.xml",
    "repomd.xml.asc",
)


class MirrorFiles(StaticFiles):
    """StaticFiles without dot paths, with repository content types and cache hints."""

    def get_path(self, scope: Scope) -> str:
        route = scope.get("path", "")
        root_path = scope.get("root_path", "")
        if root_path and route.startswith(root_path):
            route = route[len(root_path) :]
        if any(part.startswith(".") for part in route.split("/") if part):
            raise HTTPException(status_code=404)
        return super().get_path(scope)

    def file_response(
        self, full_path: Any, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        name = os.path.basename(str(full_path))
        if "content-type" in response.headers:
            response.headers["content-type"] = content_type(name)
        response.headers["cache-control"] = (
            "no-cache" if name in MUTABLE else "public, max-age=86400"
        )
        return response


def make_app(root: Path) -> Starlette:
    """The ASGI app serving `root`."""
    if not root.is_dir():
        raise LocalStateError(
            f"{root} is not a directory", hint="pass the --root of a synced mirror"
        )
    return Starlette(routes=[Mount("/", app=MirrorFiles(directory=str(root)))])


def serve(root: Path, host: str, port: int, limits: ConnLimits | None = None) -> int:
    """Serve `root` until SIGINT/SIGTERM (0), with the slow-loris guard of common/connguard.py."""
    from common.connguard import serve_asgi
    from common.listen import announce, check_port_free

    app = make_app(root)
    check_port_free(host, port)
    limits = limits or ConnLimits(idle_timeout=15.0)
    return serve_asgi(app, host, port, limits, announce, log_level="warning", access_log=False)
