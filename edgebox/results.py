"""Results of frames, and the hub that fans them out to subscribers.

A result is encoded once per variant (with / without image) and the same bytes go to every gRPC subscriber.
Each subscriber has a bounded buffer: when it is full the result is not queued for that subscriber, the miss is
counted, and the next delivered result tells it how many it missed. Publishing never waits on a subscriber. A
subscriber whose buffer stays full for EVICT_AFTER_S (it has stopped reading) is evicted: its sink is closed
with evicted=True, which the gRPC service reports as RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from edgebox.metrics import Metrics

log = logging.getLogger("edgebox.results")

DEFAULT_SUBSCRIBER_BUFFER = 256
# A subscriber whose buffer has been full this long without taking anything is dropped, so that a client that
# stopped reading (hung, or a bug) cannot pin its buffer and encoding work for ever. Checked on each publish.
EVICT_AFTER_S = 60.0


@dataclass(frozen=True)
class Result:
    """One frame's outcome (the domain twin of proto `InferResult`)."""

    source_id: str
    workflow_id: str
    workflow_version: int
    timestamp_ms: int
    alarm: bool
    json_data: str
    image_jpeg: bytes = b""
    frame_seq: int = 0
    latency_ms: float = 0.0
    error_code: int = 0
    error_message: str = ""


@dataclass(frozen=True)
class ResultFilter:
    camera_ids: frozenset[str] = frozenset()
    workflow_ids: frozenset[str] = frozenset()
    alarms_only: bool = False
    omit_images: bool = False

    def matches(self, result: Result) -> bool:
        return ((not self.camera_ids or result.source_id in self.camera_ids)
                and (not self.workflow_ids or result.workflow_id in self.workflow_ids)
                and (result.alarm or not self.alarms_only))


@dataclass(frozen=True)
class Delivery:
    result: Result
    payload: bytes  # the encoded InferResult (variant chosen by the filter's omit_images)
    missed_before: int


class Sink(Protocol):
    def push(self, delivery: Delivery) -> None: ...

    def close(self, reason: str, evicted: bool = False) -> None:
        """No more deliveries. evicted=False: the engine is stopping (deliver what is buffered first);
        evicted=True: the subscriber stopped reading (drop what is buffered)."""


@dataclass(eq=False)
class Subscription:
    """Bookkeeping for one subscriber: its filter, its buffer bound, and what it missed."""

    filter: ResultFilter
    sink: Sink
    capacity: int = DEFAULT_SUBSCRIBER_BUFFER
    pending: int = 0  # queued but not yet taken by the consumer
    missed: int = 0
    missed_total: int = 0
    delivered_total: int = 0
    full_since: float | None = None  # trio time at which a publish first found the buffer full; None = not full
    evicted: bool = False

    def taken(self) -> None:
        """Called by the consumer when it has taken one delivery out of its buffer.

        Consumers in another thread call it through the bridge, so `pending` is only touched in trio.
        """
        self.pending -= 1
        self.full_since = None


class ResultHub:
    def __init__(self, encode: Callable[[Result, bool], bytes], metrics: Metrics) -> None:
        self._encode = encode
        self._metrics = metrics
        self._subscriptions: set[Subscription] = set()
        self.latest_by_source: dict[str, Result] = {}

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def subscriptions(self) -> list[Subscription]:
        """The current subscriptions (a copy), for status pages and tests."""
        return list(self._subscriptions)

    def subscribe(self, subscription: Subscription) -> None:
        self._subscriptions.add(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, result: Result) -> None:
        """Offer a result to every matching subscriber; never blocks."""
        self._metrics.results.labels(type="ALARM" if result.alarm else "NORMAL").inc()
        self.latest_by_source[result.source_id] = result
        encoded: dict[bool, bytes] = {}
        for sub in list(self._subscriptions):
            if not sub.filter.matches(result):
                continue
            if sub.pending >= sub.capacity:
                sub.missed += 1
                sub.missed_total += 1
                self._metrics.subscriber_missed.inc()
                self._check_stuck(sub)
                continue
            with_image = not sub.filter.omit_images and bool(result.image_jpeg)
            if with_image not in encoded:
                encoded[with_image] = self._encode(result, with_image)
            sub.pending += 1
            sub.delivered_total += 1
            delivery = Delivery(result, encoded[with_image], sub.missed)
            sub.missed = 0
            try:
                sub.sink.push(delivery)
            except Exception:
                log.exception("a subscriber's sink failed; dropping the subscriber")
                self._subscriptions.discard(sub)

    def _check_stuck(self, sub: Subscription) -> None:
        now = trio.current_time()
        if sub.full_since is None:
            sub.full_since = now
            return
        if now - sub.full_since < EVICT_AFTER_S:
            return
        self._subscriptions.discard(sub)
        sub.evicted = True
        log.warning("evicted a result subscriber that took nothing for %.0f s with a full buffer (%d results); "
                    "%d missed in all", now - sub.full_since, sub.capacity, sub.missed_total)
        try:
            sub.sink.close(f"this subscriber read no result for {now - sub.full_since:.0f} s while its buffer "
                           f"of {sub.capacity} was full (limit EVICT_AFTER_S = {EVICT_AFTER_S:g} s); "
                           "read results as fast as they come, or filter them, and subscribe again", True)
        except Exception:
            log.exception("closing an evicted subscriber's sink failed")

    def close_all(self, reason: str) -> None:
        for sub in list(self._subscriptions):
            sub.sink.close(reason)
        self._subscriptions.clear()

    def forget_source(self, source_id: str) -> None:
        self.latest_by_source.pop(source_id, None)


class TrioSink:
    """A sink for consumers inside trio (the web console): a bounded memory channel; None marks the end."""

    def __init__(self, capacity: int) -> None:
        self.send, self.receive = trio.open_memory_channel[Delivery | None](capacity + 1)
        self.closed_reason: str | None = None
        self.evicted = False

    def push(self, delivery: Delivery) -> None:
        self.send.send_nowait(delivery)

    def close(self, reason: str, evicted: bool = False) -> None:
        self.closed_reason = reason
        self.evicted = evicted
        if evicted:  # drop the backlog the consumer never took
            while True:
                try:
                    self.receive.receive_nowait()
                except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                    break
        try:
            self.send.send_nowait(None)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass
