"""The garbage collector's tuning and its pause record: freezing long-lived objects, timing every collection."""

from __future__ import annotations

import gc
import weakref

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgebox.gc_pauses import PAUSE_BUCKETS, GcPauses, freeze_long_lived
from edgebox.metrics import Metrics


class Node:
    """A container the collector tracks (instances of plain classes are)."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()  # leave the test process as it was


def _tracked(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())  # the permanent (frozen) generation is not listed


def test_freeze_takes_live_objects_out_of_the_collectors_generations(unfrozen):
    survivor = Node()
    assert _tracked(survivor)
    frozen = freeze_long_lived("test")
    assert frozen == gc.get_freeze_count() > 0
    assert not _tracked(survivor)
    gc.unfreeze()
    assert _tracked(survivor)


def test_freeze_collects_cyclic_garbage_first_so_none_is_kept_forever(unfrozen):
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.disable()  # no collection may happen between here and freeze_long_lived, except its own
    try:
        assert gone() is not None  # the cycle is still there: only the collector can free it
        freeze_long_lived("test")
    finally:
        gc.enable()
    assert gone() is None


def test_every_collection_is_timed_in_its_generations_histogram():
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # idempotent: one callback
    try:
        before, total_before = pauses.snapshot(2)
        gc.collect(2)
        gc.collect(0)
        after, total_after = pauses.snapshot(2)
    finally:
        pauses.uninstall()
    assert sum(after) - sum(before) == 1
    assert total_after > total_before
    assert len(after) == len(PAUSE_BUCKETS) + 1
    gc.collect(2)  # uninstalled: no longer counted
    assert pauses.snapshot(2)[0] == after


def test_metrics_expose_cumulative_pause_buckets_and_the_frozen_count(unfrozen):
    from edgebox.gc_pauses import PAUSES

    PAUSES.install()
    gc.collect(2)
    freeze_long_lived("test")
    families = {f.name: f for f in text_string_to_metric_families(Metrics().exposition().decode())}
    full = [s for s in families["edgebox_gc_pause_seconds"].samples if s.labels.get("generation") == "2"]
    buckets = [s.value for s in full if s.name.endswith("_bucket")]
    count = next(s.value for s in full if s.name.endswith("_count"))
    assert buckets == sorted(buckets) and buckets[-1] == count >= 2  # the collect above and freeze's own
    assert next(s.value for s in full if s.name.endswith("_sum")) > 0
    assert families["edgebox_gc_frozen_objects"].samples[0].value == gc.get_freeze_count() > 0
