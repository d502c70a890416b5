"""Publishes adapter output to Kafka with kafka-python: events to channel topics, rejects to the dead-letter topic.

Events go one per record (keyed by the strongest identifier, as any producer would send them) or, where
throughput matters, as envelopes: a JSON array of events for one destination partition, sent to that
partition explicitly so key-derived routing stays deterministic (docs/architecture.md §7).

A record the broker does not acknowledge (a broker restart or outage that outlasts the producer's own retries
and delivery timeout) is kept and sent again, until it is acknowledged or the publisher gives up at its
deadline; the summary reports both. Re-sending can write a record twice (the broker may have stored a copy
whose acknowledgement was lost): that is safe, since event ids are deterministic and the worker deduplicates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from kafka import KafkaProducer
from kafka import errors as kafka_errors
from kafka.errors import KafkaError

from config.settings import Settings
from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.touchpoint import TouchpointEvent
from streams.adapters import partition_key
from streams.kafka import make_producer, partition_for

log = logging.getLogger(__name__)

#: Failures that sending the same bytes again cannot cure: counted as not sent at once, never re-sent.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.InvalidRecordError,
    kafka_errors.InvalidTimestampError,
    kafka_errors.AuthorizationError,
    kafka_errors.UnsupportedForMessageFormatError,
    kafka_errors.KafkaConfigurationError,
)

#: Distinct error texts kept in a summary (the counts of failures are the summary's counters, not this list).
MAX_ERRORS = 100


@dataclass
class PublishSummary:
    """What a publish run did: every record read is either published, dead-lettered or not sent.

    ``resent`` counts records sent again because the broker did not acknowledge an earlier attempt (once per
    attempt); they are published or not sent like any other record, so they do not change the balance.
    """

    read: int = 0
    published: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    not_sent: int = 0
    resent: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def accounted(self) -> bool:
        """True when every record read was published or dead-lettered."""
        return self.not_sent == 0 and self.published + sum(self.dead_lettered.values()) == self.read

    def render(self) -> str:
        """A human summary for the command line."""
        lines = [f"read {self.read}, published {self.published}, dead-lettered {sum(self.dead_lettered.values())}"]
        lines += [f"  dead-lettered {reason}: {n}" for reason, n in sorted(self.dead_lettered.items())]
        if self.resent:
            lines.append(f"re-sent {self.resent} records the broker had not acknowledged")
        if self.not_sent:
            lines.append(f"NOT SENT: {self.not_sent} records (the broker did not acknowledge them)")
        if self.resent and not self.not_sent:
            lines += [f"  first failure: {e}" for e in self.errors[:1]]  # all acknowledged in the end
        else:
            lines += [f"  error: {e}" for e in self.errors[:5]]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record as it was sent, kept until the broker acknowledges it so that it can be sent again."""

    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None
    #: Records of the summary it stands for (the events of an envelope).
    count: int = 1
    #: The dead-letter reason, or None for events.
    reason: str | None = None


class EncodedEvent(NamedTuple):
    """An event as it goes on its channel topic: its channel, partition key and JSON bytes."""

    channel: str
    key: bytes
    value: bytes


def encode_event(event: TouchpointEvent, raw_json: bytes | None = None) -> EncodedEvent:
    """What ``Publisher.event`` sends for ``event``: keyed by its strongest identifier, serialised once."""
    return EncodedEvent(event.channel.value, partition_key(event), raw_json or event.model_dump_json().encode())


class Publisher:
    """Sends events and dead letters, counts acknowledgements, re-sends what fails, flushes before it is closed.

    ``resend_timeout``: how long ``flush`` keeps waiting for acknowledgements and re-sending what failed before
    it gives up and counts the rest as not sent. ``resend_backoff``: pause before a round of re-sending.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        envelope_size: int = 0,
        producer: KafkaProducer | None = None,
        resend_timeout: float = 120.0,
        resend_backoff: float = 1.0,
    ) -> None:
        self.topics = Topics(settings.topic_prefix)
        self._originals, self._salt = settings.dead_letter_originals, settings.identifier_salt
        self.producer = producer or make_producer(settings, linger_ms=20 if envelope_size else 5)
        self.envelope_size = envelope_size
        self.resend_timeout = resend_timeout
        self.resend_backoff = resend_backoff
        self.summary = PublishSummary()
        self._pending: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        self._partitions: dict[str, int] = {}
        # Acknowledgement callbacks run on the producer's I/O thread; the caller's thread sends and re-sends.
        self._lock = threading.Lock()
        self._unacked: dict[object, Outgoing] = {}
        self._failed: deque[Outgoing] = deque()
        self._resend_at = 0.0
        self._giving_up = False
        self._final = False

    # --- acknowledgements ------------------------------------------------------------------------

    def _track(self, future: object, count: int, reason: str | None = None) -> None:
        def ok(_meta: object) -> None:
            with self._lock:
                self._unacked.pop(future, None)
                if self._final:
                    return
                if reason is None:
                    self.summary.published += count
                else:
                    self.summary.dead_lettered[reason] += count

        def failed(exc: BaseException) -> None:
            with self._lock:
                out = self._unacked.pop(future, None)
                if self._final:
                    return
                self._error(exc)
                if out is None or self._giving_up or isinstance(exc, PERMANENT_ERRORS):
                    self.summary.not_sent += count
                    return
                if not self._failed:
                    self._resend_at = time.monotonic() + self.resend_backoff
                self._failed.append(out)

        future.add_callback(ok).add_errback(failed)  # type: ignore[attr-defined]

    def _error(self, exc: BaseException) -> None:
        """Keep an error's text for the summary (once each, a bounded number; the caller holds the lock)."""
        text = repr(exc)
        if len(self.summary.errors) < MAX_ERRORS and text not in self.summary.errors:
            self.summary.errors.append(text)

    def _resend_failed(self) -> None:
        """Send again every record whose attempt failed, once the backoff after the first failure has passed."""
        with self._lock:
            if not self._failed or time.monotonic() < self._resend_at:
                return
            batch = list(self._failed)
            self._failed.clear()
        log.warning("re-sending %d records the broker did not acknowledge", sum(out.count for out in batch))
        for n, out in enumerate(batch):
            try:
                self._send(out)
            except KafkaError as exc:  # no metadata within max_block_ms: the broker is still away
                with self._lock:
                    self._failed.extendleft(reversed(batch[n:]))
                    self._resend_at = time.monotonic() + self.resend_backoff
                    self._error(exc)
                return
            with self._lock:
                self.summary.resent += out.count

    # --- sending ---------------------------------------------------------------------------------

    def event(self, event: TouchpointEvent, raw_json: bytes | None = None) -> None:
        """Publish one valid event (buffered into an envelope when envelopes are on)."""
        self.encoded(encode_event(event, raw_json))

    def encoded(self, event: EncodedEvent) -> None:
        """Publish one event encoded earlier by ``encode_event`` (a backfill sorts them first), as ``event`` does."""
        topic = self.topics.channel(event.channel)
        key, value = event.key, event.value
        if self._failed:
            self._resend_failed()
        if not self.envelope_size:
            self._send(Outgoing(topic, value, key=key))
            return
        part = partition_for(key, self._partition_count(topic))
        buffer = self._pending[(topic, part)]
        buffer.append(value)
        if len(buffer) >= self.envelope_size:
            self._send_envelope(topic, part)

    def record(self, topic: str, value: bytes, *, key: bytes | None = None, partition: int | None = None) -> None:
        """Publish bytes as they are (a replayed dead letter's original), acknowledged and re-sent like an event."""
        if self._failed:
            self._resend_failed()
        self._send(Outgoing(topic, value, key=key, partition=partition))

    def dead_letter(self, dead: DeadLetter) -> None:
        """Publish a rejected record with its reason and original bytes (or what CXSTREAM_DEAD_LETTER_ORIGINALS keeps)."""
        dead = dead.kept(self._originals, self._salt)
        key = (dead.channel or "").encode()
        if self._failed:
            self._resend_failed()
        self._send(Outgoing(self.topics.deadletter, dead.model_dump_json().encode(), key=key, reason=dead.reason))

    def _send(self, out: Outgoing) -> None:
        """Send one record and track its acknowledgement; keep it until then so that it can be sent again."""
        future = self.producer.send(out.topic, key=out.key, value=out.value, partition=out.partition)
        with self._lock:
            self._unacked[future] = out
        self._track(future, out.count, out.reason)

    def _partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            parts = self.producer.partitions_for(topic)
            self._partitions[topic] = len(parts) if parts else 1
        return self._partitions[topic]

    def _send_envelope(self, topic: str, part: int) -> None:
        values = self._pending.pop((topic, part), [])
        if values:
            body = b"[" + b",".join(values) + b"]"
            self._send(Outgoing(topic, body, partition=part, count=len(values)))

    def flush(self, timeout: float | None = None) -> PublishSummary:
        """Send what is buffered and wait for every acknowledgement, re-sending what fails.

        After ``timeout`` seconds (default: ``resend_timeout``) records still waiting to be re-sent are counted
        as not sent; records still in flight are counted when their acknowledgement or failure comes.
        """
        deadline = time.monotonic() + (self.resend_timeout if timeout is None else timeout)
        for topic, part in list(self._pending):
            self._send_envelope(topic, part)
        while True:
            try:
                self.producer.flush(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as exc:  # timed out with records in flight
                with self._lock:
                    self._error(exc)
                break
            with self._lock:
                if not self._failed:
                    break
                wait = self._resend_at - time.monotonic()
            if time.monotonic() + max(wait, 0.0) >= deadline:
                break
            if wait > 0:
                time.sleep(wait)
            self._resend_failed()
        with self._lock:
            while self._failed:
                self.summary.not_sent += self._failed.popleft().count
        return self.summary

    def close(self) -> PublishSummary:
        """Flush (re-sending what fails, up to ``resend_timeout``) and close the producer."""
        summary = self.flush()
        with self._lock:
            self._giving_up = True  # from now on a failure is final
            while self._failed:
                summary.not_sent += self._failed.popleft().count
        try:
            self.producer.close(timeout=10)
        except KafkaError as exc:  # kafka-python raises when records are still in flight after the timeout
            with self._lock:
                self._error(exc)
        # Records neither acknowledged nor failed by now are not sent; later callbacks must not count them again.
        with self._lock:
            self._final = True
            summary.not_sent += sum(out.count for out in self._unacked.values())
            self._unacked.clear()
        return summary


def route_items(publisher: Publisher, items: Iterable[object], accept: Callable[[TouchpointEvent], None]) -> None:
    """Count reader output (Accepted and Rejected items) as read, publish the dead letters, give events to ``accept``.

    Does not flush. ``accept`` is ``publisher.event`` to publish events as they are read.
    """
    for item in items:
        publisher.summary.read += 1
        dead = getattr(item, "dead_letter", None)
        if dead is not None:
            publisher.dead_letter(dead)
        else:
            accept(item.event)  # type: ignore[attr-defined]


def publish_items(publisher: Publisher, items: Iterable[object]) -> PublishSummary:
    """Publish reader output (Accepted and Rejected items) and count what was read."""
    route_items(publisher, items, publisher.event)
    return publisher.flush()
