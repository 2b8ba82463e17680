"""The token gate when the console listens beyond loopback: 401 without the token, 200 with it in any form."""

from __future__ import annotations

import httpx

from edgebox.config import ConsoleConfig
from tests.web.engine import open_engine

TOKEN = "correct-horse-battery-staple"
OPEN = ConsoleConfig(enabled=True, host="0.0.0.0", port=0, token=TOKEN)


async def test_console_on_all_interfaces_requires_the_token(tmp_path):
    async with open_engine(tmp_path / "data", console=OPEN) as engine, engine.client() as http:
        assert engine.endpoints.console.startswith("0.0.0.0:")
        for path in ("/api/cameras", "/metrics", "/api/events", "/api/cameras/demo-lobby/frame.jpg"):
            denied = await http.get(path)
            assert denied.status_code == 401, path
            assert denied.headers["www-authenticate"].startswith("Bearer")
        assert (await http.delete("/api/cameras/demo-lobby")).status_code == 401
        assert len(engine.node.list_cameras()) == 2
        wrong = await http.get("/api/cameras", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        bearer = await http.get("/api/cameras", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200 and len(bearer.json()["cameras"]) == 2
        basic = await http.get("/metrics", auth=httpx.BasicAuth("prometheus", TOKEN))
        assert basic.status_code == 200 and "edgebox_camera_state" in basic.text


async def test_probes_stay_open_and_pages_redirect_to_login(tmp_path):
    async with open_engine(tmp_path / "data", console=OPEN) as engine, engine.client() as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        page = await http.get("/workflows", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fworkflows"
        login = await http.get("/login?next=/workflows")
        assert login.status_code == 200 and 'value="/workflows"' in login.text


async def test_login_sets_a_session_cookie_that_opens_pages_and_api(tmp_path):
    async with open_engine(tmp_path / "data", console=OPEN) as engine, engine.client() as http:
        refused = await http.post("/login", data={"token": "guess", "next": "/"})
        assert refused.status_code == 401 and "not right" in refused.text
        assert "edgebox_session" not in http.cookies
        accepted = await http.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert accepted.status_code == 303 and accepted.headers["location"] == "/"  # no open redirect
        cookie = accepted.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert (await http.get("/api/cameras")).status_code == 200
        assert (await http.get("/", headers={"Accept": "text/html"})).status_code == 200
        await http.post("/logout")
        assert (await http.get("/api/cameras")).status_code == 401


async def test_loopback_console_without_token_is_open(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        assert engine.endpoints.console.startswith("127.0.0.1:")
        assert (await http.get("/api/cameras")).status_code == 200
        assert (await http.get("/api/console")).json()["auth"] is False
