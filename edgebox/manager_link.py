"""The link to a management system (proto/manager.proto): register this node, then report heartbeats and metrics.

edgebox is the client here. The link owns a bridge of its own for grpclib's asyncio client, so it shares no loop
with the gRPC server; every call has a timeout, every failure is logged (rate-limited) and retried with capped
exponential back-off, and nothing but cancellation leaves `run_manager_link`. It only reads the node's state.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from edgebox.bridge import Bridge, open_bridge
from edgebox.config import ManagerConfig
from edgebox.node import Lifecycle, Node
from edgebox.proto_gen import manager as pb

log = logging.getLogger("edgebox.manager_link")

T = TypeVar("T")

API_VERSION = 1  # the revision of proto/manager.proto this node speaks (RegisterNodeRequest.api_version)
CALL_TIMEOUT_S = 5.0  # every call to the manager; a slow manager delays a heartbeat, never the engine
BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 30.0
BACKOFF_JITTER = 0.2  # each wait is spread over +-20% so that a fleet does not reconnect in lockstep
# Consecutive failed heartbeats that end a session: the link then reconnects with back-off instead of calling a
# manager that is down at the heartbeat rate.
HEARTBEAT_FAILURES_TO_RECONNECT = 3
LOG_REPEAT_S = 60.0  # the same kind of failure is logged at most this often
CLOCK_SKEW_WARN_MS = 60_000

_NODE_STATUS = {Lifecycle.SERVING: pb.NodeStatus.SERVING, Lifecycle.STARTING: pb.NodeStatus.NOT_SERVING,
                Lifecycle.STOPPING: pb.NodeStatus.STOPPING}


class ReRegister(Exception):
    """The manager does not know this node or session any more (it restarted), or asked for a new registration."""


async def run_manager_link(config: ManagerConfig, node: Node, grpc_address: str) -> None:
    """Report this node to config.address until cancelled; never raises anything else."""
    try:
        link = ManagerLink(config, node, grpc_address)
    except ValueError as exc:  # a malformed address: nothing to retry, and no reason to stop the engine
        log.error("manager link disabled: %s", exc)
        return
    log.info("manager link: reporting node %r to %s (heartbeat every %g s, metrics every %g s%s)", link.node_id,
             config.address, config.heartbeat_interval_s, config.metrics_interval_s,
             ", TLS" if link.uses_tls else "")
    await link.run()


@dataclass
class Backoff:
    """Capped exponential back-off with jitter."""

    start_s: float = BACKOFF_START_S
    cap_s: float = BACKOFF_CAP_S
    jitter: float = BACKOFF_JITTER
    _next_s: float = 0.0

    def next(self) -> float:
        base = self._next_s or self.start_s
        self._next_s = min(base * 2, self.cap_s)
        return base * (1 + self.jitter * (2 * random.random() - 1))

    def reset(self) -> None:
        self._next_s = 0.0


@dataclass
class RateLimitedLog:
    """Logs a failure at once, then the same kind at most every `every_s` with a count of those left out."""

    every_s: float = LOG_REPEAT_S
    clock: Callable[[], float] = time.monotonic
    _last: dict[str, float] = field(default_factory=dict)
    _skipped: dict[str, int] = field(default_factory=dict)

    def warning(self, kind: str, message: str, *args: Any, exc_info: bool = False) -> bool:
        """Log unless `kind` was logged within every_s; returns whether it logged."""
        now = self.clock()
        if now - self._last.get(kind, -math.inf) < self.every_s:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return False
        skipped = self._skipped.pop(kind, 0)
        suffix = f" ({skipped} more like it since the last report)" if skipped else ""
        log.warning(message + suffix, *args, exc_info=exc_info)
        self._last[kind] = now
        return True

    def failing(self) -> bool:
        return bool(self._last)

    def clear(self) -> None:
        self._last.clear()
        self._skipped.clear()


@dataclass
class Session:
    session_id: str
    registered_at: float  # trio time
    heartbeat_seq: int = 0


class ManagerLink:
    """One node's link: the registration loop, and while registered the heartbeat and metrics loops."""

    def __init__(self, config: ManagerConfig, node: Node, grpc_address: str) -> None:
        self.config = config
        self.node = node
        self.grpc_address = grpc_address
        self.node_id = config.node_id or socket.gethostname()
        self.host, self.port = split_address(config.address)
        self.uses_tls = any((config.tls_ca_file, config.tls_cert_file, config.tls_key_file))
        self.backoff = Backoff()
        self.problems = RateLimitedLog()
        self.registrations = 0
        self._skew_warned = False

    # -- the loops ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                async with open_bridge() as bridge:
                    await self._connect_loop(bridge)
            except Exception as exc:  # noqa: BLE001 - a bug or a broken bridge must never reach the engine
                self.problems.warning("crash", "manager link: unexpected error, restarting it: %r", exc,
                                      exc_info=True)
                await trio.sleep(self.backoff.next())

    async def _connect_loop(self, bridge: Bridge) -> None:
        last_registration = -math.inf
        while True:
            channel: Channel | None = None
            try:
                channel = await bridge.call_in_asyncio(self._open_channel)
                stub = pb.ManagerServiceStub(channel)
                # A manager that keeps asking for registrations gets at most one per heartbeat interval.
                await trio.sleep_until(last_registration + self.config.heartbeat_interval_s)
                last_registration = trio.current_time()
                session = await self._register(bridge, stub)
                self.backoff.reset()
                await self._run_session(bridge, stub, session)
            except ReRegister as exc:
                log.info("manager link: registering again: %s", exc)
            except Exception as exc:  # noqa: BLE001 - grpclib, h2, ssl and sockets fail in many ways; all retried
                delay = self.backoff.next()
                self.problems.warning("connect", "manager link: manager %s unreachable or failing (%s); "
                                      "retrying in %.1f s", self.config.address, describe(exc), delay)
                await trio.sleep(delay)
            finally:
                if channel is not None:
                    _close_channel(bridge, channel)

    async def _run_session(self, bridge: Bridge, stub: pb.ManagerServiceStub, session: Session) -> None:
        """Heartbeats and metrics until one of them ends the session (ReRegister, or the manager is gone)."""
        ended: list[Exception] = []

        async def guarded(loop: Callable[[], Awaitable[None]], cancel: trio.CancelScope) -> None:
            try:
                await loop()
            except Exception as exc:  # noqa: BLE001 - handed to _connect_loop, which decides
                ended.append(exc)
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, functools.partial(self._heartbeats, bridge, stub, session),
                               nursery.cancel_scope)
            nursery.start_soon(guarded, functools.partial(self._metrics, bridge, stub, session),
                               nursery.cancel_scope)
        if ended:
            raise ended[0]

    async def _heartbeats(self, bridge: Bridge, stub: pb.ManagerServiceStub, session: Session) -> None:
        interval = self.config.heartbeat_interval_s
        failures = 0
        next_at = trio.current_time()
        while True:
            try:
                reply = await self._call(bridge, stub.heartbeat, self._heartbeat(session))
            except Exception as exc:  # any failure counts against the session; it re-raises past the limit
                if isinstance(exc, GRPCError) and exc.status == Status.NOT_FOUND:
                    raise ReRegister(f"the manager does not know this node ({exc.message})") from None
                failures += 1
                if failures >= HEARTBEAT_FAILURES_TO_RECONNECT:
                    raise
                self.problems.warning("heartbeat", "manager link: heartbeat failed: %s", describe(exc))
            else:
                failures = 0
                if self.problems.failing():
                    log.info("manager link: heartbeats reach %s again", self.config.address)
                    self.problems.clear()
                self._check_clock(reply.server_time_ms)
                if reply.re_register:
                    raise ReRegister("the manager asked for it")
            # Keep the rhythm, but never burst to catch up after a slow call.
            next_at = max(next_at + interval, trio.current_time())
            await trio.sleep_until(next_at)

    async def _metrics(self, bridge: Bridge, stub: pb.ManagerServiceStub, session: Session) -> None:
        interval = self.config.metrics_interval_s
        next_at = trio.current_time()
        while True:
            try:
                reply = await self._call(bridge, stub.report_metrics, self._metrics_sample(session))
            except GRPCError as exc:
                if exc.status == Status.NOT_FOUND:
                    raise ReRegister(f"the manager does not know this node ({exc.message})") from None
                self.problems.warning("metrics", "manager link: metrics report failed: %s", describe(exc))
            except Exception as exc:  # noqa: BLE001 - heartbeats decide when the manager is gone; metrics only log
                self.problems.warning("metrics", "manager link: metrics report failed: %s", describe(exc))
            else:
                if reply.re_register:
                    raise ReRegister("the manager asked for it")
            next_at = max(next_at + interval, trio.current_time())
            await trio.sleep_until(next_at)

    # -- calls ----------------------------------------------------------------------------------------------
    async def _open_channel(self) -> Channel:
        # Built on the bridge's loop (grpclib binds a channel to the running loop); certificate files are read
        # on every connection so that a renewed certificate is picked up without a restart.
        return Channel(self.host, self.port, ssl=self._ssl_context() if self.uses_tls else None)

    def _ssl_context(self) -> ssl.SSLContext:
        cfg = self.config
        context = ssl.create_default_context(cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.tls_cert_file is not None:
            context.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file) if cfg.tls_key_file else None)
        context.set_alpn_protocols(["h2"])
        return context

    async def _call(self, bridge: Bridge, method: Callable[..., Awaitable[T]], request: Any) -> T:
        # grpclib's own timeout ends the call on the asyncio side; the trio limit is a backstop in case the
        # loop itself is stuck (cancelling it cancels the asyncio task too).
        with trio.fail_after(CALL_TIMEOUT_S + 1.0):
            return await bridge.call_in_asyncio(functools.partial(method, request, timeout=CALL_TIMEOUT_S))

    async def _register(self, bridge: Bridge, stub: pb.ManagerServiceStub) -> Session:
        health = self.node.health()
        request = pb.RegisterNodeRequest(
            api_version=API_VERSION, node_id=self.node_id, grpc_address=self.grpc_address, version=health.version,
            hostname=socket.gethostname(), plugins=list(health.plugins), backends=list(health.backends),
            gpu_available=health.gpu_available,
            started_at_ms=int((time.time() - health.uptime_s) * 1000))
        reply = await self._call(bridge, stub.register_node, request)
        self.registrations += 1
        if reply.api_version and reply.api_version < API_VERSION:
            log.warning("manager link: the manager speaks manager.proto revision %d, this node %d; fields it "
                        "does not know are ignored", reply.api_version, API_VERSION)
        log.info("manager link: node %r registered with %s (session %s, registration %d)", self.node_id,
                 self.config.address, reply.session_id, self.registrations)
        self.problems.clear()
        self._check_clock(reply.server_time_ms)
        return Session(reply.session_id, trio.current_time())

    # -- messages ---------------------------------------------------------------------------------------------
    def _heartbeat(self, session: Session) -> pb.HeartbeatRequest:
        health = self.node.health()
        cameras = self.node.list_cameras()
        session.heartbeat_seq += 1
        return pb.HeartbeatRequest(
            node_id=self.node_id, session_id=session.session_id, seq=session.heartbeat_seq,
            timestamp_ms=health.timestamp_ms, status=_NODE_STATUS.get(health.status, pb.NodeStatus.UNSPECIFIED),
            version=health.version, uptime_s=health.uptime_s, camera_count=len(cameras),
            cameras=[camera_summary(c) for c in cameras], workflow_count=len(self.node.list_workflows()),
            plugin_count=len(health.plugins), gpu_available=health.gpu_available,
            plugin_errors=list(health.plugin_errors))

    def _metrics_sample(self, session: Session) -> pb.ReportMetricsRequest:
        m = self.node.metrics_snapshot()
        return pb.ReportMetricsRequest(
            node_id=self.node_id, session_id=session.session_id, timestamp_ms=int(time.time() * 1000),
            metrics=pb.NodeMetrics(
                active_cameras=m.active_cameras, registered_cameras=m.registered_cameras, workflows=m.workflows,
                total_infer_requests=m.total_infer_requests, failed_infer_requests=m.failed_infer_requests,
                avg_infer_latency_ms=m.avg_infer_latency_ms, avg_queue_ms=m.avg_queue_ms,
                avg_compute_ms=m.avg_compute_ms, avg_batch_size=m.avg_batch_size, queue_depth=m.queue_depth,
                frames_dropped=m.frames_dropped, memory_usage_bytes=m.memory_usage_bytes,
                gpu_utilization=m.gpu_utilization, gpu_memory_used_bytes=m.gpu_memory_used_bytes))

    def _check_clock(self, server_time_ms: int) -> None:
        skew = int(time.time() * 1000) - server_time_ms
        if server_time_ms and abs(skew) > CLOCK_SKEW_WARN_MS and not self._skew_warned:
            self._skew_warned = True
            log.warning("manager link: this node's clock is %.0f s %s the manager's; timestamps in reports "
                        "will disagree", abs(skew) / 1000, "ahead of" if skew > 0 else "behind")


def camera_summary(camera: Any) -> pb.CameraSummary:
    """A fleet's Camera as the manager's CameraSummary."""
    status = camera.status
    return pb.CameraSummary(
        camera_id=camera.camera_id, workflow_id=camera.workflow_id,
        state=getattr(pb.CameraState, camera.state.name, pb.CameraState.UNSPECIFIED),
        last_error=camera.last_error or "", fps_in=float(status.fps_in), reconnects=int(status.reconnects))


def split_address(address: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port); the config names no scheme."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"manager.address must be host:port, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def describe(exc: BaseException) -> str:
    """A one-line reason for the log: gRPC status and message, or the exception's type and text."""
    if isinstance(exc, GRPCError):
        return f"{exc.status.name}: {exc.message or ''}".rstrip(": ")
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {CALL_TIMEOUT_S:g} s"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _close_channel(bridge: Bridge, channel: Channel) -> None:
    try:
        bridge.loop.call_soon_threadsafe(channel.close)
    except RuntimeError:  # the loop already stopped; its connections went with it
        pass
