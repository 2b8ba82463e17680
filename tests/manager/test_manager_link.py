"""The manager link against a manager served by grpclib in this process (the manager is the true boundary).

The engine runs in-process with a real config naming the manager; the Go suite (clients/go/refmanager) runs the
same scenarios against a real engine process and the Go reference manager.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpclib
import pytest
import trio
from grpclib.const import Status
from grpclib.server import Server

from edgebox.manager_link import Backoff, RateLimitedLog, split_address
from edgebox.proto_gen import manager as pb
from tests.support.engine import AsyncioThread, engine_config, running_engine

WAIT_S = 30.0  # a limit against hangs on busy CI cores, never a timing assertion


@dataclass
class RecordingManager(pb.ManagerServiceBase):
    """Records what nodes send, like clients/go/refmanager, and can forget them (as a restarted manager does)."""

    registrations: list[pb.RegisterNodeRequest] = field(default_factory=list)
    heartbeats: list[tuple[float, pb.HeartbeatRequest]] = field(default_factory=list)
    metrics: list[tuple[float, pb.ReportMetricsRequest]] = field(default_factory=list)
    sessions: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def register_node(self, message: pb.RegisterNodeRequest) -> pb.RegisterNodeResponse:
        with self.lock:
            self.registrations.append(message)
            session = f"s{len(self.registrations)}"
            self.sessions[message.node_id] = session
        return pb.RegisterNodeResponse(api_version=1, session_id=session, server_time_ms=int(time.time() * 1000))

    async def heartbeat(self, message: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        with self.lock:
            if message.node_id not in self.sessions:
                raise grpclib.GRPCError(Status.NOT_FOUND, "unknown node")
            self.heartbeats.append((time.monotonic(), message))
        return pb.HeartbeatResponse(server_time_ms=int(time.time() * 1000))

    async def report_metrics(self, message: pb.ReportMetricsRequest) -> pb.ReportMetricsResponse:
        with self.lock:
            if message.node_id not in self.sessions:
                raise grpclib.GRPCError(Status.NOT_FOUND, "unknown node")
            self.metrics.append((time.monotonic(), message))
        return pb.ReportMetricsResponse()

    def forget(self) -> None:
        with self.lock:
            self.sessions.clear()


class ManagerServer:
    """A RecordingManager served on 127.0.0.1 from an asyncio thread."""

    def __init__(self, port: int = 0) -> None:
        self.manager = RecordingManager()
        self.loop = AsyncioThread()

        async def start() -> Server:  # built on its loop: grpclib binds a server to the loop it is created on
            server = Server([self.manager])
            await server.start("127.0.0.1", port)
            return server

        self.server = self.loop.run_blocking(start)
        self.port = self.server._server.sockets[0].getsockname()[1]  # grpclib has no public getter

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.loop.run_blocking(stop)
        self.loop.close()


@pytest.fixture
def manager_server():
    server = ManagerServer()
    yield server
    server.close()


def link_config(tmp_path: Path, address: str):
    return engine_config(tmp_path / "data", {"manager": {
        "address": address, "node_id": "node-py", "heartbeat_interval_s": 0.2, "metrics_interval_s": 0.4}})


async def wait_until(condition, what: str) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():
            await trio.sleep(0.05)


async def test_link_registers_then_sends_heartbeats_and_metrics(tmp_path: Path, manager_server: ManagerServer):
    mgr = manager_server.manager
    async with running_engine(link_config(tmp_path, manager_server.address)) as engine:
        await wait_until(lambda: len(mgr.heartbeats) >= 5 and len(mgr.metrics) >= 2, "heartbeats and metrics")
        reg = mgr.registrations[0]
        assert (reg.api_version, reg.node_id, reg.grpc_address) == (1, "node-py", engine.endpoints.grpc)
        assert "person" in reg.plugins and reg.version and reg.started_at_ms > 0
        beats = [hb for _, hb in mgr.heartbeats]
        assert [hb.seq for hb in beats] == list(range(1, len(beats) + 1))
        assert {hb.session_id for hb in beats} == {"s1"}
        assert beats[-1].status == pb.NodeStatus.SERVING and beats[-1].plugin_count >= 3
        sample = mgr.metrics[-1][1]
        assert sample.session_id == "s1" and sample.metrics.memory_usage_bytes > 0
    assert len(mgr.registrations) == 1


async def test_link_registers_again_when_the_manager_forgets_the_node(tmp_path: Path, manager_server: ManagerServer):
    mgr = manager_server.manager
    async with running_engine(link_config(tmp_path, manager_server.address)):
        await wait_until(lambda: len(mgr.heartbeats) >= 2, "first heartbeats")
        mgr.forget()  # the next heartbeat gets NOT_FOUND
        await wait_until(lambda: len(mgr.registrations) == 2, "a second registration")
        await wait_until(lambda: mgr.heartbeats[-1][1].session_id == "s2", "heartbeats of the new session")
        assert mgr.heartbeats[-1][1].seq >= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_engine_serves_while_the_manager_is_down_and_registers_once_it_is_up(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, "edgebox.manager_link")
    port = free_port()
    async with running_engine(link_config(tmp_path, f"127.0.0.1:{port}")) as engine:
        await trio.sleep(1.5)  # several failed registrations with back-off
        assert engine.node.health().status == "SERVING"
        failures = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert 1 <= len(failures) <= 2, "failures are logged, rate-limited"
        server = ManagerServer(port)
        try:
            await wait_until(lambda: server.manager.registrations and server.manager.heartbeats, "registration")
        finally:
            server.close()


async def test_a_malformed_manager_address_disables_the_link_but_not_the_engine(tmp_path: Path, caplog):
    async with running_engine(link_config(tmp_path, "no-port-here")) as engine:
        await trio.sleep(0.2)
        assert engine.node.health().status == "SERVING"
    assert any("manager link disabled" in r.getMessage() for r in caplog.records)


def test_backoff_doubles_up_to_its_cap_with_jitter():
    b = Backoff(start_s=0.5, cap_s=4.0, jitter=0.2)
    waits = [b.next() for _ in range(6)]
    for wait, base in zip(waits, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert base * 0.8 <= wait <= base * 1.2
    b.reset()
    assert 0.4 <= b.next() <= 0.6


def test_rate_limited_log_reports_once_per_window_with_a_count(caplog):
    now = [100.0]
    limited = RateLimitedLog(every_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "edgebox.manager_link"):
        assert limited.warning("connect", "down")
        assert not limited.warning("connect", "down")
        assert not limited.warning("connect", "down")
        assert limited.warning("heartbeat", "other kind")
        now[0] += 61
        assert limited.warning("connect", "down")
    assert [r.getMessage() for r in caplog.records] == [
        "down", "other kind", "down (2 more like it since the last report)"]


def test_split_address():
    assert split_address("mgr.local:50061") == ("mgr.local", 50061)
    assert split_address("[::1]:7") == ("::1", 7)
    with pytest.raises(ValueError):
        split_address("mgr.local")
