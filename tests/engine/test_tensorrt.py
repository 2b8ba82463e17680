"""The onnxruntime-tensorrt backend: provider options, the engine cache key, and loud failure without TensorRT.

On this CI machine (no GPU, no TensorRT) the backend must fail with BACKEND_INIT_FAILED naming what is missing,
both before a session is made and when onnxruntime itself would fall back to the CPU. The tests that need a GPU
with TensorRT 10 skip cleanly elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from grpclib.const import Status

from edgebox.client import pb
from edgebox.engine.backends import BACKEND_LOADERS, LoadOptions, tensorrt_backend
from edgebox.engine.backends.tensorrt_backend import (
    EngineIdentity,
    engine_cache_dir,
    load_tensorrt,
    profile_shapes,
    provider_options,
    startup_problems,
    warmup_batches,
)
from edgebox.engine.hardware import AUTO_ORDER, GpuIdentity, Hardware, backend_candidates, detect_hardware
from edgebox.errors import BackendInitFailed, ErrorCode
from edgebox.plugin_api import ModelInput
from tests.support.engine import aio, connect, engine_config, expect_error, photo_jpeg, running_engine  # noqa: F401

FACE_INPUT = ModelInput("input.1", (3, 384, 640), "float32")
PERSON_INPUT = ModelInput("image_tensor:0", (300, 300, 3), "uint8")
GPU = GpuIdentity("NVIDIA L4", "8.9", "13.0")
TENSORRT_USABLE = "onnxruntime-tensorrt" in detect_hardware().usable_backends()
needs_tensorrt = pytest.mark.skipif(not TENSORRT_USABLE, reason="needs an NVIDIA GPU with TensorRT 10 installed")
without_tensorrt = pytest.mark.skipif(TENSORRT_USABLE, reason="TensorRT is usable on this machine")


def identity(**changes: object) -> EngineIdentity:
    base = EngineIdentity("ab" * 32, "1.31.1", "10.9.0", GPU, FACE_INPUT, 8, False)
    return dataclasses.replace(base, **changes)


# -- provider options and the cache key (pure) -------------------------------------------------------------------
def test_profile_covers_batch_1_to_max_batch_size_from_the_declared_input():
    assert profile_shapes(FACE_INPUT, 8) == {
        "trt_profile_min_shapes": "input.1:1x3x384x640",
        "trt_profile_opt_shapes": "input.1:8x3x384x640",
        "trt_profile_max_shapes": "input.1:8x3x384x640",
    }


def test_input_name_with_a_colon_gets_no_explicit_profile_and_warms_largest_batch_first():
    # onnxruntime splits "image_tensor:0:1x300x300x3" at the first ':'; a wrong profile would be worse than none.
    assert profile_shapes(PERSON_INPUT, 4) is None
    assert warmup_batches(4, explicit_profile=False) == [4, 1, 2, 3]
    assert warmup_batches(4, explicit_profile=True) == [1, 2, 3, 4]


def test_provider_options_enable_engine_and_timing_caches_in_the_engine_folder(tmp_path):
    options = provider_options(FACE_INPUT, tmp_path / "e", LoadOptions(max_batch_size=4, tensorrt_fp16=True))
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "e")
    assert options["trt_timing_cache_enable"] == "True" and options["trt_timing_cache_path"] == str(tmp_path / "e")
    assert options["trt_fp16_enable"] == "True"
    assert options["trt_profile_max_shapes"] == "input.1:4x3x384x640"
    person = provider_options(PERSON_INPUT, tmp_path / "p", LoadOptions())
    assert person["trt_fp16_enable"] == "False" and not any(k.startswith("trt_profile") for k in person)
    assert all(isinstance(v, str) for v in person.values())  # onnxruntime takes provider options as strings


@pytest.mark.parametrize("change", [
    {"model_sha256": "cd" * 32},
    {"onnxruntime_version": "1.32.0"},
    {"tensorrt_version": "10.10.0"},
    {"gpu": dataclasses.replace(GPU, driver_version="13.1")},
    {"gpu": dataclasses.replace(GPU, name="NVIDIA A2")},
    {"gpu": dataclasses.replace(GPU, compute_capability="8.6")},
    {"input": dataclasses.replace(FACE_INPUT, shape=(3, 480, 640))},
    {"max_batch_size": 16},
    {"fp16": True},
])
def test_any_change_that_invalidates_an_engine_gives_a_new_cache_folder(tmp_path, change):
    model = tmp_path / "centerface.onnx"
    before = engine_cache_dir(tmp_path / "engines", model, identity())
    after = engine_cache_dir(tmp_path / "engines", model, identity(**change))
    assert before != after
    assert before.parent == after.parent == tmp_path / "engines" / "tensorrt"
    assert before.name.startswith("centerface-") and after.name.startswith("centerface-")


def test_the_same_identity_finds_the_same_cache_folder(tmp_path):
    assert engine_cache_dir(tmp_path, Path("m.onnx"), identity()) == engine_cache_dir(tmp_path, Path("m.onnx"),
                                                                                       identity())


# -- selection ---------------------------------------------------------------------------------------------------
def test_tensorrt_is_usable_only_with_a_gpu_the_provider_and_the_library_and_auto_never_picks_it():
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    everything = Hardware(1, ("CPU",), providers, tensorrt_installed=True)
    assert "onnxruntime-tensorrt" in everything.usable_backends()
    assert "onnxruntime-tensorrt" not in backend_candidates("auto", everything)
    assert "onnxruntime-tensorrt" not in AUTO_ORDER
    assert backend_candidates("onnxruntime-tensorrt", everything) == ["onnxruntime-tensorrt"]
    assert "onnxruntime-tensorrt" not in Hardware(0, ("CPU",), providers, tensorrt_installed=True).usable_backends()
    assert "onnxruntime-tensorrt" not in Hardware(1, ("CPU",), providers, tensorrt_installed=False).usable_backends()
    assert "onnxruntime-tensorrt" not in Hardware(1, ("CPU",), providers[1:], tensorrt_installed=True).usable_backends()


def test_built_in_plugins_declare_the_input_their_model_and_preprocess_really_have(registry):
    import onnxruntime as ort

    for name in ("person", "face"):
        plugin = registry.get(name)
        declared = plugin.model.input
        [model_input] = ort.InferenceSession(str(plugin.model.path), providers=["CPUExecutionProvider"]).get_inputs()
        assert model_input.name == declared.name
        assert model_input.type == {"uint8": "tensor(uint8)", "float32": "tensor(float)"}[declared.dtype]
        tensor, _ = plugin.preprocess(np.zeros((360, 640, 3), np.uint8), {})
        assert tensor.shape == declared.shape and tensor.dtype == np.dtype(declared.dtype)


# -- on this machine: never a silent CPU fallback ----------------------------------------------------------------
@without_tensorrt
def test_loading_without_gpu_or_tensorrt_fails_2002_naming_what_is_missing(registry, tmp_path):
    problems = startup_problems()
    assert problems
    with pytest.raises(BackendInitFailed) as info:
        load_tensorrt(registry.get("face").model, LoadOptions(cache_dir=tmp_path))
    assert info.value.code == ErrorCode.BACKEND_INIT_FAILED == 2002
    message = info.value.message
    assert message.startswith("onnxruntime-tensorrt: cannot start: ")
    assert "; ".join(problems) in message
    # Each missing piece is named by its library (the driver, TensorRT, or what the provider library links).
    assert any(lib in message for lib in ("libcuda.so.1", "libnvinfer.so.10", ".so")), message
    assert not (tmp_path / "tensorrt").exists()  # nothing was built or cached


@without_tensorrt
def test_when_onnxruntime_falls_back_to_cpu_by_itself_the_load_fails_2002(registry, tmp_path, monkeypatch):
    # Skip the checks made before the session, as if driver and libraries looked fine: the real onnxruntime then
    # cannot start the TensorRT provider here and quietly runs the session on CPU. That must be caught.
    monkeypatch.setattr(tensorrt_backend, "startup_problems", list)
    monkeypatch.setattr(tensorrt_backend, "cuda_gpu_identity", lambda: GPU)
    monkeypatch.setattr(tensorrt_backend, "tensorrt_version", lambda: "10.9.0")
    with pytest.raises(BackendInitFailed) as info:
        load_tensorrt(registry.get("face").model, LoadOptions(cache_dir=tmp_path, max_batch_size=2))
    message = info.value.message
    assert "did not start TensorRT and would silently run on CPUExecutionProvider" in message, message
    assert ".so" in message, message  # the library the provider could not load


def test_a_model_without_a_declared_input_or_without_a_cache_folder_is_refused(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorrt_backend, "startup_problems", list)  # as on a GPU host with TensorRT
    model = registry.get("face").model
    with pytest.raises(BackendInitFailed, match="no declared input"):
        load_tensorrt(dataclasses.replace(model, input=None), LoadOptions(cache_dir=tmp_path))
    with pytest.raises(BackendInitFailed, match="no engine cache folder"):
        load_tensorrt(model, LoadOptions(cache_dir=None))


@without_tensorrt
async def test_requesting_tensorrt_over_grpc_gives_2002_with_the_reason_and_the_engine_keeps_serving(
        aio, tmp_path):  # noqa: F811 - the fixture
    config = engine_config(tmp_path / "data")
    async with running_engine(config) as engine:
        with connect(aio, engine.host, engine.port) as client:
            await client.deploy_workflow(pb.WorkflowSpec(workflow_id="cpu", plugins=["person"]))
            exc = await expect_error(client.deploy_workflow(
                pb.WorkflowSpec(workflow_id="trt", plugins=["face"], backend="onnxruntime-tensorrt")))
            assert exc.status == Status.UNAVAILABLE and exc.code == ErrorCode.BACKEND_INIT_FAILED == 2002, exc
            assert "onnxruntime-tensorrt: cannot start: " in exc.message
            assert "libcuda.so.1" in exc.message or "libnvinfer.so.10" in exc.message, exc.message
            result = await client.infer(photo_jpeg("astronaut"), workflow_id="cpu")
            assert [d["label"] for d in json.loads(result.json_data)["detections"]] == ["person"]
            health = await client.health()
            assert health.status == pb.HealthStatus.SERVING
            [model] = health.models
            backend = engine.node.pool.loaded()[0].backend
            assert model.startswith(f"person: {backend} on ") and backend != "onnxruntime-tensorrt"
            assert "trt" not in {w.spec.workflow_id for w in await client.list_workflows()}


# -- on a GPU with TensorRT 10 only ------------------------------------------------------------------------------
@needs_tensorrt
async def test_tensorrt_engine_is_built_cached_reused_and_agrees_with_cpu(registry, tmp_path):
    face = registry.get("face").model
    options = LoadOptions(cache_dir=tmp_path, max_batch_size=2)
    started = time.monotonic()
    model = await trio.to_thread.run_sync(load_tensorrt, face, options)
    first_s = time.monotonic() - started
    assert model.backend == "onnxruntime-tensorrt" and "TensorRT" in model.device
    assert list((tmp_path / "tensorrt").glob("centerface-*/*.engine")), "no engine was cached"
    started = time.monotonic()
    again = await trio.to_thread.run_sync(load_tensorrt, face, options)
    print(f"TensorRT build + warm-up {first_s:.1f} s, from the cache {time.monotonic() - started:.1f} s")
    cpu = BACKEND_LOADERS["onnxruntime-cpu"](face, LoadOptions())
    batch = np.random.default_rng(3).uniform(0, 255, (2, *face.input.shape)).astype(np.float32)
    for got, want in zip(again.run(batch), cpu.run(batch), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-2)
