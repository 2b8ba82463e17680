"""NVIDIA GPU utilization and memory from NVML (the `nvidia-ml-py` package, imported lazily), and its collector.

Without the package, the driver or a GPU the readings are empty, the Prometheus series are absent and the
GetMetrics values are -1; nothing here raises. It does not choose backends (that is `engine.hardware`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("edgebox.gpu")

# NVML is asked at most once per this many seconds; /metrics scrapes and GetMetrics calls share the reading.
SAMPLE_MAX_AGE_S = 1.0


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    utilization_percent: float  # 0..100 over NVML's last sample period; -1 if the device does not report it
    memory_used_bytes: int  # -1 if the device does not report it
    memory_total_bytes: int


@dataclass(frozen=True)
class GpuSummary:
    """What GetMetrics reports: mean utilization and summed memory over all devices; -1 without a GPU."""

    utilization_percent: float = -1.0
    memory_used_bytes: int = -1


class GpuMonitor:
    """Reads every NVIDIA device NVML sees (NVML ignores CUDA_VISIBLE_DEVICES). Thread-safe; calls block briefly."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._nvml: ModuleType | None = None
        self._unavailable: str | None = None  # why NVML cannot be used; set once, never retried
        self._cached: list[GpuReading] = []
        self._cached_at: float | None = None

    @property
    def unavailable_reason(self) -> str | None:
        return self._unavailable

    def readings(self) -> list[GpuReading]:
        """One reading per device, at most SAMPLE_MAX_AGE_S old; [] when there is no usable NVIDIA GPU."""
        with self._lock:
            now = self._clock()
            if self._cached_at is not None and now - self._cached_at < SAMPLE_MAX_AGE_S:
                return self._cached
            nvml = self._open()
            self._cached = _read_all(nvml) if nvml is not None else []
            self._cached_at = now
            return self._cached

    def summary(self) -> GpuSummary:
        readings = self.readings()
        if not readings:
            return GpuSummary()
        utils = [r.utilization_percent for r in readings if r.utilization_percent >= 0]
        used = [r.memory_used_bytes for r in readings if r.memory_used_bytes >= 0]
        return GpuSummary(sum(utils) / len(utils) if utils else -1.0, sum(used) if used else -1)

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError as exc:  # a broken driver must not fail the caller's shutdown
                    log.debug("nvmlShutdown failed: %s", exc)
                self._nvml = None
                self._unavailable = "closed"

    def _open(self) -> ModuleType | None:
        if self._nvml is not None or self._unavailable is not None:
            return self._nvml
        try:
            import pynvml  # from nvidia-ml-py
        except ImportError:
            self._unavailable = "nvidia-ml-py is not installed"
        else:
            try:
                pynvml.nvmlInit()
                count = pynvml.nvmlDeviceGetCount()
            except pynvml.NVMLError as exc:
                self._unavailable = f"NVML: {exc}"
            else:
                if count:
                    self._nvml = pynvml
                    log.info("NVML: %d NVIDIA GPU(s) monitored", count)
                    return pynvml
                self._unavailable = "NVML reports no GPU"
                pynvml.nvmlShutdown()
        log.info("GPU metrics unavailable (%s); they are left out of /metrics and GetMetrics reports -1",
                 self._unavailable)
        return None


def _read_all(nvml: ModuleType) -> list[GpuReading]:
    try:
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError as exc:
        log.warning("NVML device count failed: %s", exc)
        return []
    readings = []
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
        except nvml.NVMLError as exc:  # e.g. a GPU that fell off the bus: skip it, keep the others
            log.warning("NVML cannot read GPU %d: %s", index, exc)
            continue
        readings.append(GpuReading(
            index=index,
            name=name.decode(errors="replace") if isinstance(name, bytes) else str(name),
            utilization_percent=float(_or_minus_one(nvml, lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu, handle)),
            memory_used_bytes=int(_or_minus_one(nvml, lambda h: nvml.nvmlDeviceGetMemoryInfo(h).used, handle)),
            memory_total_bytes=int(_or_minus_one(nvml, lambda h: nvml.nvmlDeviceGetMemoryInfo(h).total, handle)),
        ))
    return readings


def _or_minus_one(nvml: ModuleType, read: Callable[[object], float], handle: object) -> float:
    try:
        return read(handle)
    except nvml.NVMLError:  # NOT_SUPPORTED on some boards (e.g. utilization on a few embedded parts)
        return -1


class GpuCollector(Collector):
    """`edgebox_gpu_*` series read from the monitor at scrape time; none at all without a GPU."""

    def __init__(self, monitor: GpuMonitor) -> None:
        self._monitor = monitor

    def describe(self) -> list[Metric]:
        return []  # registering must not open NVML; these names are owned by no other collector

    def collect(self) -> Iterator[Metric]:
        readings = self._monitor.readings()
        if not readings:
            return
        info = GaugeMetricFamily("edgebox_gpu_info", "1 for each NVIDIA GPU that NVML reports",
                                 labels=["gpu", "name"])
        util = GaugeMetricFamily("edgebox_gpu_utilization_percent",
                                 "GPU busy time over NVML's last sample period, 0..100", labels=["gpu"])
        used = GaugeMetricFamily("edgebox_gpu_memory_used_bytes", "GPU memory in use (all processes)",
                                 labels=["gpu"])
        total = GaugeMetricFamily("edgebox_gpu_memory_total_bytes", "GPU memory installed", labels=["gpu"])
        for r in readings:
            gpu = str(r.index)
            info.add_metric([gpu, r.name], 1)
            if r.utilization_percent >= 0:
                util.add_metric([gpu], r.utilization_percent)
            if r.memory_used_bytes >= 0:
                used.add_metric([gpu], r.memory_used_bytes)
            if r.memory_total_bytes >= 0:
                total.add_metric([gpu], r.memory_total_bytes)
        yield from (info, util, used, total)
