"""Endpoints for machines: /metrics (Prometheus), /healthz (the process answers) and /readyz (serving).

/metrics exposes the node's one registry, the same objects GetMetrics reads, in the format the scraper asks for.
The probes stay open when the console needs a token, so orchestrators can use them without it.
"""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.node import Lifecycle, Node


def probe_routes(node: Node) -> list[Route]:
    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(node.metrics.registry), headers={"Content-Type": content_type})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "lifecycle": node.lifecycle})

    async def readyz(request: Request) -> Response:
        ready = node.lifecycle == Lifecycle.SERVING
        return JSONResponse({"status": node.lifecycle}, status_code=200 if ready else 503)

    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
