"""The benchmark's workload: simulated journeys converted once into TouchpointEvent JSON, published in two shapes.

The events are converted by the same adapters as ``cxstream simulate`` and published with the project's
:class:`~streams.publisher.Publisher`, one event per record (keyed by :func:`~streams.adapters.partition_key`)
and as envelopes (JSON arrays for one destination partition, sent to it explicitly), so both topic prefixes
hold exactly the same events.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kafka.producer.future import RecordMetadata

from config.settings import Settings, load_settings
from schemas.touchpoint import Channel
from streams.adapters import partition_key
from streams.adapters.reader import convert_one
from streams.kafka import ensure_topics, partition_for
from streams.publisher import Publisher
from streams.sandbox.journeys import SimRecord, simulate

#: Events per envelope (docs/architecture.md §7 measured envelopes of 100).
ENVELOPE_SIZE = 100

#: The simulator's delivery faults kept in the workload (duplicates and late, out-of-order events).
DUPLICATE_RATE = 0.02
LATE_RATE = 0.02
SEED = 1

#: received_at of the latency slice before it is stamped at publish time (see :class:`PacedSlice`).
_SENTINEL = datetime(2000, 1, 1, tzinfo=UTC)
_SENTINEL_JSON = b'"received_at":"2000-01-01T00:00:00Z"'


@dataclass(frozen=True, slots=True)
class Prepared:
    """One converted event, ready to send: its channel topic suffix, Kafka key and JSON value."""

    channel: str
    key: bytes
    value: bytes
    event_id: str


@dataclass
class Workload:
    """The converted events of one simulation, in arrival order."""

    customers: int
    days: int
    events: list[Prepared]
    records: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    distinct_events: int = 0
    simulate_s: float = 0.0
    convert_s: float = 0.0


def simulate_records(customers: int, days: int) -> Iterator[SimRecord]:
    """The simulator's records for the benchmark's workload (always the same for the same arguments)."""
    return simulate(customers=customers, days=days, seed=SEED, duplicate_rate=DUPLICATE_RATE, late_rate=LATE_RATE)


def prepare(rec: SimRecord, line: int) -> Prepared | str:
    """One simulated record converted as ``cxstream simulate`` converts it: the event, or why it was rejected."""
    item = convert_one(Channel(rec.channel), rec.raw, source_file="simulate", line=line)
    dead = getattr(item, "dead_letter", None)
    if dead is not None:
        return str(dead.reason)
    event = item.event  # type: ignore[union-attr]
    # The same bytes as Publisher.event would send (model_dump_json), computed once for both shapes.
    return Prepared(event.channel.value, partition_key(event), event.model_dump_json().encode(), event.event_id)


def build_workload(customers: int, days: int) -> Workload:
    """Simulate and convert once; rejected records are counted (the simulator emits none by default)."""
    started = time.perf_counter()
    records = list(simulate_records(customers, days))
    simulated = time.perf_counter()
    work = Workload(customers, days, [], records=len(records), simulate_s=simulated - started)
    ids: set[str] = set()
    for n, rec in enumerate(records, 1):
        work.kinds[rec.kind] += 1
        event = prepare(rec, n)
        if isinstance(event, str):
            work.rejected[event] += 1
            continue
        work.events.append(event)
        ids.add(event.event_id)
    work.distinct_events = len(ids)
    work.convert_s = time.perf_counter() - simulated
    return work


def bench_settings(kafka_url: str, prefix: str, partitions: int) -> Settings:
    """Settings for the benchmark's own producers and topic creation (never the caller's CXSTREAM_* env)."""
    return load_settings(kafka_url=kafka_url, topic_prefix=prefix, partitions=partitions)


class PreparedPublisher(Publisher):
    """The project's Publisher fed with already-serialised events.

    Publisher.event() needs a TouchpointEvent to find topic, key and bytes; the workload has them already,
    so this sends them the same way (same key, same explicit partition, same envelope format and
    acknowledgement accounting) without keeping 500k pydantic objects alive.
    """

    def __init__(self, settings: Settings, *, envelope_size: int = 0) -> None:
        super().__init__(settings, envelope_size=envelope_size)
        #: Next offset after the highest acknowledged one, per (topic, partition), and records acknowledged.
        self.ends: dict[tuple[str, int], int] = {}
        self.records = 0

    def _track(self, future: object, count: int, reason: str | None = None) -> None:
        super()._track(future, count, reason)
        future.add_callback(self._acknowledged)  # type: ignore[attr-defined]

    def _acknowledged(self, meta: RecordMetadata) -> None:
        # End offsets come from the broker's acknowledgements, not from a ListOffsets request: the embedded
        # broker (Tansu 0.6.0) answers ListOffsets(latest) with the last produce batch's base offset + 1,
        # short of the real end whenever that batch held more than one record. Callbacks run on the
        # producer's one I/O thread, so these updates do not race.
        tp = (meta.topic, meta.partition)
        self.ends[tp] = max(self.ends.get(tp, 0), meta.offset + 1)
        self.records += 1

    def prepared(self, event: Prepared) -> None:
        """Publish one converted event, buffered into an envelope when envelopes are on."""
        topic = self.topics.channel(event.channel)
        if not self.envelope_size:
            self._track(self.producer.send(topic, key=event.key, value=event.value), 1)
            return
        part = partition_for(event.key, self._partition_count(topic))
        buffer = self._pending[(topic, part)]
        buffer.append(event.value)
        if len(buffer) >= self.envelope_size:
            self._send_envelope(topic, part)

    def envelopes_now(self, events: list[Prepared]) -> None:
        """Send ``events`` at once as one envelope per destination partition (a collector's batch)."""
        for event in events:
            topic = self.topics.channel(event.channel)
            part = partition_for(event.key, self._partition_count(topic))
            self._pending[(topic, part)].append(event.value)
        for topic, part in list(self._pending):
            self._send_envelope(topic, part)


@dataclass
class PublishResult:
    """How one shape was published."""

    prefix: str
    shape: str
    events: int
    records: int
    seconds: float
    ends: dict[tuple[str, int], int]

    @property
    def records_per_s(self) -> float:
        """Records acknowledged per second while publishing."""
        return self.records / self.seconds if self.seconds > 0 else 0.0


def publish(
    kafka_url: str,
    prefix: str,
    events: list[Prepared],
    *,
    envelope_size: int,
    partitions: int,
    flush_timeout: float = 300,
) -> PublishResult:
    """Create the prefix's topics and publish every event unpaced; raise unless the broker acknowledged all of them.

    Also the latency run's warm-up: a few events, so its worker has joined its group before the clock starts.
    """
    settings = bench_settings(kafka_url, prefix, partitions)
    ensure_topics(settings)
    publisher = PreparedPublisher(settings, envelope_size=envelope_size)
    started = time.perf_counter()
    try:
        for event in events:
            publisher.summary.read += 1
            publisher.prepared(event)
        summary = publisher.flush(timeout=flush_timeout)
    finally:
        publisher.producer.close(timeout=10)
    seconds = time.perf_counter() - started
    if summary.published != len(events) or summary.not_sent:
        raise RuntimeError(f"publishing to {prefix}: {summary.render()}")
    shape = "envelopes" if envelope_size else "single"
    return PublishResult(prefix, shape, len(events), publisher.records, seconds, dict(publisher.ends))


# --- the latency slice --------------------------------------------------------------------------------


@dataclass
class PacedResult:
    """What the paced publisher did."""

    events: int
    event_ids: set[str]
    seconds: float
    started_at: datetime
    ends: dict[tuple[str, int], int]

    @property
    def achieved_rate(self) -> float:
        """Events per second actually offered."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


class PacedSlice:
    """A slice of the workload whose ``received_at`` is stamped when it is published, not when converted.

    The slice is converted up front with a sentinel ``received_at``, and at publish time the sentinel's
    bytes are replaced by the current time. That is the same as converting with ``received_at=now`` at
    publish time (the adapters' ``received_at`` is only copied into the event), but it costs about 1 µs
    instead of ~75 µs per event: the paced publisher shares two cores with the worker it measures, and
    must keep up with the offered rate.
    """

    def __init__(self, customers: int, days: int, skip: int, count: int) -> None:
        self.events: list[Prepared] = []
        records = itertools.islice(simulate_records(customers, days), skip, skip + count)
        for n, rec in enumerate(records, skip + 1):
            item = convert_one(Channel(rec.channel), rec.raw, received_at=_SENTINEL, source_file="simulate", line=n)
            event = getattr(item, "event", None)
            if event is None:
                continue
            value = event.model_dump_json().encode()
            if value.count(_SENTINEL_JSON) != 1:
                raise RuntimeError(f"cannot find received_at in the JSON of event {event.event_id}")
            self.events.append(Prepared(event.channel.value, partition_key(event), value, event.event_id))

    @staticmethod
    def stamp(event: Prepared, now: datetime) -> Prepared:
        """``event`` with received_at = ``now``."""
        stamp = b'"received_at":"' + now.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode() + b'"'
        return Prepared(event.channel, event.key, event.value.replace(_SENTINEL_JSON, stamp, 1), event.event_id)


def publish_paced(
    events: list[Prepared], kafka_url: str, prefix: str, rate: float, *, shape: str, partitions: int, tick_s: float
) -> PacedResult:
    """Publish ``events`` (with the sentinel received_at) at ``rate`` events/s in real time, stamping each send.

    ``single``: each event is sent as its own record as soon as it is due. ``envelopes``: every ``tick_s`` the
    events that fell due are sent as one envelope per destination partition, the way the HTTP collector
    forwards a batch; the time an event waits for its tick counts in its latency.
    """
    settings = bench_settings(kafka_url, prefix, partitions)
    publisher = PreparedPublisher(settings, envelope_size=0 if shape == "single" else ENVELOPE_SIZE)
    total = len(events)
    sent = 0
    started_at = datetime.now(UTC)
    start = time.perf_counter()
    try:
        while sent < total:
            elapsed = time.perf_counter() - start
            due = min(total, int(elapsed * rate) + 1)
            if due <= sent:
                # Sleep until the next event is due (single) or for a tick (envelopes).
                time.sleep(min(0.001, sent / rate - elapsed) if shape == "single" else tick_s)
                continue
            stamp = datetime.now(UTC)
            batch = [PacedSlice.stamp(e, stamp) for e in events[sent:due]]
            publisher.summary.read += len(batch)
            if shape == "single":
                for event in batch:
                    publisher.prepared(event)
            else:
                publisher.envelopes_now(batch)
            sent = due
        seconds = time.perf_counter() - start
        summary = publisher.flush(timeout=60)
    finally:
        publisher.producer.close(timeout=10)
    if summary.published != total:
        raise RuntimeError(f"paced publishing to {prefix}: {summary.render()}")
    return PacedResult(total, {e.event_id for e in events}, seconds, started_at, dict(publisher.ends))
