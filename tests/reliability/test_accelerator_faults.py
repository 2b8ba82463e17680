"""Accelerator faults through the whole engine: a device that runs out of memory, and a backend that cannot start.

The engine runs in this process (real gRPC on 127.0.0.1, real person model). The one fake is at the backend
boundary: every backend loader is wrapped so that its real model raises the CUDA out-of-memory error for batches
above a limit the test sets, as a GPU with too little free memory would. Everything between the gRPC call and
that boundary (scheduler, batching, retries, error mapping) is the real engine.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trio
from grpclib.const import Status

from edgebox.client import pb
from edgebox.engine import backends
from edgebox.engine.backends.base import LoadedModel
from edgebox.engine.hardware import cuda_device_count
from edgebox.errors import ErrorCode
from tests.support.engine import connect, engine_config, expect_error, photo_jpeg, running_engine

OOM_TEXT = "CUDA out of memory. Tried to allocate 1.50 GiB (GPU 0; 7.79 GiB total capacity)"
BATCH = 8


class ScarceDeviceMemory:
    """Wraps backend loaders: their models raise OOM for batches larger than `limit` (None: no limit)."""

    def __init__(self) -> None:
        self.limit: int | None = None
        self.sizes: list[int] = []  # every batch the engine handed to the device, in order
        self._lock = threading.Lock()

    def wrap(self, loader: Callable[..., LoadedModel]) -> Callable[..., LoadedModel]:
        def load(*args: Any, **kwargs: Any) -> LoadedModel:
            model = loader(*args, **kwargs)
            return dataclasses.replace(model, run=self._guarded(model.run))

        return load

    def _guarded(self, run: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], Any]:
        def guarded(batch: np.ndarray) -> Any:
            with self._lock:
                self.sizes.append(len(batch))
                limit = self.limit
            if limit is not None and len(batch) > limit:
                raise RuntimeError(OOM_TEXT)
            return run(batch)

        return guarded


@pytest.fixture
def scarce(monkeypatch: pytest.MonkeyPatch) -> ScarceDeviceMemory:
    memory = ScarceDeviceMemory()
    for name, loader in list(backends.BACKEND_LOADERS.items()):
        monkeypatch.setitem(backends.BACKEND_LOADERS, name, memory.wrap(loader))
    return memory


def person_workflow(workflow_id: str, backend: str = "") -> pb.WorkflowSpec:
    return pb.WorkflowSpec(workflow_id=workflow_id, plugins=["person"], backend=backend)


async def test_out_of_memory_halves_the_batch_answers_every_frame_and_grows_back(aio, tmp_path, scarce, figures):
    # A long batching delay so the 8 frames of one InferBatch reach the device as one batch.
    config = engine_config(tmp_path / "data", {"engine": {"max_batch_size": BATCH, "max_queue_delay_ms": 500}})
    async with running_engine(config) as engine:
        with connect(aio, engine.host, engine.port) as client:
            await client.infer(photo_jpeg("astronaut"), plugin="person")  # load the model at no limit
            (queue,) = engine.node.pool.queues
            assert queue.batch_limit == BATCH

            # 1. The device fits 2 frames: the batch of 8 is split, every frame still gets its detections.
            scarce.limit = 2
            scarce.sizes.clear()
            started = time.monotonic()
            items = await client.infer_batch([photo_jpeg("astronaut")] * BATCH, plugin="person")
            split_s = time.monotonic() - started
            assert [i.error_code for i in items] == [pb.InferErrorCode.OK] * BATCH, items
            assert all('"label":"person"' in i.result.json_data for i in items)
            # 8 does not fit, then 4 does not, then the 8 frames run in batches of 2.
            assert scarce.sizes == [BATCH, BATCH // 2, 2, 2, 2, 2], scarce.sizes
            assert queue.batch_limit == 2
            health = await client.health()
            assert health.status == pb.HealthStatus.SERVING

            # 2. Not even one frame fits: after the retries the caller gets 3002, with a reason to act on.
            scarce.limit = 0
            started = time.monotonic()
            exc = await expect_error(client.infer(photo_jpeg("astronaut"), plugin="person"))
            failed_s = time.monotonic() - started
            assert exc.status == Status.RESOURCE_EXHAUSTED and exc.code == ErrorCode.GPU_OUT_OF_MEMORY == 3002, exc
            assert "out of memory even at batch size 1" in exc.message and "free device memory" in exc.message
            assert (await client.health()).status == pb.HealthStatus.SERVING

            # 3. Memory comes back: frames are answered again, and the batch limit grows back to the configured one.
            scarce.limit = None
            executions_to_grow = 0
            with trio.fail_after(120):
                while queue.batch_limit < BATCH:
                    result = await client.infer(photo_jpeg("astronaut"), plugin="person")
                    assert '"label":"person"' in result.json_data
                    executions_to_grow += 1
            items = await client.infer_batch([photo_jpeg("astronaut")] * BATCH, plugin="person")
            assert [i.error_code for i in items] == [pb.InferErrorCode.OK] * BATCH
    figures.add("out of memory above batch 2 (simulated)", f"InferBatch of {BATCH} answered in full in "
                f"{split_s:.2f} s (device batches 8, 4, then 2 x 4), batch limit {BATCH} -> 2")
    figures.add("out of memory at batch 1 (simulated)", f"3002 GPU_OUT_OF_MEMORY after the retries, {failed_s:.2f} s; "
                f"memory back: batch limit {BATCH} again after {executions_to_grow} executions")


@pytest.mark.skipif(cuda_device_count() > 0, reason="this machine has a CUDA device: onnxruntime-cuda may start")
async def test_a_backend_that_cannot_start_fails_its_workflow_only_and_the_cameras_keep_streaming(aio, tmp_path,
                                                                                                  figures):
    config = engine_config(tmp_path / "data")
    async with running_engine(config) as engine:
        with connect(aio, engine.host, engine.port) as client:
            await client.deploy_workflow(person_workflow("cpu"))
            await client.add_camera("steady", "demo://person", "cpu", {"fps": "2"})
            seqs: list[int] = []

            async def collect() -> None:
                stream = client.subscribe(camera_ids=["steady"], omit_images=True)
                try:
                    async for result in stream:
                        seqs.append(result.frame_seq)
                finally:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                with trio.fail_after(60):
                    while len(seqs) < 2:
                        await trio.sleep(0.05)
                started = time.monotonic()
                exc = await expect_error(client.deploy_workflow(person_workflow("gpu", backend="onnxruntime-cuda")))
                refused_s = time.monotonic() - started
                with trio.fail_after(60):
                    before = len(seqs)
                    while len(seqs) < before + 4:
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            assert exc.status == Status.UNAVAILABLE and exc.code == ErrorCode.BACKEND_INIT_FAILED == 2002, exc
            assert "onnxruntime-cuda" in exc.message
            assert "gpu" not in {w.spec.workflow_id for w in await client.list_workflows()}
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"frames skipped: {seqs}"
            assert (await client.health()).status == pb.HealthStatus.SERVING
    figures.add("backend fails to initialize (onnxruntime-cuda, no GPU)", f"DeployWorkflow 2002 in {refused_s:.2f} s, "
                f"naming the backend; a camera on another workflow streamed on, frame_seq {seqs[0]}..{seqs[-1]} "
                "with no gap")
