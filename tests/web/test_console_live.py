"""Live views against the real engine: the alarm event stream (delivery, unsubscribe, shutdown) and frames."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator

import httpx
import trio

from tests.web.engine import ALARM_TIMEOUT_S, HTTP_TIMEOUT_S, open_engine


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict]]:
    """(event, data) pairs from a text/event-stream response; comments and retry lines are skipped."""
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""


async def wait_for(predicate, timeout_s: float = HTTP_TIMEOUT_S) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)


async def test_event_stream_delivers_an_alarm_with_a_snapshot(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        with trio.fail_after(ALARM_TIMEOUT_S):
            async with http.stream("GET", "/api/events?camera=demo-lobby") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for event, data in sse_events(response):
                    if event == "alarm":
                        break
        assert data["camera_id"] == "demo-lobby" and data["labels"].get("person", 0) >= 1
        thumbnail = await http.get(data["thumbnail_url"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        assert thumbnail.content[:2] == b"\xff\xd8"
        recent = (await http.get("/api/alarms")).json()["alarms"]
        assert data["seq"] in {a["seq"] for a in recent}


async def test_closing_the_event_stream_unsubscribes_from_the_hub(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        hub = engine.node.hub
        before = hub.subscriber_count
        async with http.stream("GET", "/api/events") as response:
            async for event, _ in sse_events(response):
                if event == "ready":
                    break
            assert hub.subscriber_count == before + 1
        await wait_for(lambda: hub.subscriber_count == before)


async def test_engine_shutdown_ends_the_event_stream(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        events = []
        with trio.fail_after(HTTP_TIMEOUT_S):
            async with http.stream("GET", "/api/events?camera=demo-corridor") as response:
                async for event, data in sse_events(response):
                    events.append(event)
                    if event == "ready":
                        os.kill(os.getpid(), signal.SIGTERM)  # the engine's own signal watcher drains it
        assert events[-1] == "closing" and "shutting down" in data["reason"]


async def test_latest_frame_is_a_jpeg_and_unknown_camera_is_1001(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        camera = next(c for c in engine.node.list_cameras() if c.camera_id == "demo-lobby")
        await wait_for(lambda: camera.pipeline.latest is not None, ALARM_TIMEOUT_S)
        frame = await http.get("/api/cameras/demo-lobby/frame.jpg?width=320")
        assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
        assert frame.content[:2] == b"\xff\xd8"
        missing = await http.get("/api/cameras/nope/frame.jpg")
        assert missing.status_code == 404 and missing.json()["code"] == 1001


async def test_mjpeg_stream_sends_jpeg_parts(tmp_path):
    async with open_engine(tmp_path / "data") as engine, engine.client() as http:
        camera = next(c for c in engine.node.list_cameras() if c.camera_id == "demo-lobby")
        await wait_for(lambda: camera.pipeline.latest is not None, ALARM_TIMEOUT_S)
        received = b""
        with trio.fail_after(HTTP_TIMEOUT_S):
            async with http.stream("GET", "/api/cameras/demo-lobby/stream.mjpg") as response:
                assert response.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
                async for chunk in response.aiter_bytes():
                    received += chunk
                    if received.count(b"--frame") >= 3:
                        break
        assert b"Content-Type: image/jpeg" in received and b"\xff\xd8" in received
