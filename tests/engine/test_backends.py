"""Backend detection and selection, with the backend loaders as the only boundary that tests replace."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import trio

from edgebox.engine.backends import BACKEND_LOADERS, LoadedModel, LoadOptions
from edgebox.engine.hardware import AUTO_ORDER, Hardware, backend_candidates, cuda_device_count, has_openvino_device
from edgebox.engine.scheduler import ModelQueue, QueueSettings
from edgebox.errors import BackendInitFailed, ErrorCode
from edgebox.metrics import Metrics, total
from tests.engine.faults import echo_model

NO_CUDA = cuda_device_count() == 0


def _first_usable(hardware: Hardware) -> str:
    return next(name for name in AUTO_ORDER if name in hardware.usable_backends())


# -- detection ---------------------------------------------------------------------------------------------------
def test_listed_cuda_provider_without_a_cuda_device_is_not_usable():
    hw = Hardware(0, ("CPU",), ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    assert hw.usable_backends() == ["openvino-cpu", "onnxruntime-cpu"]
    assert not hw.gpu_available


def test_cuda_device_without_onnxruntime_cuda_provider_is_no_usable_gpu():
    hw = Hardware(1, ("CPU",), ("CPUExecutionProvider",))
    assert "onnxruntime-cuda" not in hw.usable_backends()
    assert not hw.gpu_available


def test_numbered_openvino_gpus_count_as_gpu():
    assert has_openvino_device(("CPU", "GPU.0", "GPU.1"), "GPU")
    assert not has_openvino_device(("CPU", "NPU"), "GPU")
    hw = Hardware(0, ("CPU", "GPU.0", "GPU.1"), ("CPUExecutionProvider",))
    assert hw.usable_backends() == ["openvino-gpu", "openvino-cpu", "onnxruntime-cpu"]
    assert hw.gpu_available


def test_explicit_request_is_the_only_candidate_and_auto_follows_auto_order(hardware):
    assert backend_candidates("onnxruntime-cpu", hardware) == ["onnxruntime-cpu"]
    auto = backend_candidates("auto", hardware)
    assert auto == [name for name in AUTO_ORDER if name in hardware.usable_backends()]
    assert backend_candidates("", hardware) == auto


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
def test_auto_on_this_machine_picks_openvino_cpu(hardware):
    assert backend_candidates("auto", hardware)[0] == "openvino-cpu"


# -- selection through the model pool ----------------------------------------------------------------------------
async def test_auto_loads_the_first_usable_backend_and_logs_it(open_pool, registry, hardware, caplog):
    caplog.set_level(logging.INFO, "edgebox.engine")
    async with open_pool(backend="auto") as (pool, metrics):
        queue = await pool.queue_for(registry.get("person"))
        assert queue.model.backend == _first_usable(hardware)
        [info] = pool.loaded()
        assert (info.model, info.backend, info.device) == ("person", queue.model.backend, queue.model.device)
        assert total(metrics.backend_in_use, model="person", backend=queue.model.backend) == 1
    assert f"model person loaded on {queue.model.label}" in caplog.text


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
async def test_explicit_onnxruntime_cuda_without_driver_fails_with_backend_init_failed_2002(open_pool, registry):
    async with open_pool() as (pool, _):
        with pytest.raises(BackendInitFailed) as info:
            await pool.queue_for(registry.get("person"), "onnxruntime-cuda")
        assert pool.loaded() == []
    assert info.value.code == ErrorCode.BACKEND_INIT_FAILED == 2002
    assert "onnxruntime-cuda" in info.value.message
    assert "no usable NVIDIA GPU" in info.value.message or "no CUDA provider" in info.value.message
    assert "driver" in info.value.message or "onnxruntime-gpu" in info.value.message


async def test_unknown_backend_name_fails_with_2002(open_pool, registry):
    async with open_pool() as (pool, _):
        with pytest.raises(BackendInitFailed, match="tensorflow-cpu: unknown backend"):
            await pool.queue_for(registry.get("person"), "tensorflow-cpu")


@pytest.mark.parametrize("failure", [BackendInitFailed("injected: device lost"), RuntimeError("injected: segfault")])
async def test_failed_first_candidate_under_auto_falls_back_to_the_next_logged_and_counted(
        open_pool, registry, hardware, monkeypatch, caplog, failure):
    candidates = backend_candidates("auto", hardware)
    if len(candidates) < 2:
        pytest.skip("needs two usable backends")
    first, second = candidates[:2]

    def broken(spec, options):
        raise failure

    monkeypatch.setitem(BACKEND_LOADERS, first, broken)
    caplog.set_level(logging.INFO, "edgebox.engine")
    async with open_pool(backend="auto") as (pool, metrics):
        queue = await pool.queue_for(registry.get("person"))
        assert queue.model.backend == second
        assert total(metrics.backend_fallbacks, model="person", wanted=first, used=second) == 1
        assert [(f.wanted, f.used) for f in pool.fallbacks] == [(first, second)]
    fallback_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FALLBACK")]
    expected = f"FALLBACK: person runs on {queue.model.label} instead of {first} because: {pool.fallbacks[0].reason}"
    assert fallback_lines == [expected]
    assert "injected" in pool.fallbacks[0].reason


async def test_failed_explicit_backend_does_not_fall_back(open_pool, registry, monkeypatch):
    def broken(spec, options):
        raise BackendInitFailed("openvino-cpu: injected")

    monkeypatch.setitem(BACKEND_LOADERS, "openvino-cpu", broken)
    async with open_pool() as (pool, metrics):
        with pytest.raises(BackendInitFailed, match="injected"):
            await pool.queue_for(registry.get("person"), "openvino-cpu")
        assert total(metrics.backend_fallbacks) == 0


async def test_auto_and_the_backend_it_picks_share_one_queue(open_pool, registry, hardware):
    async with open_pool(backend="auto") as (pool, _):
        person = registry.get("person")
        by_auto = await pool.queue_for(person)
        by_name = await pool.queue_for(person, by_auto.model.backend)
        assert by_name is by_auto
        assert len(pool.loaded()) == 1


# -- real backends through the scheduler's worker thread -------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "openvino-cpu"])
async def test_batched_outputs_equal_one_by_one_outputs_on_a_real_model(backend, registry, hardware):
    if backend not in hardware.usable_backends():
        pytest.skip(f"{backend} is not usable here")
    person = registry.get("person")
    model = await trio.to_thread.run_sync(BACKEND_LOADERS[backend], person.model, LoadOptions())
    rng = np.random.default_rng(1)
    tensors = [rng.integers(0, 255, (300, 300, 3), dtype=np.uint8) for _ in range(3)]
    queue = ModelQueue("person", model, QueueSettings(4, 0.05, 16, 30.0), Metrics())
    results: list = [None] * 3

    async def one(i: int) -> None:
        results[i] = await queue.infer(tensors[i], droppable=False)

    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        async with trio.open_nursery() as sources:
            for i in range(3):
                sources.start_soon(one, i)
        nursery.cancel_scope.cancel()
    for i in range(3):
        alone = model.run(tensors[i][np.newaxis])
        for got, want in zip(results[i], alone):
            np.testing.assert_allclose(got, want[0], atol=1e-4)


@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "openvino-cpu"])
async def test_cpu_backend_with_two_executions_runs_two_batches_at_once_with_the_same_outputs(
        backend, registry, hardware):
    if backend not in hardware.usable_backends():
        pytest.skip(f"{backend} is not usable here")
    person = registry.get("person")
    model = await trio.to_thread.run_sync(BACKEND_LOADERS[backend], person.model, LoadOptions(cpu_executions=2))
    assert model.parallel == 2
    rng = np.random.default_rng(2)
    tensors = [rng.integers(0, 255, (300, 300, 3), dtype=np.uint8) for _ in range(4)]
    alone = [model.run(t[np.newaxis]) for t in tensors]
    # Every execution waits at the barrier for a second one: if the scheduler ran one at a time, it would break.
    side_by_side = threading.Barrier(2, timeout=20)
    run = model.run

    def run_in_pairs(batch):
        side_by_side.wait()
        return run(batch)

    model.run = run_in_pairs
    queue = ModelQueue("person", model, QueueSettings(1, 0.0, 16, 60.0), Metrics())
    results: list = [None] * 4

    async def one(i: int) -> None:
        results[i] = await queue.infer(tensors[i], droppable=False)

    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        async with trio.open_nursery() as sources:
            for i in range(4):
                sources.start_soon(one, i)
        nursery.cancel_scope.cancel()
    for i in range(4):
        for got, want in zip(results[i], alone[i]):
            np.testing.assert_allclose(got, want[0], atol=1e-4)


async def test_model_that_takes_only_batch_1_gets_the_batch_item_by_item():
    seen: list[int] = []

    def batch_one_only(batch: np.ndarray) -> list[np.ndarray]:
        seen.append(len(batch))
        assert len(batch) == 1
        return echo_model(batch)

    model = LoadedModel("fake-cpu", "CPU", run=batch_one_only, supports_batch=False)
    queue = ModelQueue("fake", model, QueueSettings(4, 0.05, 16, 30.0), Metrics())
    results: list = [None] * 3

    async def one(i: int) -> None:
        results[i] = await queue.infer(np.full((2,), i, np.float32), droppable=False)

    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        async with trio.open_nursery() as sources:
            for i in range(3):
                sources.start_soon(one, i)
        nursery.cancel_scope.cancel()
    assert seen == [1, 1, 1]
    assert [float(r[0]) for r in results] == [0.0, 2.0, 4.0]


async def test_model_that_loses_the_batch_axis_fails_with_internal_error_not_a_crash():
    model = LoadedModel("fake-cpu", "CPU", run=lambda batch: [np.zeros(1)])
    queue = ModelQueue("fake", model, QueueSettings(4, 0.0, 16, 30.0, retry_delays_s=()), Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        async with trio.open_nursery() as sources:
            errors = []

            async def one() -> None:
                try:
                    await queue.infer(np.zeros(2), droppable=False)
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)

            for _ in range(2):
                sources.start_soon(one)
        nursery.cancel_scope.cancel()
    assert len(errors) == 2 and all(e.code == ErrorCode.INTERNAL_ERROR for e in errors)
    assert "batch axis" in errors[0].message


# -- CUDA: only where the driver reports a device --------------------------------------------------------------
@pytest.mark.skipif(NO_CUDA, reason="no CUDA device on this machine (the driver reports none)")
async def test_onnxruntime_cuda_runs_on_the_gpu_and_agrees_with_cpu(registry):
    person = registry.get("person")
    gpu = await trio.to_thread.run_sync(BACKEND_LOADERS["onnxruntime-cuda"], person.model, LoadOptions())
    cpu = await trio.to_thread.run_sync(BACKEND_LOADERS["onnxruntime-cpu"], person.model, LoadOptions())
    assert gpu.backend == "onnxruntime-cuda" and gpu.device.startswith("CUDA")
    batch = np.random.default_rng(2).integers(0, 255, (2, 300, 300, 3), dtype=np.uint8)
    for got, want in zip(gpu.run(batch), cpu.run(batch)):
        np.testing.assert_allclose(got, want, atol=1e-2)


# -- what the node reports ---------------------------------------------------------------------------------------
async def test_health_lists_usable_backends_and_each_loaded_model_with_its_device(open_pool, registry, hardware):
    from edgebox.node import Node

    async with open_pool(backend="auto") as (pool, metrics):
        # Health reads only the plugins, the hardware and the pool: the other parts are not needed here.
        node = Node(registry, pool, None, None, None, metrics, hardware)  # type: ignore[arg-type]
        assert node.health().models == []
        queue = await pool.queue_for(registry.get("face"))  # a model loaded later is published to health
        health = node.health()
        [loaded] = node.loaded_models()
    assert health.backends == hardware.usable_backends()
    assert health.gpu_available == hardware.gpu_available
    assert (loaded.model, loaded.backend, loaded.device) == ("face", queue.model.backend, queue.model.device)
    assert health.models == [f"face: {queue.model.backend} on {queue.model.device}"]


@pytest.mark.parametrize("precision", ["auto", "f32"])
async def test_openvino_runs_at_the_configured_precision_and_its_device_names_it(open_pool, registry, hardware,
                                                                                   precision):
    if "openvino-cpu" not in hardware.usable_backends():
        pytest.skip("openvino-cpu is not usable here")
    from edgebox.engine.backends.openvino_backend import openvino_core

    # "auto" is what OpenVINO's CPU plugin itself would pick on this CPU (bf16 with AMX or AVX-512 BF16).
    expected = (openvino_core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
                if precision == "auto" else "f32")
    async with open_pool(backend="openvino-cpu", openvino_precision=precision) as (pool, _):
        queue = await pool.queue_for(registry.get("person"))
        [loaded] = pool.loaded()
    assert queue.model.precision == expected
    assert loaded.device.startswith("CPU (") and loaded.device.endswith(f", {expected})"), loaded.device


# -- OpenVINO's first executions ---------------------------------------------------------------------------------
# In a fresh process (OpenVINO builds its type table once per process): load the person model with two
# executions, then start both at the same moment, as the scheduler does with the first two batches. Each thread
# first asks for the input's numpy dtype as every infer() does, which is where the two met (without the table
# built with the Core, 2 of 16 processes in this form hung, 8 of 20 in a barer script; with it, none of 16).
FIRST_EXECUTIONS = """
import sys, threading
from pathlib import Path
import numpy as np
import openvino as ov
from edgebox.engine.backends.openvino_backend import load_openvino
from edgebox.plugin_api import ModelSpec
model = load_openvino(ModelSpec(Path(sys.argv[1])), 2, "CPU", executions=2)
batch = np.zeros((1, 320, 320, 3), np.uint8)  # the model takes NHWC uint8
start = threading.Barrier(2)
def execute():
    start.wait()
    ov.Type.u8.to_dtype()
    model.run(batch)
threads = [threading.Thread(target=execute) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print("both answered")
"""


def test_the_first_two_openvino_executions_at_once_do_not_deadlock():
    model = Path(__file__).resolve().parents[2] / "plugins" / "person" / "ssdlite_person.onnx"
    hung = 0
    for _ in range(12):
        try:
            done = subprocess.run([sys.executable, "-c", FIRST_EXECUTIONS, str(model)], capture_output=True,
                                  text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            hung += 1
            continue
        assert done.returncode == 0 and "both answered" in done.stdout, done.stderr[-2000:]
    assert hung == 0, f"{hung} of 12 processes deadlocked in their first two executions"
