"""The console's access check: one shared token, as a bearer token, a basic-auth password or a login cookie.

With no token configured (only allowed on loopback) everything is open. With one, every path but the probes
and the login page's own assets needs it. Comparisons are constant-time over fixed-length digests. The cookie
holds an HMAC of the token, never the token, so changing the token signs everyone out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import logging
from pathlib import Path
from string import Template
from urllib.parse import parse_qs, quote

import trio
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("edgebox.web.auth")

SESSION_COOKIE = "edgebox_session"
SESSION_MAX_AGE_S = 7 * 24 * 3600
LOGIN_FAILURE_DELAY_S = 1.0  # slows guessing down; the token itself should be long and random
MAX_LOGIN_BODY_BYTES = 4096
# Reachable without the token: probes for orchestrators, and what the login page needs to render.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login", "/static/style.css", "/static/favicon.svg"})

_LOGIN_TEMPLATE = Template((Path(__file__).parent / "templates" / "login.html").read_text(encoding="utf-8"))


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"edgebox console session v1", hashlib.sha256).hexdigest()


class TokenCheck:
    def __init__(self, token: str) -> None:
        self.enabled = bool(token)
        self._token = _digest(token)
        self.session_cookie = session_value(token) if token else ""
        self._session = _digest(self.session_cookie)

    def token_matches(self, candidate: str) -> bool:
        return self.enabled and hmac.compare_digest(_digest(candidate), self._token)

    def authorized(self, headers: Headers) -> bool:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self.token_matches(credentials.strip())
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            return self.token_matches(decoded.partition(":")[2])  # any user name; the token is the password
        cookie = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE, "")
        return self.enabled and bool(cookie) and hmac.compare_digest(_digest(cookie), self._session)


class TokenGate:
    """ASGI middleware: passes authorized requests on; pages get a redirect to /login, everything else a 401."""

    def __init__(self, app: ASGIApp, check: TokenCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.check.enabled or scope["path"] in OPEN_PATHS
                or self.check.authorized(Headers(scope=scope))):
            await self.app(scope, receive, send)
            return
        await _challenge(scope)(scope, receive, send)


def _challenge(scope: Scope) -> Response:
    path = scope["path"]
    wants_page = (scope["method"] in ("GET", "HEAD") and not path.startswith(("/api/", "/static/"))
                  and path != "/metrics" and "text/html" in Headers(scope=scope).get("accept", ""))
    if wants_page:
        target = path + (f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    return JSONResponse(
        {"name": "UNAUTHENTICATED", "message": "this console needs its token: send 'Authorization: Bearer TOKEN' "
                                               "(or basic auth with the token as password), or sign in at /login"},
        status_code=401, headers={"WWW-Authenticate": 'Bearer realm="edgebox console"'})


def _safe_next(value: str) -> str:
    """Only local paths, so the login form cannot be used to bounce someone to another site."""
    return value if value.startswith("/") and not value.startswith(("//", "/\\")) else "/"


def login_page(next_path: str, error: str = "", status_code: int = 200) -> HTMLResponse:
    body = _LOGIN_TEMPLATE.substitute(next=html.escape(_safe_next(next_path), quote=True),
                                      error=f'<p class="form-error" role="alert">{html.escape(error)}</p>'
                                      if error else "")
    return HTMLResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})


def auth_routes(check: TokenCheck) -> list[Route]:
    async def show_login(request: Request) -> Response:
        if not check.enabled:
            return RedirectResponse("/", status_code=303)
        return login_page(request.query_params.get("next", "/"))

    async def submit_login(request: Request) -> Response:
        if not check.enabled:
            return RedirectResponse("/", status_code=303)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY_BYTES:
                return login_page("/", "That request was too large.", 413)
        form = parse_qs(body.decode("utf-8", errors="replace"))
        next_path = _safe_next(form.get("next", ["/"])[0])
        if not check.token_matches(form.get("token", [""])[0]):
            log.warning("console sign-in with a wrong token from %s", request.client.host if request.client else "?")
            await trio.sleep(LOGIN_FAILURE_DELAY_S)
            return login_page(next_path, "That token is not right. It is the console.token of the engine config.",
                              401)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(SESSION_COOKIE, check.session_cookie, max_age=SESSION_MAX_AGE_S, path="/",
                            httponly=True, samesite="strict")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login" if check.enabled else "/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return [
        Route("/login", show_login, methods=["GET"]),
        Route("/login", submit_login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
