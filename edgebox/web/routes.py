"""The console's Starlette application: pages, static assets, the JSON API, live views and probes in one table.

Pages are static HTML that fetch the API (no build step, no template engine, nothing fetched from elsewhere).
Middleware, outermost first: security headers on every answer, then the token gate.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgebox import __version__
from edgebox.config import ConsoleConfig
from edgebox.errors import EdgeboxError
from edgebox.node import Node
from edgebox.web.alarm_log import AlarmLog
from edgebox.web.api import ConsoleApi, edgebox_error_handler, internal_error_handler
from edgebox.web.auth import TokenCheck, TokenGate, auth_routes
from edgebox.web.live import LiveViews
from edgebox.web.probes import probe_routes

STATIC_DIR = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/alarms": "alarms.html", "/workflows": "workflows.html",
         "/cameras/{camera_id}": "camera.html"}

# Everything the pages use comes from this origin; frames are blob:/data: only when a script made them.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                           "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                                      (b"x-content-type-options", b"nosniff"),
                                      (b"referrer-policy", b"same-origin"),
                                      (b"x-frame-options", b"DENY")]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page(name: str):
    path = STATIC_DIR / name

    async def page(request: Request) -> Response:
        return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})

    return page


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"message": f"{exc.detail}: {request.method} {request.url.path}"},
                            status_code=exc.status_code, headers=exc.headers)
    return Response(f"{exc.status_code} {exc.detail}", status_code=exc.status_code, media_type="text/plain",
                    headers=exc.headers)


def create_app(node: Node, config: ConsoleConfig, alarm_log: AlarmLog) -> Starlette:
    check = TokenCheck(config.token)

    async def console_info(request: Request) -> Response:
        return JSONResponse({"version": __version__, "auth": check.enabled})

    routes = [
        *[Route(path, _page(name), methods=["GET"]) for path, name in PAGES.items()],
        *probe_routes(node),
        *auth_routes(check),
        Route("/api/console", console_info, methods=["GET"]),
        *ConsoleApi(node).routes(),
        *LiveViews(node, alarm_log).routes(),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(TokenGate, check=check)],
        exception_handlers={EdgeboxError: edgebox_error_handler, HTTPException: _http_error,
                            Exception: internal_error_handler},
    )
