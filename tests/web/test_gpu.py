"""GPU readings from NVML. NVML is the hardware boundary: a scripted stand-in module plays a driver with two
GPUs (one without utilization support); this machine's real absence of a GPU must give no series and -1."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgebox import gpu as gpu_module
from edgebox.gpu import GpuCollector, GpuMonitor, GpuSummary


class NVMLError(Exception):
    pass


@dataclass
class _Memory:
    used: int
    total: int


@dataclass
class _Util:
    gpu: int


def scripted_nvml(devices: list[dict], init_error: bool = False) -> types.ModuleType:
    """A module with pynvml's names, answering from `devices`; it counts init and query calls."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError
    nvml.calls = {"init": 0, "util": 0}

    def init() -> None:
        nvml.calls["init"] += 1
        if init_error:
            raise NVMLError("Driver Not Loaded")

    def utilization(handle: int) -> _Util:
        nvml.calls["util"] += 1
        if devices[handle].get("util") is None:
            raise NVMLError("Not Supported")
        return _Util(devices[handle]["util"])

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(devices)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: devices[h]["name"].encode()
    nvml.nvmlDeviceGetUtilizationRates = utilization
    nvml.nvmlDeviceGetMemoryInfo = lambda h: _Memory(devices[h]["used"], devices[h]["total"])
    return nvml


TWO_GPUS = [{"name": "NVIDIA H100", "util": 40, "used": 3 << 30, "total": 80 << 30},
            {"name": "NVIDIA T4", "util": None, "used": 1 << 30, "total": 16 << 30}]


def test_two_gpus_are_read_and_summarized(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", scripted_nvml(TWO_GPUS))
    monitor = GpuMonitor()
    readings = monitor.readings()
    assert [(r.index, r.name, r.utilization_percent) for r in readings] == [(0, "NVIDIA H100", 40.0),
                                                                            (1, "NVIDIA T4", -1)]
    # utilization averages the devices that report it; memory adds up
    assert monitor.summary() == GpuSummary(40.0, 4 << 30)


def test_collector_exposes_per_gpu_series(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", scripted_nvml(TWO_GPUS))
    registry = CollectorRegistry()
    registry.register(GpuCollector(GpuMonitor()))
    text = generate_latest(registry).decode()
    assert 'edgebox_gpu_utilization_percent{gpu="0"} 40.0' in text
    assert 'edgebox_gpu_utilization_percent{gpu="1"}' not in text  # not supported: left out, not faked
    samples = {(s.name, s.labels.get("gpu")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("edgebox_gpu_memory_used_bytes", "1")] == 1 << 30
    assert samples[("edgebox_gpu_memory_total_bytes", "0")] == 80 << 30
    assert 'edgebox_gpu_info{gpu="1",name="NVIDIA T4"} 1.0' in text


def test_readings_are_cached_for_a_second(monkeypatch):
    nvml = scripted_nvml(TWO_GPUS)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    now = [100.0]
    monitor = GpuMonitor(clock=lambda: now[0])
    monitor.readings()
    monitor.summary()
    assert nvml.calls["util"] == 2  # one per device, once
    now[0] += gpu_module.SAMPLE_MAX_AGE_S
    monitor.readings()
    assert nvml.calls["util"] == 4


def test_driver_not_loaded_gives_minus_one_and_is_not_retried(monkeypatch):
    nvml = scripted_nvml(TWO_GPUS, init_error=True)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    now = [0.0]
    monitor = GpuMonitor(clock=lambda: now[0])
    assert monitor.summary() == GpuSummary(-1.0, -1)
    now[0] += 10
    assert monitor.readings() == [] and nvml.calls["init"] == 1
    assert "Driver Not Loaded" in monitor.unavailable_reason


def test_missing_package_gives_no_series(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if nvidia-ml-py were not installed
    monitor = GpuMonitor()
    assert monitor.summary() == GpuSummary(-1.0, -1)
    registry = CollectorRegistry()
    registry.register(GpuCollector(monitor))
    assert "edgebox_gpu" not in generate_latest(registry).decode()
    assert monitor.unavailable_reason == "nvidia-ml-py is not installed"


def test_real_nvml_on_this_machine():
    """With the real nvidia-ml-py: readings on a GPU machine, a clean -1 elsewhere; never an exception."""
    monitor = GpuMonitor()
    summary = monitor.summary()
    readings = monitor.readings()
    if not readings:
        assert summary == GpuSummary(-1.0, -1) and monitor.unavailable_reason
        pytest.skip(f"no NVIDIA GPU here ({monitor.unavailable_reason})")
    assert all(r.memory_total_bytes > 0 for r in readings)
    assert 0 <= summary.utilization_percent <= 100 and summary.memory_used_bytes > 0
