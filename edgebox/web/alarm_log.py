"""The console's alarm log: the last alarms with their snapshots, for the feed, its thumbnails and replays.

It is a synchronous hub sink, so an alarm is logged during `ResultHub.publish`, before any browser's event stream
(which reads its own channel later) announces it. It keeps alarms only in memory; SubscribeResults is the way
to keep more.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from typing import Any

from edgebox.results import Delivery, Result, ResultFilter, ResultHub, Subscription

ALARM_LOG_SIZE = 100  # alarms kept, snapshots included (~50 KB each at 640x360)


@dataclass(eq=False)
class AlarmEntry:
    seq: int
    result: Result
    labels: dict[str, int]
    top_score: float
    thumbnail: bytes | None = None

    def to_json(self, missed_before: int = 0) -> dict[str, Any]:
        r = self.result
        has_image = bool(r.image_jpeg)
        return {
            "seq": self.seq, "camera_id": r.source_id, "workflow_id": r.workflow_id,
            "workflow_version": r.workflow_version, "timestamp_ms": r.timestamp_ms, "frame_seq": r.frame_seq,
            "labels": self.labels, "top_score": self.top_score, "latency_ms": round(r.latency_ms, 1),
            "snapshot_url": f"/api/alarms/{self.seq}/snapshot.jpg" if has_image else None,
            "thumbnail_url": f"/api/alarms/{self.seq}/thumbnail.jpg" if has_image else None,
            "missed_before": missed_before,
        }


def _summarize(result: Result) -> tuple[dict[str, int], float]:
    try:
        detections = json.loads(result.json_data).get("detections", [])
    except (ValueError, AttributeError):
        detections = []
    labels: dict[str, int] = collections.Counter(str(d.get("label", "?")) for d in detections)
    top = max((float(d.get("score", 0.0)) for d in detections), default=0.0)
    return dict(labels), round(top, 3)


class AlarmLog:
    """The last ALARM_LOG_SIZE alarms. It is a synchronous hub sink: an alarm is logged during `publish`, so it
    is here before any event stream (which reads its own channel later) announces it."""

    def __init__(self, hub: ResultHub, size: int = ALARM_LOG_SIZE) -> None:
        self._hub = hub
        self._entries: collections.deque[AlarmEntry] = collections.deque(maxlen=size)
        self._by_seq: dict[int, AlarmEntry] = {}
        self._by_key: dict[tuple[str, int, int], AlarmEntry] = {}
        self._next_seq = 1
        self._subscription = Subscription(ResultFilter(alarms_only=True), self, capacity=1)

    def attach(self) -> None:
        self._hub.subscribe(self._subscription)

    def detach(self) -> None:
        self._hub.unsubscribe(self._subscription)

    # Sink protocol ---------------------------------------------------------------------------------------
    def push(self, delivery: Delivery) -> None:
        self._subscription.taken()  # consumed at once: this sink never holds a backlog
        if len(self._entries) == self._entries.maxlen:
            old = self._entries[0]
            self._by_seq.pop(old.seq, None)
            self._by_key.pop(_key(old.result), None)
        labels, top = _summarize(delivery.result)
        entry = AlarmEntry(self._next_seq, delivery.result, labels, top)
        self._next_seq += 1
        self._entries.append(entry)
        self._by_seq[entry.seq] = entry
        self._by_key[_key(entry.result)] = entry

    def close(self, reason: str) -> None:
        pass  # the log stays readable while the console drains

    # Reading -------------------------------------------------------------------------------------------
    def recent(self, *, cameras: frozenset[str] = frozenset(), after: int = 0, limit: int = ALARM_LOG_SIZE
               ) -> list[AlarmEntry]:
        """Oldest first, seq > after, only `cameras` when given."""
        chosen = [e for e in self._entries if e.seq > after and (not cameras or e.result.source_id in cameras)]
        return chosen[-limit:] if limit > 0 else []

    def get(self, seq: int) -> AlarmEntry | None:
        return self._by_seq.get(seq)

    def entry_for(self, result: Result) -> AlarmEntry | None:
        return self._by_key.get(_key(result))


def _key(result: Result) -> tuple[str, int, int]:
    return result.source_id, result.timestamp_ms, result.frame_seq
