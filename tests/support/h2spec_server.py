"""The engine's gRPC server class (edgebox.api.protocol.Http2Server), run for h2spec with a slow application.

    python tests/support/h2spec_server.py PORT      # prints READY, serves until killed

h2spec checks a stream's states by sending frames on it while it is still open. grpclib answers h2spec's plain
GET and POST requests at once (405, or 415 for a missing gRPC content type) and closes the stream, so those checks
would race the answer. Here every request is handed to grpclib 300 ms late, a fault injected at the application's
boundary; the HTTP/2 layer under test is the engine's own, unchanged.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

APPLICATION_DELAY_S = 0.3


async def serve(port: int) -> None:
    import grpclib.server
    from grpclib.health.service import Health

    from edgebox.api.protocol import Http2Server

    handle = grpclib.server.request_handler

    async def slow_application(*args: object) -> None:
        await asyncio.sleep(APPLICATION_DELAY_S)
        await handle(*args)  # type: ignore[arg-type]

    grpclib.server.request_handler = slow_application  # Handler.accept looks it up at every stream
    server = Http2Server([Health()])
    await server.start("127.0.0.1", port)
    print("READY", flush=True)
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
