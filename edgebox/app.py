"""The root nursery: every long-lived task of the engine is started here or by something started here.

    run_engine
    └── root nursery
        ├── model queues (one batching loop per model/backend, started on first use by ModelPool)
        ├── camera fleet ── one supervised task per camera ── decode task + pipeline task
        ├── bridge nursery (calls arriving from the grpclib asyncio thread)
        ├── web console (hypercorn's trio worker)
        ├── manager link (when configured)
        ├── compute-thread priority (lowers the libraries' native threads; edgebox.thread_priority)
        └── signal watcher -> drain -> cancel
"""

from __future__ import annotations

import gc
import importlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from edgebox import __version__, thread_priority
from edgebox.admission import Admission
from edgebox.api.convert import encode_result
from edgebox.api.server import open_grpc_server
from edgebox.cameras.decoder_process import CameraDecoder
from edgebox.config import Config
from edgebox.engine.hardware import LibraryProbe, detect_hardware
from edgebox.engine.library_probe import ProbeChild, probe_libraries_isolated
from edgebox.engine.models import ModelPool
from edgebox.errors import EdgeboxError
from edgebox.fleet import CameraFleet
from edgebox.gc_pauses import PAUSES, freeze_long_lived
from edgebox.metrics import Metrics
from edgebox.node import Lifecycle, Node
from edgebox.plugins_loader import builtin_plugin_dir, load_plugins
from edgebox.results import ResultHub
from edgebox.store import Store
from edgebox.workflows.registry import WorkflowRegistry

log = logging.getLogger("edgebox.app")

PROVISIONED_KEY = "provisioned"


@dataclass(frozen=True)
class Endpoints:
    grpc: str
    console: str | None
    # The running node, for code that embeds the engine in-process (the tests inspect it).
    node: Node | None = field(default=None, repr=False, compare=False)


async def run_engine(config: Config, on_ready: Callable[[Endpoints], None] | None = None, *,
                     probe_child: ProbeChild | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain gRPC calls within grpc.drain_timeout_s and return.

    `probe_child`: the library probe, when the caller started it early (edgebox.cli does); else started here.
    """
    store = await trio.to_thread.run_sync(Store.open, config.data_dir)
    try:
        await _run(config, store, on_ready, probe_child)
    finally:
        store.close()
        gc.unfreeze()  # what this engine froze is collectable again (an engine run inside a longer process)


async def _run(config: Config, store: Store, on_ready: Callable[[Endpoints], None] | None,
               probe_child: ProbeChild | None) -> None:
    PAUSES.install()  # process-wide, like the collector it times; edgebox_gc_pause_seconds reads it
    metrics = Metrics()
    metrics.build_info.info({"version": __version__})
    plugin_dirs = [builtin_plugin_dir()] + ([config.plugin_dir] if config.plugin_dir else [])
    libraries: list[LibraryProbe] = []

    async def probe() -> None:
        libraries.append(await probe_libraries_isolated(probe_child))

    async with trio.open_nursery() as startup:  # the probe's child process runs while the plugins load
        startup.start_soon(probe)
        if config.console.enabled:  # its imports (~0.2 s) fill the wait for the probe's answer
            startup.start_soon(trio.to_thread.run_sync, importlib.import_module, "edgebox.web.server")
        plugins = await trio.to_thread.run_sync(load_plugins, plugin_dirs)
    hardware = detect_hardware(libraries[0])
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as root:
            pool = ModelPool(config.engine, hardware, metrics, root, cache_dir=config.data_dir / "engines")
            hub = ResultHub(encode_result, metrics)
            fleet_ref: list[CameraFleet] = []
            workflows = WorkflowRegistry(store, plugins, pool, lambda wf: fleet_ref[0].using(wf))
            admission = Admission(config.engine.admission_max_load, lambda: pool.queues)
            decoder = (CameraDecoder(config.log_level, metrics=metrics, nice=config.engine.compute_thread_nice)
                       if config.engine.camera_decoding == "process" else None)
            fleet = CameraFleet(store, workflows, hub, metrics, config.engine.max_cameras, admission,
                                decoder=decoder)
            fleet_ref.append(fleet)
            node = Node(plugins, pool, workflows, fleet, hub, metrics, hardware)
            pool.on_loaded.append(lambda: freeze_long_lived("model loaded"))  # its library's objects live on
            root.start_soon(node.camera_listing.keep_fresh)
            if config.engine.compute_thread_nice and thread_priority.supported():
                lowering = thread_priority.ComputeThreadPriority(config.engine.compute_thread_nice)
                root.start_soon(lowering.keep_lowered)
            await workflows.restore()
            # Provisioning seeds an empty store once; later removals by an operator are not undone.
            provision = await trio.to_thread.run_sync(store.get_meta, PROVISIONED_KEY) is None
            if provision:
                await _provision_workflows(config, node)
            await root.start(fleet.run)
            if provision:
                await _provision_cameras(config, node)
                await trio.to_thread.run_sync(store.set_meta, PROVISIONED_KEY, "1")
            metrics.cameras_registered.set(len(fleet))
            metrics.workflows_deployed.set(len(workflows))
            async with open_grpc_server(config.grpc, node) as grpc:
                console_address = None
                if config.console.enabled:
                    from edgebox.web.server import serve_console

                    console_address = await root.start(serve_console, config.console, node)
                if config.manager.address:
                    from edgebox.manager_link import run_manager_link

                    root.start_soon(run_manager_link, config.manager, node, f"{grpc.host}:{grpc.port}")
                node.set_lifecycle(Lifecycle.SERVING)
                grpc.set_serving(True)
                endpoints = Endpoints(f"{grpc.host}:{grpc.port}", console_address, node)
                log.info("edgebox %s serving: gRPC %s, console %s", __version__, endpoints.grpc,
                         endpoints.console or "disabled")
                freeze_long_lived("ready")
                if on_ready is not None:
                    on_ready(endpoints)
                received = await _next_signal(signals)
                log.info("received %s: draining (deadline %.0f s)", received, config.grpc.drain_timeout_s)
                node.set_lifecycle(Lifecycle.STOPPING)
                hub.close_all("the engine is shutting down")
                async with trio.open_nursery() as drain_nursery:
                    drain_nursery.start_soon(_cancel_on_second_signal, signals, drain_nursery.cancel_scope)
                    await grpc.drain(config.grpc.drain_timeout_s)
                    drain_nursery.cancel_scope.cancel()
            root.cancel_scope.cancel()
    log.info("edgebox stopped")


async def _next_signal(signals: trio.abc.ReceiveChannel[int]) -> str:
    async for signum in signals:
        return signal.Signals(signum).name
    return "end of signals"


async def _cancel_on_second_signal(signals: trio.abc.ReceiveChannel[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        log.warning("second %s: stopping now without waiting for calls in flight", signal.Signals(signum).name)
        scope.cancel()
        return


async def _provision_workflows(config: Config, node: Node) -> None:
    """Deploy the config's provisioned workflows that the store does not have yet (first start only)."""
    for item in config.provision.workflows:
        workflow_id = item.spec["workflow_id"]
        if workflow_id in node.workflows:
            continue
        try:
            await node.deploy_workflow(item.spec)
            log.info("provisioned workflow %s", workflow_id)
        except EdgeboxError as exc:
            log.error("cannot provision workflow %s: %s", workflow_id, exc.client_message())


async def _provision_cameras(config: Config, node: Node) -> None:
    """Add the config's provisioned cameras that the store does not have yet (first start only)."""
    known = {c.camera_id for c in node.list_cameras()}
    for cam in config.provision.cameras:
        if cam.camera_id in known:
            continue
        try:
            await node.add_camera(cam.camera_id, cam.url, cam.workflow_id, cam.options)
            log.info("provisioned camera %s", cam.camera_id)
        except EdgeboxError as exc:
            log.error("cannot provision camera %s: %s", cam.camera_id, exc.client_message())
