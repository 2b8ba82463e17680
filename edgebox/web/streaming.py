"""Endless HTTP responses (Server-Sent Events, MJPEG) that end the moment the client goes away.

Hypercorn reports a closed connection through `receive`; `LiveStream` watches it and cancels the producer, so
the producer's `finally` (unsubscribing, for instance) runs at once rather than at the next failed send.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.types import Receive, Scope, Send

SendChunk = Callable[[bytes], Awaitable[None]]


class LiveStream:
    """An endless response: runs `produce(send_chunk)` until it returns or the client disconnects (which cancels
    it, so its `finally` blocks run at once). Hypercorn reports the disconnect through `receive`."""

    def __init__(self, produce: Callable[[SendChunk], Awaitable[None]], media_type: str) -> None:
        self._produce = produce
        self._headers = [(b"content-type", media_type.encode()), (b"cache-control", b"no-store"),
                         (b"x-accel-buffering", b"no")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        disconnected = False

        async def watch_disconnect(cancel_scope: trio.CancelScope) -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            cancel_scope.cancel()

        async def send_chunk(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, nursery.cancel_scope)
            await self._produce(send_chunk)
            nursery.cancel_scope.cancel()
        if not disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def sse_event(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
