"""Serve the console with hypercorn's trio worker inside the engine's nursery, on its own port.

Owns the console's lifetime: the alarm log's hub subscription and the scrape-time collectors are registered while
it runs. It keeps serving while the engine drains gRPC (so /readyz can answer 503 STOPPING) and stops when the
root nursery is cancelled.
"""

from __future__ import annotations

import logging

import hypercorn.config
import hypercorn.trio
import trio

from edgebox.config import ConsoleConfig, is_loopback
from edgebox.gpu import GpuCollector
from edgebox.node import Node
from edgebox.web.alarm_log import AlarmLog
from edgebox.web.collectors import EngineCollector
from edgebox.web.routes import create_app

log = logging.getLogger("edgebox.web")

KEEP_ALIVE_S = 20.0  # dashboards poll every second or two; keep their connections
GRACEFUL_TIMEOUT_S = 3.0


def hypercorn_config(config: ConsoleConfig) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.accesslog = None  # frame polling would flood it; errors still go to the engine log
    hc.errorlog = logging.getLogger("edgebox.web.http")
    hc.include_server_header = False
    hc.keep_alive_timeout = KEEP_ALIVE_S
    hc.graceful_timeout = GRACEFUL_TIMEOUT_S
    return hc


class _StartedAs:
    """Turns hypercorn's started(["http://127.0.0.1:8080"]) into our started("127.0.0.1:8080")."""

    def __init__(self, task_status: trio.TaskStatus[str]) -> None:
        self._task_status = task_status

    def started(self, binds: list[str]) -> None:
        address = binds[0].split("://", 1)[-1]
        log.info("console at http://%s/", address)
        self._task_status.started(address)


async def serve_console(config: ConsoleConfig, node: Node, *,
                        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; task_status gets the bound address "host:port" (the real port when port is 0)."""
    if not is_loopback(config.host) and not config.token:
        raise ValueError(f"the console listens on {config.host!r}, beyond loopback, and needs console.token")
    alarm_log = AlarmLog(node.hub)
    app = create_app(node, config, alarm_log)
    collectors = [EngineCollector(node), GpuCollector(node.gpu)]
    await trio.to_thread.run_sync(node.gpu.readings)  # opening NVML may take a while: not on the event loop
    for collector in collectors:
        node.metrics.registry.register(collector)
    alarm_log.attach()
    try:
        # No shutdown_trigger: the root nursery's cancellation ends it after the gRPC drain.
        await hypercorn.trio.serve(app, hypercorn_config(config), task_status=_StartedAs(task_status))
    finally:
        alarm_log.detach()
        for collector in collectors:
            node.metrics.registry.unregister(collector)
