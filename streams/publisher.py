"""Publishes adapter output to Kafka with kafka-python: events to channel topics, rejects to the dead-letter topic.

Events go one per record (keyed by the strongest identifier, as any producer would send them) or, where
throughput matters, as envelopes: a JSON array of events for one destination partition, sent to that
partition explicitly so key-derived routing stays deterministic (ARCHITECTURE §7).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from kafka import KafkaProducer
from kafka.errors import KafkaError

from config.settings import Settings
from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.touchpoint import TouchpointEvent
from streams.adapters import partition_key
from streams.kafka import make_producer, partition_for

log = logging.getLogger(__name__)


@dataclass
class PublishSummary:
    """What a publish run did: every record read is either published, dead-lettered or not sent."""

    read: int = 0
    published: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    not_sent: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def accounted(self) -> bool:
        """True when every record read was published or dead-lettered."""
        return self.not_sent == 0 and self.published + sum(self.dead_lettered.values()) == self.read

    def render(self) -> str:
        """A human summary for the command line."""
        lines = [f"read {self.read}, published {self.published}, dead-lettered {sum(self.dead_lettered.values())}"]
        lines += [f"  dead-lettered {reason}: {n}" for reason, n in sorted(self.dead_lettered.items())]
        if self.not_sent:
            lines.append(f"NOT SENT: {self.not_sent} records (the broker did not acknowledge them)")
        lines += [f"  error: {e}" for e in self.errors[:5]]
        return "\n".join(lines)


class Publisher:
    """Sends events and dead letters, counts acknowledgements, and flushes before it is closed."""

    def __init__(self, settings: Settings, *, envelope_size: int = 0, producer: KafkaProducer | None = None) -> None:
        self.topics = Topics(settings.topic_prefix)
        self.producer = producer or make_producer(settings, linger_ms=20 if envelope_size else 5)
        self.envelope_size = envelope_size
        self.summary = PublishSummary()
        self._pending: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        self._partitions: dict[str, int] = {}

    # --- acknowledgements ------------------------------------------------------------------------

    def _track(self, future: object, count: int, reason: str | None = None) -> None:
        def ok(_meta: object) -> None:
            if reason is None:
                self.summary.published += count
            else:
                self.summary.dead_lettered[reason] += count

        def failed(exc: BaseException) -> None:
            self.summary.not_sent += count
            self.summary.errors.append(repr(exc))

        future.add_callback(ok).add_errback(failed)  # type: ignore[attr-defined]

    # --- sending ---------------------------------------------------------------------------------

    def event(self, event: TouchpointEvent, raw_json: bytes | None = None) -> None:
        """Publish one valid event (buffered into an envelope when envelopes are on)."""
        topic = self.topics.channel(event.channel)
        value = raw_json or event.model_dump_json().encode()
        key = partition_key(event)
        if not self.envelope_size:
            self._track(self.producer.send(topic, key=key, value=value), 1)
            return
        part = partition_for(key, self._partition_count(topic))
        buffer = self._pending[(topic, part)]
        buffer.append(value)
        if len(buffer) >= self.envelope_size:
            self._send_envelope(topic, part)

    def dead_letter(self, dead: DeadLetter) -> None:
        """Publish a rejected record with its reason and original bytes."""
        key = (dead.channel or "").encode()
        self._track(
            self.producer.send(self.topics.deadletter, key=key, value=dead.model_dump_json().encode()), 1, dead.reason
        )

    def _partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            parts = self.producer.partitions_for(topic)
            self._partitions[topic] = len(parts) if parts else 1
        return self._partitions[topic]

    def _send_envelope(self, topic: str, part: int) -> None:
        values = self._pending.pop((topic, part), [])
        if values:
            body = b"[" + b",".join(values) + b"]"
            self._track(self.producer.send(topic, value=body, partition=part), len(values))

    def flush(self, timeout: float | None = 60.0) -> PublishSummary:
        """Send what is buffered and wait for every acknowledgement (or failure)."""
        for topic, part in list(self._pending):
            self._send_envelope(topic, part)
        try:
            self.producer.flush(timeout=timeout)
        except KafkaError as exc:
            self.summary.errors.append(repr(exc))
        return self.summary

    def close(self) -> PublishSummary:
        """Flush and close the producer."""
        summary = self.flush()
        self.producer.close(timeout=10)
        return summary


def publish_items(publisher: Publisher, items: Iterable[object]) -> PublishSummary:
    """Publish reader output (Accepted and Rejected items) and count what was read."""
    for item in items:
        publisher.summary.read += 1
        dead = getattr(item, "dead_letter", None)
        if dead is not None:
            publisher.dead_letter(dead)
        else:
            publisher.event(item.event)  # type: ignore[attr-defined]
    return publisher.flush()
