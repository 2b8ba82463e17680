"""Python's cyclic garbage collector in the engine: keep its pauses short, and measure them.

A collection holds the GIL, so it stops the gRPC thread, the trio thread and every camera thread at once; a
full (generation 2) collection walks every tracked object. Modules, classes and functions loaded at start are
~70,000 such objects, and walking them took 15-30 ms per full collection here (docs/benchmarks.md, "gRPC").
`freeze_long_lived` moves what exists at a quiet point (ready to serve, a model just loaded) out of the
collector's reach with `gc.freeze()`; `GcPauses` records every collection's duration for /metrics. Nothing here
decides when the collector runs: CPython's thresholds do.
"""

from __future__ import annotations

import gc
import logging
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("edgebox.gc")

GENERATIONS = (0, 1, 2)
# Upper bounds in seconds: a young collection takes microseconds, a full one of an unfrozen heap tens of ms.
PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def freeze_long_lived(reason: str) -> int:
    """Collect what is garbage now, then exempt every surviving object from later collections; returns how many
    objects are frozen in all.

    Call it where the objects alive are long-lived (start-up done, a model loaded). A frozen object is still freed
    by reference counting; only a reference cycle among frozen objects would stay, which is why garbage is
    collected first.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("gc: %d objects frozen (%s)", frozen, reason)
    return frozen


class GcPauses:
    """Durations of the collector's runs, by generation, kept in plain lists for /metrics.

    The callback runs inside a collection, on whichever thread triggered it, with the GIL held. It therefore takes
    no lock (a prometheus metric's lock could be held by the very thread the collection interrupted) and allocates
    as little as it can: it only adds to preallocated integers and floats.
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._buckets = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in GENERATIONS]  # the last: above every bound
        self._sums = [0.0 for _ in GENERATIONS]
        self._installed = False

    def install(self) -> None:
        """Start recording (idempotent); `uninstall` stops."""
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._started
        generation = info["generation"]
        self._buckets[generation][bisect_left(PAUSE_BUCKETS, elapsed)] += 1
        self._sums[generation] += elapsed

    def snapshot(self, generation: int) -> tuple[list[int], float]:
        """(count per bucket, the last one above every bound; total seconds) for one generation, copied."""
        return list(self._buckets[generation]), self._sums[generation]


class GcCollector(Collector):
    """edgebox_gc_pause_seconds{generation} and edgebox_gc_frozen_objects, read at scrape time."""

    def __init__(self, pauses: GcPauses) -> None:
        self._pauses = pauses

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        pauses, frozen = self._families()
        for generation in GENERATIONS:
            counts, total = self._pauses.snapshot(generation)
            cumulative, running = [], 0
            for bound, count in zip((*map(str, PAUSE_BUCKETS), "+Inf"), counts):
                running += count
                cumulative.append((bound, running))
            pauses.add_metric([str(generation)], cumulative, total)
        frozen.add_metric([], gc.get_freeze_count())
        yield pauses
        yield frozen

    @staticmethod
    def _families() -> tuple[HistogramMetricFamily, GaugeMetricFamily]:
        return (
            HistogramMetricFamily("edgebox_gc_pause_seconds", "Duration of each run of Python's cyclic garbage "
                                  "collector, by generation (2 = full); every thread waits while it runs",
                                  labels=["generation"]),
            GaugeMetricFamily("edgebox_gc_frozen_objects", "Objects exempted from garbage collection "
                              "(gc.freeze at start and after each model load)"),
        )


# The collector is process-wide, so is the record of its pauses; every Metrics registry reads this one.
PAUSES = GcPauses()
