"""Downstream records of a committed batch: how they are kept in the outbox and published, in batches.

Every committed batch leaves the records it publishes (timeline, profiles, identity, metrics, alerts, dead
letters) in one outbox row written in its own transaction; the worker publishes them afterwards and deletes
the row once the broker acknowledged them.

On a broker with transactions (Apache Kafka) each row is published in one Kafka transaction, fenced per worker
(transactional id ``<app>-<worker>-outbox``), together with a marker on ``<prefix>outbox-commits``: "rows of
worker W of group G in database D up to id N are published". A crash between the Kafka commit and the row's deletion leaves a row the
marker already covers: at start the worker reads the markers and deletes such rows instead of publishing them
again, so a ``read_committed`` consumer sees every record exactly once. A crash inside the transaction leaves
it open until the restarted worker's producer, with the same transactional id, aborts it; the row is then
published again. On a broker without transactions (the embedded one) rows are published at least once.

Why not one ``producer.send`` per record: aiokafka's ``send`` costs tens of microseconds of Python per
record, and a batch publishes about four downstream records per input event, which made publishing a
large share of the worker's time. Records are appended to one ``BatchBuilder`` per partition (aiokafka's
C record builder) and each is sent whole with ``send_batch``; partitions are chosen here, by Kafka's
default partitioner (murmur2), memoised because keys repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson
import zstandard
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from mode import Service

from sinks.contract import OutboxRow
from streams.kafka import partition_for

#: Outbox payload layout: magic, then compressed: length of the JSON list of topic names, that list, then per
#: record a frame (topic index, key length, value length), the key and value, the route's length and route.
#: Compressing keeps the row that every batch writes and deletes small. Zstandard at level 1: on a 5,000-event
#: batch (7.2 MB of records) 6.8 ms and 650 kB, where zlib at level 1 took 25 ms for 923 kB (5 µs an event).
_MAGIC = b"CXO3"
#: The same layout holding a record without a value (``_NO_VALUE``): marked apart so that a worker of a version
#: that cannot read one refuses the row ("not an outbox payload of this version") rather than misread it.
_MAGIC_NO_VALUES = b"CXO4"
#: Rows written before (zlib): still read, so that an upgrade publishes what the previous version committed.
_MAGIC_ZLIB = b"CXO2"
_COMPRESSOR = zstandard.ZstdCompressor(level=1)
_DECOMPRESSOR = zstandard.ZstdDecompressor()
_LENGTH = struct.Struct("<I")
_FRAME = struct.Struct("<HII")
#: The value length of a record without a value (a tombstone, on a compacted topic): no value is 4 GiB long.
_NO_VALUE = 0xFFFFFFFF

#: A downstream record as queued and sent: topic, key, value (None: a tombstone) and the route its partition is
#: computed from.
OutRecord = tuple[str, bytes, bytes | None, bytes]

log = logging.getLogger(__name__)

#: Largest record batch sent in one request to one partition (the broker's default message.max.bytes is 1 MiB).
MAX_BATCH_BYTES = 512 * 1024

#: How long the broker keeps a transaction of a vanished worker open before aborting it: longer than a publishing
#: attempt may take (``OutboxPublisher``'s 60 s), shorter than ``worker.ORPHANED_OUTBOX_S``.
TRANSACTION_TIMEOUT_MS = 90_000


@dataclass(slots=True)
class Outputs:
    """What a committed batch publishes downstream, in order: (topic, key, value, route) records.

    ``route`` is what the partition is computed from: the key itself, or for records whose keys are all
    different (metric cells) the entity they belong to, so related records share a partition and the
    partitioner's memo stays small. Either way one key always lands on one partition, which is what a
    compacted topic needs.

    Each record is framed as it is added (the outbox row's frames, ``encode``), not kept as its own bytes until
    the batch ends: orjson (3.13) leaves every value it makes in a buffer of at least 4 KiB, so a batch's
    values, two per event of about 600 bytes each, held 61 MB of a 5,000-event batch where their frames take 7.
    """

    #: The records' frames, as ``encode`` compresses them after the topic list.
    frames: bytearray = field(default_factory=bytearray, init=False)
    #: Topic -> its index in the frames, in order of first use.
    topics: dict[str, int] = field(default_factory=dict, init=False)
    #: Whether a record without a value (a tombstone) is among them.
    no_values: bool = field(default=False, init=False)

    def add(self, topic: str, key: str, value: bytes | None, route: str | None = None) -> None:
        """Queue one downstream record (``value`` None: a tombstone)."""
        encoded = key.encode()
        i = self.topics.get(topic)
        if i is None:
            i = self.topics[topic] = len(self.topics)
        routed = encoded if route is None else route.encode()
        frames = self.frames
        frames += _FRAME.pack(i, len(encoded), _NO_VALUE if value is None else len(value))
        frames += encoded
        if value is None:
            self.no_values = True
        else:
            frames += value
        frames += _LENGTH.pack(len(routed))
        frames += routed

    def __bool__(self) -> bool:
        return bool(self.frames)

    @property
    def records(self) -> list[OutRecord]:
        """The queued records, decoded from their frames (for inspection: the worker publishes ``encode``'s)."""
        return list(_records(list(self.topics), bytes(self.frames), 0))

    def encode(self) -> bytes:
        """Serialise for the outbox row (length-prefixed frames: no escaping of the JSON values).

        Compressed as a stream, part by part, with the whole size declared up front: the same bytes as compressing
        the parts joined, without a copy of the frames (20 MB for a 20,000-event batch, at the batch's peak).
        """
        head = orjson.dumps(list(self.topics))
        length = _LENGTH.pack(len(head))
        stream = _COMPRESSOR.compressobj(size=len(length) + len(head) + len(self.frames))
        parts = (stream.compress(length), stream.compress(head), stream.compress(self.frames), stream.flush())
        return (_MAGIC_NO_VALUES if self.no_values else _MAGIC) + b"".join(parts)


def _records(topics: list[str], payload: bytes, pos: int) -> Iterator[OutRecord]:
    """The (topic, key, value, route) records framed in ``payload`` from ``pos`` on (``Outputs.add``)."""
    end = len(payload)
    while pos < end:
        i, klen, vlen = _FRAME.unpack_from(payload, pos)
        pos += _FRAME.size
        key, pos = payload[pos : pos + klen], pos + klen
        if vlen == _NO_VALUE:
            value = None
        else:
            value, pos = payload[pos : pos + vlen], pos + vlen
        (rlen,) = _LENGTH.unpack_from(payload, pos)
        pos += _LENGTH.size
        yield topics[i], key, value, payload[pos : pos + rlen]
        pos += rlen


@dataclass(frozen=True, slots=True)
class OutboxPayload:
    """A committed batch's outputs as its outbox row holds them (``Outputs.encode``), read as they are sent.

    The worker keeps queued batches in this compressed form (about a fifth of their decoded size) and decodes
    a batch only while sending it: decoded up front, the queued batches' records were 75-100 MB of the Faust
    process's heap at its peak (memray, 20,000 and 50,000 simulated customers).
    """

    data: bytes

    def __post_init__(self) -> None:
        if not self.data.startswith((_MAGIC, _MAGIC_NO_VALUES, _MAGIC_ZLIB)):
            raise ValueError("not an outbox payload of this version")

    def records(self) -> Iterator[OutRecord]:
        """The (topic, key, value, route) records, in order; only one decompressed copy exists meanwhile."""
        body = self.data[len(_MAGIC) :]
        payload = zlib.decompress(body) if self.data.startswith(_MAGIC_ZLIB) else _DECOMPRESSOR.decompress(body)
        (size,) = _LENGTH.unpack_from(payload)
        start = _LENGTH.size
        yield from _records(orjson.loads(payload[start : start + size]), payload, start + size)


class Partitioner:
    """Kafka's default partitioner (murmur2 of the routing key), memoised; forgets everything when full."""

    def __init__(self, max_keys: int = 200_000) -> None:
        self._max_keys = max_keys
        self._memo: dict[tuple[bytes, int], int] = {}

    def __call__(self, route: bytes, partitions: int) -> int:
        """The partition of ``route`` among ``partitions``."""
        memo = self._memo
        found = memo.get((route, partitions))
        if found is None:
            if len(memo) >= self._max_keys:
                memo.clear()
            found = memo[(route, partitions)] = partition_for(route, partitions)
        return found


class OutboxRef(NamedTuple):
    """Which outbox row a publication is: the database, the worker that committed the row, the row's id."""

    database_id: str
    worker_id: str
    row_id: int


def transactional_id(group_id: str, worker_id: str) -> str:
    """The transactional id a worker publishes its outbox rows under (another worker taking its rows over uses it
    too, which fences it)."""
    return f"{group_id}-{worker_id}-outbox"


class DownstreamProducer:
    """An aiokafka producer that sends a batch's outputs as one record batch per partition.

    ``transactions``: ``on`` publishes each outbox row in a Kafka transaction with its commit marker on
    ``commits_topic``; ``off`` publishes at least once; ``auto`` uses transactions when the broker grants a
    transactional producer and says so in the log when it does not.
    """

    def __init__(
        self,
        bootstrap_servers: list[str],
        client_id: str,
        request_timeout_s: float = 30.0,
        *,
        group_id: str = "",
        worker_id: str = "",
        transactions: str = "off",
        commits_topic: str | None = None,
    ) -> None:
        self._config = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": client_id,
            "acks": "all",
            # The embedded broker grants no producer ids (docs/architecture.md §7); records are keyed and idempotent downstream.
            "enable_idempotence": False,
            "max_batch_size": MAX_BATCH_BYTES,
            "max_request_size": 2 * MAX_BATCH_BYTES,
            "request_timeout_ms": int(request_timeout_s * 1000),
        }
        if transactions != "off" and (not group_id or not worker_id or commits_topic is None):
            raise ValueError("transactions need a group, a worker id and a commits topic")
        self._transactions = transactions
        self._commits_topic = commits_topic
        # Markers are keyed by group and worker: groups sharing a topic prefix may reuse worker names.
        self._group_id = group_id
        self._worker_id = worker_id
        #: True once started with a transactional producer.
        self.transactional = False
        self._producer: AIOKafkaProducer | None = None
        #: Transactional producers of other workers whose unpublished rows this one took over, by worker id.
        self._taken_over: dict[str, AIOKafkaProducer] = {}
        self._partitions: dict[str, int] = {}
        self._partition_of = Partitioner()

    async def start(self) -> None:
        """Connect to the cluster (aiokafka binds a producer to the running loop, so it is made here).

        A transactional producer's start fences an earlier run of the same worker and settles the transaction it
        left open (the broker completes a commit already decided, else aborts it).
        """
        if self._transactions != "off":
            try:
                self._producer = await self._started(self._worker_id)
            except KafkaError as exc:
                if self._transactions == "on" or exc.retriable:
                    raise
                log.warning(
                    "the broker grants no transactional producer (%s: %s): downstream records are published at "
                    "least once (CXSTREAM_OUTPUT_TRANSACTIONS=auto)",
                    exc.__class__.__name__,
                    exc,
                )
            else:
                self.transactional = True
                log.info("downstream records are published in Kafka transactions (%s)", self._tid(self._worker_id))
                return
        self._producer = AIOKafkaProducer(**self._config)
        await self._producer.start()

    def _tid(self, worker_id: str) -> str:
        return transactional_id(self._group_id, worker_id)

    async def _started(self, worker_id: str) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            **{**self._config, "enable_idempotence": True},
            transactional_id=self._tid(worker_id),
            # Longer than a publishing attempt may take (OutboxPublisher's attempt_timeout_s), so that a slow broker
            # does not abort a live attempt's transaction; shorter than the age at which another worker takes the
            # rows over (worker.ORPHANED_OUTBOX_S).
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def take_over(self, worker_ids: Iterable[str]) -> None:
        """Publish other workers' rows from now on under their own transactional ids: this fences them (a worker
        thought gone but alive stops rather than publish the same rows) and settles their open transactions, so
        that the markers read next are final."""
        for worker_id in worker_ids:
            if worker_id not in self._taken_over and worker_id != self._worker_id:
                self._taken_over[worker_id] = await self._started(worker_id)
                log.warning("publishing the outbox rows worker %s left unpublished (it is fenced now)", worker_id)

    async def restart(self, worker_id: str) -> None:
        """A new transactional producer for ``worker_id``'s rows in place of one a failed attempt may have left
        unusable; its start settles that attempt's transaction."""
        old = self._producer if worker_id == self._worker_id else self._taken_over.pop(worker_id, None)
        if worker_id == self._worker_id:
            self._producer = None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), 5)
        producer = await self._started(worker_id)
        if worker_id == self._worker_id:
            self._producer = producer
        else:
            self._taken_over[worker_id] = producer

    async def stop(self) -> None:
        """Flush and disconnect."""
        for producer in [*self._taken_over.values(), self._producer]:
            if producer is not None:
                await producer.stop()

    @property
    def producer(self) -> AIOKafkaProducer:
        """The started producer."""
        if self._producer is None:
            raise RuntimeError("the downstream producer is not started")
        return self._producer

    async def published_rows(self, database_id: str) -> dict[str, int]:
        """Per worker id of this group, the last outbox row of database ``database_id`` whose transaction
        committed (empty without transactions).

        Read with ``read_committed`` up to the end the log had when asked (not only to the last stable offset: the
        markers of this worker may lie past another worker's open transaction), waiting for open transactions to
        end, at most the transaction timeout: a commit decided but not yet completed is counted.
        """
        if not self.transactional:
            return {}
        assert self._commits_topic is not None
        partitions = await self.producer.partitions_for(self._commits_topic)
        parts = [TopicPartition(self._commits_topic, p) for p in sorted(partitions)]
        consumers = [
            AIOKafkaConsumer(
                bootstrap_servers=self._config["bootstrap_servers"],
                client_id=f"{self._config['client_id']}-commits",
                group_id=None,
                enable_auto_commit=False,
                isolation_level=level,
            )
            for level in ("read_uncommitted", "read_committed")
        ]
        for consumer in consumers:
            await consumer.start()
        try:
            ends = await consumers[0].end_offsets(parts)
            reader = consumers[1]
            reader.assign(parts)
            await reader.seek_to_beginning(*parts)
            published: dict[str, int] = {}
            deadline = time.monotonic() + TRANSACTION_TIMEOUT_MS / 1000 + 30
            while [tp for tp in parts if await reader.position(tp) < ends[tp]]:
                if time.monotonic() > deadline:
                    raise KafkaError(
                        f"{self._commits_topic} stays behind an open transaction: cannot tell what was published"
                    )
                for messages in (await reader.getmany(*parts, timeout_ms=500)).values():
                    for message in messages:
                        marker = _marker(message.key, message.value)
                        if marker is not None and marker[0] == self._group_id and marker[2] == database_id:
                            owner, row_id = marker[1], marker[3]
                            published[owner] = max(row_id, published.get(owner, -1))
            return published
        finally:
            for consumer in consumers:
                await consumer.stop()

    async def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            partitions = await self.producer.partitions_for(topic)
            count = self._partitions[topic] = len(partitions)
        return count

    async def send(self, records: Iterable[OutRecord], producer: AIOKafkaProducer | None = None) -> Counter[str]:
        """Send (topic, key, value, route) records with ``producer`` (this one's by default) and wait until the broker
        acknowledged all of them; return the records per topic."""
        producer, partition_of = producer or self.producer, self._partition_of
        builders: dict[tuple[str, int], object] = {}
        futures: list[asyncio.Future[object]] = []
        sent: Counter[str] = Counter()
        counts: dict[str, int] = {}
        for topic, key, value, route in records:
            partitions = counts.get(topic)
            if partitions is None:
                partitions = counts[topic] = await self._partition_count(topic)
            tp = (topic, partition_of(route, partitions))
            builder = builders.get(tp)
            if builder is None:
                builder = builders[tp] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:  # type: ignore[attr-defined]
                futures.append(await producer.send_batch(builder, topic, partition=tp[1]))
                builder = builders[tp] = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None) is None:  # type: ignore[attr-defined]
                    raise ValueError(
                        f"a record of {len(key) + len(value or b'')} bytes for {topic} exceeds the batch size"
                    )
            sent[topic] += 1
        for (topic, partition), builder in builders.items():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        await asyncio.gather(*futures)
        return sent

    async def publish(self, row: OutboxRef, records: Iterable[OutRecord]) -> Counter[str]:
        """Send the records of outbox row ``row``: when transactional, in one transaction with the marker saying
        the row is published, under the transactional id of the worker that committed the row.

        A failure leaves the transaction as it is: the caller starts a new producer, which settles it.
        """
        if not self.transactional:
            return await self.send(records)
        assert self._commits_topic is not None
        producer = self.producer if row.worker_id == self._worker_id else self._taken_over[row.worker_id]
        await producer.begin_transaction()
        sent = await self.send(records, producer)
        key = orjson.dumps([self._group_id, row.worker_id])
        await producer.send_and_wait(
            self._commits_topic, key=key, value=orjson.dumps([row.database_id, row.row_id]), partition=0
        )
        await producer.commit_transaction()
        return sent


def _marker(key: bytes | None, value: bytes | None) -> tuple[str, str, str, int] | None:
    """(group, worker, database id, row id) of a commit marker; None for anything else."""
    try:
        group, worker = orjson.loads(key or b"")
        database_id, row_id = orjson.loads(value or b"")
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
    if isinstance(group, str) and isinstance(worker, str) and isinstance(database_id, str) and isinstance(row_id, int):
        return group, worker, database_id, row_id
    return None


class OutboxPublisher(Service):
    """Publishes committed outbox rows in commit order, then has them deleted once acknowledged.

    Rows a previous run committed but did not get acknowledged are queued first, at start; the worker waits
    for :attr:`ready` before applying anything, so a newer version of a record is never published before an
    older one. Publishing runs beside the next batch's transaction (the worker only waits when more than
    ``max_queued`` batches are unpublished). A broker that does not acknowledge is retried with backoff,
    forever: the rows stay in the outbox meanwhile, so nothing is lost if the worker stops. An attempt that gets
    no answer within ``attempt_timeout_s`` counts as failed, and every failure is logged with the row and how long
    it has waited: a stuck outbox is never silent. ``on_waiting`` learns how many rows wait to be published,
    ``on_transactional`` whether the producer started with transactions.

    With transactions, rows whose transaction committed before a crash are deleted at start, not published
    again; a fenced producer (another process runs with this worker's id) stops the worker.
    """

    def __init__(
        self,
        producer: DownstreamProducer,
        worker_id: str,
        pending: Callable[[], Awaitable[tuple[str, list[OutboxRow]]]],
        delete: Callable[[Sequence[int]], Awaitable[None]],
        on_sent: Callable[[Counter[str]], None],
        max_queued: int = 2,
        attempt_timeout_s: float = 60.0,
        on_waiting: Callable[[int], None] = lambda _rows: None,
        on_transactional: Callable[[bool], None] = lambda _on: None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.producer = producer
        self.worker_id = worker_id
        self._pending = pending
        self._delete = delete
        self._on_sent = on_sent
        self._attempt_timeout_s = attempt_timeout_s
        self._on_waiting = on_waiting
        self._on_transactional = on_transactional
        #: 1 while a row is being sent.
        self._sending = 0
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=max_queued)
        self._backlog: list[_Queued] = []
        self._acknowledged: list[int] = []
        self._deleting: asyncio.Future[None] | None = None
        self.ready = asyncio.Event()
        #: The results database's id, read at start with the pending rows.
        self.database_id = ""

    async def on_start(self) -> None:
        """Connect, then queue what a previous run left unpublished (and forget what it published already)."""
        await self.producer.start()
        self._on_transactional(self.producer.transactional)
        self.database_id, rows = await self._pending()
        if self.producer.transactional:
            await self.producer.take_over({row.worker_id for row in rows})
        # Reading the markers waits for every open transaction on their topic to end, another worker's too: one
        # killed while publishing holds its transaction open until the broker's timeout. Without rows of its own
        # to check (a new worker, or all published), a worker has nothing to learn there and must not wait.
        published = await self.producer.published_rows(self.database_id) if rows else {}
        for row in rows:
            if row.id <= published.get(row.worker_id, -1):
                self._acknowledged.append(row.id)
            else:
                self._backlog.append(
                    _Queued(OutboxRef(self.database_id, row.worker_id, row.id), OutboxPayload(row.payload))
                )
        if self._acknowledged:
            log.info("%d outbox rows were published before a restart: deleting them", len(self._acknowledged))
            self._deleting = asyncio.ensure_future(self._delete_acknowledged())
        self.ready.set()

    async def on_stop(self) -> None:
        """Disconnect (what is not acknowledged stays in the outbox for the next run)."""
        await self.producer.stop()

    async def put(self, row_id: int, outputs: OutboxPayload) -> None:
        """Queue this worker's committed batch's outputs; waits while ``max_queued`` batches are unpublished."""
        await self._queue.put(_Queued(OutboxRef(self.database_id, self.worker_id, row_id), outputs))
        self._on_waiting(self.waiting)

    @property
    def waiting(self) -> int:
        """Outbox rows committed and not yet acknowledged by the broker (queued, or being sent)."""
        return len(self._backlog) + self._queue.qsize() + self._sending

    @Service.task
    async def _publish(self) -> None:
        await self.ready.wait()
        self._on_waiting(self.waiting)
        while not self.should_stop:
            row = self._backlog.pop(0) if self._backlog else await self._queue.get()
            self._sending = 1
            sent = await self._send_until_acknowledged(row)
            self._sending = 0
            self._on_waiting(self.waiting)
            self._on_sent(sent)
            self._acknowledged.append(row.ref.row_id)
            if self._deleting is None or self._deleting.done():
                self._deleting = asyncio.ensure_future(self._delete_acknowledged())

    async def _send_until_acknowledged(self, row: _Queued) -> Counter[str]:
        """Send one row's records until the broker acknowledges all of them, logging every failed attempt."""
        started, delay, attempt = time.monotonic(), 0.2, 0
        while True:
            attempt += 1
            try:
                return await asyncio.wait_for(
                    self.producer.publish(row.ref, row.outputs.records()), self._attempt_timeout_s
                )
            except ProducerFenced:
                log.critical(
                    "fenced: another worker took over the outbox rows of worker %s (thinking it gone), or another "
                    "process runs with this CXSTREAM_WORKER_ID; stopping (a restarted worker publishes the rest)",
                    row.ref.worker_id,
                )
                raise
            except Exception as exc:  # the broker is away, refused, or did not answer: keep the row, try again
                what = "no answer" if isinstance(exc, TimeoutError) else f"{exc.__class__.__name__}: {exc}"
                log.warning(
                    "outbox row %d not published after %.0fs (attempt %d: %s); retrying in %.1fs",
                    row.ref.row_id,
                    time.monotonic() - started,
                    attempt,
                    what,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                if self.producer.transactional and await self._published_meanwhile(row):
                    return Counter()

    async def _published_meanwhile(self, row: _Queued) -> bool:
        """After a failed transactional attempt: whether its transaction committed after all.

        An attempt that timed out, or lost its connection, while committing may still have committed at the broker;
        sending the row again would publish it twice. A new producer with the same transactional id settles the
        previous transaction (the broker completes or aborts it before granting the new one), after which the
        markers say whether the row is published. Failing that (the broker still away), the row is tried again
        on the next round.
        """
        try:
            await asyncio.wait_for(self.producer.restart(row.ref.worker_id), self._attempt_timeout_s)
            published = await asyncio.wait_for(
                self.producer.published_rows(row.ref.database_id), self._attempt_timeout_s
            )
        except ProducerFenced:
            raise
        except Exception as exc:
            log.warning("cannot settle outbox row %d's transaction yet (%s)", row.ref.row_id, exc)
            return False
        if row.ref.row_id <= published.get(row.ref.worker_id, -1):
            log.info("outbox row %d was committed by the attempt that seemed to fail", row.ref.row_id)
            return True
        return False

    async def _delete_acknowledged(self) -> None:
        # Off the publishing path (the delete waits for the apply process, busy with the next batch), and
        # coalesced: one small delete covers every row acknowledged meanwhile.
        while self._acknowledged:
            done, self._acknowledged = self._acknowledged, []
            try:
                await self._delete(done)
            except Exception:
                log.exception("cannot delete published outbox rows; they will be published again after a restart")


class _Queued(NamedTuple):
    """An outbox row waiting to be published, and its records."""

    ref: OutboxRef
    outputs: OutboxPayload
