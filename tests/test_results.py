"""ResultHub: filtering, encode-once fan-out, bounded per-subscriber buffers with miss counts, and the eviction of
a subscriber that stopped reading (on MockClock). The gRPC side of the same behaviour is in tests/e2e."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from edgebox import results as results_module
from edgebox.api.convert import encode_result
from edgebox.metrics import Metrics, total
from edgebox.proto_gen import infer as pb
from edgebox.results import EVICT_AFTER_S, Delivery, Result, ResultFilter, ResultHub, Subscription, TrioSink


def result(camera: str = "cam1", workflow: str = "wf", seq: int = 1, alarm: bool = False,
           image: bytes = b"") -> Result:
    return Result(source_id=camera, workflow_id=workflow, workflow_version=1, timestamp_ms=1_700_000_000_000 + seq,
                  alarm=alarm, json_data='{"detections":[]}', image_jpeg=image, frame_seq=seq)


class ListSink:
    """Keeps what it is given; `take()` plays a consumer that reads one delivery."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.closed: list[tuple[str, bool]] = []

    def push(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)

    def close(self, reason: str, evicted: bool = False) -> None:
        self.closed.append((reason, evicted))


class CountingEncoder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, r: Result, with_image: bool) -> bytes:
        self.calls.append((r.frame_seq, with_image))
        return encode_result(r, with_image)


def hub_with(encoder=encode_result) -> tuple[ResultHub, Metrics]:
    metrics = Metrics()
    return ResultHub(encoder, metrics), metrics


def subscribe(hub: ResultHub, capacity: int = 8, **filter_fields) -> tuple[Subscription, ListSink]:
    sink = ListSink()
    sub = Subscription(ResultFilter(**filter_fields), sink, capacity)
    hub.subscribe(sub)
    return sub, sink


def take_all(sub: Subscription, sink: ListSink) -> list[Delivery]:
    taken = list(sink.deliveries)
    sink.deliveries.clear()
    for _ in taken:
        sub.taken()
    return taken


async def test_filters_select_by_camera_workflow_and_type():
    hub, _ = hub_with()
    everything = subscribe(hub)
    by_camera = subscribe(hub, camera_ids=frozenset({"cam2"}))
    by_workflow = subscribe(hub, workflow_ids=frozenset({"other"}))
    alarms = subscribe(hub, alarms_only=True)
    both = subscribe(hub, camera_ids=frozenset({"cam1"}), alarms_only=True)
    published = [result("cam1", seq=1), result("cam2", seq=2, alarm=True), result("cam1", "other", seq=3),
                 result("cam1", seq=4, alarm=True)]
    for r in published:
        hub.publish(r)

    def seqs(pair):
        return [d.result.frame_seq for d in pair[1].deliveries]

    assert seqs(everything) == [1, 2, 3, 4]
    assert seqs(by_camera) == [2]
    assert seqs(by_workflow) == [3]
    assert seqs(alarms) == [2, 4]
    assert seqs(both) == [4]


async def test_each_variant_is_encoded_once_whatever_the_number_of_subscribers():
    encoder = CountingEncoder()
    hub, _ = hub_with(encoder)
    subs = [subscribe(hub) for _ in range(5)] + [subscribe(hub, omit_images=True) for _ in range(5)]
    hub.publish(result(seq=7, alarm=True, image=b"\xff\xd8jpeg"))
    assert sorted(encoder.calls) == [(7, False), (7, True)]
    with_image = pb.InferResult.parse(subs[0][1].deliveries[0].payload)
    without = pb.InferResult.parse(subs[-1][1].deliveries[0].payload)
    assert with_image.image_data == b"\xff\xd8jpeg" and without.image_data == b""
    assert with_image.type == pb.ResultType.ALARM and with_image.frame_seq == 7
    assert subs[1][1].deliveries[0].payload is subs[2][1].deliveries[0].payload  # the same bytes, shared


async def test_a_full_buffer_counts_misses_and_the_next_delivery_reports_them():
    hub, metrics = hub_with()
    slow, slow_sink = subscribe(hub, capacity=4)
    fast, fast_sink = subscribe(hub, capacity=4)
    for seq in range(1, 11):
        hub.publish(result(seq=seq))
        take_all(fast, fast_sink)  # the fast consumer keeps up
    assert slow.pending == 4 and len(slow_sink.deliveries) == 4  # bounded: the rest was not queued
    assert slow.missed == 6 and slow.missed_total == 6
    assert total(metrics.subscriber_missed) == 6
    assert fast.missed_total == 0 and fast.delivered_total == 10

    assert [d.missed_before for d in take_all(slow, slow_sink)] == [0, 0, 0, 0]
    hub.publish(result(seq=11))
    [resumed] = take_all(slow, slow_sink)
    assert (resumed.result.frame_seq, resumed.missed_before) == (11, 6)
    hub.publish(result(seq=12))
    assert take_all(slow, slow_sink)[0].missed_before == 0


async def test_a_subscriber_with_a_full_buffer_for_evict_after_s_is_evicted(mock_clock: trio.testing.MockClock):
    hub, _ = hub_with()
    stuck, stuck_sink = subscribe(hub, capacity=2)
    reader, reader_sink = subscribe(hub, capacity=2)
    seq = 0

    def publish() -> None:
        nonlocal seq
        seq += 1
        hub.publish(result(seq=seq))
        take_all(reader, reader_sink)

    publish(), publish()  # fills `stuck`
    publish()  # finds it full: the eviction clock starts
    mock_clock.jump(EVICT_AFTER_S - 1)
    publish()
    assert hub.subscriber_count == 2 and not stuck_sink.closed
    mock_clock.jump(1)
    publish()
    assert hub.subscriptions() == [reader] and stuck.evicted
    [(reason, evicted)] = stuck_sink.closed
    assert evicted and f"{EVICT_AFTER_S:g} s" in reason and "subscribe again" in reason
    publish()
    assert len(stuck_sink.deliveries) == 2 and reader.delivered_total == seq  # the reader never noticed


async def test_taking_a_result_restarts_the_eviction_clock(mock_clock: trio.testing.MockClock):
    hub, _ = hub_with()
    slow, sink = subscribe(hub, capacity=1)
    hub.publish(result(seq=1))
    for seq in range(2, 6):  # full for most of each period, but it takes one result every EVICT_AFTER_S - 1
        hub.publish(result(seq=seq))
        mock_clock.jump(EVICT_AFTER_S - 1)
        hub.publish(result(seq=seq))
        take_all(slow, sink)
    assert not slow.evicted and hub.subscriber_count == 1


async def test_trio_sink_drops_its_backlog_when_evicted_but_delivers_it_at_shutdown(
        mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(results_module, "EVICT_AFTER_S", 5.0)
    hub, _ = hub_with()
    evicted_sink, closing_sink = TrioSink(3), TrioSink(3)
    hub.subscribe(Subscription(ResultFilter(), evicted_sink, 3))
    hub.subscribe(Subscription(ResultFilter(camera_ids=frozenset({"cam2"})), closing_sink, 3))
    for seq in range(1, 5):
        hub.publish(result(seq=seq))
    mock_clock.jump(6)
    hub.publish(result(seq=5))
    assert evicted_sink.evicted and await evicted_sink.receive.receive() is None  # backlog dropped
    hub.publish(result("cam2", seq=6))
    hub.close_all("the engine is shutting down")
    assert (await closing_sink.receive.receive()).result.frame_seq == 6
    assert await closing_sink.receive.receive() is None
    assert closing_sink.closed_reason == "the engine is shutting down" and not closing_sink.evicted
    assert hub.subscriber_count == 0


async def test_a_sink_that_raises_is_dropped_and_the_others_still_get_the_result():
    hub, _ = hub_with()

    class Broken(ListSink):
        def push(self, delivery: Delivery) -> None:
            raise RuntimeError("boom")

    hub.subscribe(Subscription(ResultFilter(), Broken(), 4))
    ok, ok_sink = subscribe(hub)
    hub.publish(result(seq=1))
    hub.publish(result(seq=2))
    assert hub.subscriptions() == [ok] and [d.result.frame_seq for d in ok_sink.deliveries] == [1, 2]
