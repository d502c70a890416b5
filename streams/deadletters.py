"""The dead-letter topic for operators (``cxstream deadletters``): count, list, show and replay what was rejected.

The topic is read with a plain consumer outside any consumer group: every partition assigned and read from its
beginning up to the end offsets found when reading starts, so a look neither moves a group's offsets nor waits
for records still to come. Reading is bounded by a number of dead letters and a timeout, never by the topic.

Replaying publishes a dead letter's original bytes again, for records refused for a reason since put right (a
setting, a bug): a worker's dead letter goes back to the channel topic it was read from (or meant for), as it
was; an adapter's holds a source line, which goes through the channel's adapter again with today's settings,
as ``cxstream publish`` would send it. What cannot be replayed from the dead letter alone (its original bytes
not kept, or cut, a CSV row without its header, a collector request) stops the replay before anything is sent.
"""

from __future__ import annotations

import binascii
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from config.settings import Settings
from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.touchpoint import Channel, TouchpointEvent
from streams.adapters import partition_key
from streams.adapters.reader import Accepted, convert_one
from streams.inspection import Spool, plural, printable, table, when
from streams.kafka import BrokerUnreachable, ensure_topics, wait_for_broker
from streams.policies import identifier_hashing
from streams.publisher import Publisher, PublishSummary, encode_event

#: Most dead letters one command reads unless told otherwise.
DEFAULT_LIMIT = 10_000
#: Seconds one command reads the topic for at most unless told otherwise.
DEFAULT_TIMEOUT_S = 30.0
#: Characters of a dead letter's detail shown on its line of a list.
SHORT_DETAIL = 80

_CHANNELS = frozenset(channel.value for channel in Channel)
#: A worker's record_too_large detail starts with the record's full length.
_FULL_LENGTH = re.compile(r"^(\d+) bytes")


class NothingToRead(Exception):
    """The dead-letter topic does not exist, or holds no dead letter at the position asked for (one line)."""


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter and where it sits on the dead-letter topic."""

    partition: int
    offset: int
    dead: DeadLetter

    @property
    def position(self) -> str:
        """``partition:offset``, as ``--show`` takes it."""
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command is about: equality on each field given (None: any)."""

    reason: str | None = None
    channel: str | None = None
    stage: str | None = None

    def matches(self, dead: DeadLetter) -> bool:
        """True when ``dead`` has every field this selection names."""
        return (
            (self.reason is None or dead.reason == self.reason)
            and (self.channel is None or dead.channel == self.channel)
            and (self.stage is None or dead.stage == self.stage)
        )


@dataclass
class Scan:
    """What one read of the topic saw: records read, those that are no dead letter, matches, and whether (and why)
    it stopped before the end offsets."""

    topic: str
    partitions: int = 0
    read: int = 0
    unreadable: int = 0
    matched: int = 0
    #: What stopped reading before the end offsets (``--limit N``, ``--timeout S s``), None when it reached them.
    stopped: str | None = None
    timed_out: bool = False

    def notes(self) -> list[str]:
        """One line each about what a reader of the results should know (records skipped, reading cut short)."""
        lines = []
        if self.unreadable:
            lines.append(f"{self.unreadable} records on {self.topic} are not dead letters (another producer?): skipped")
        if self.stopped:
            lines.append(f"stopped at {self.stopped} before the end of {self.topic}: more dead letters may follow")
        return lines


def parse_position(text: str) -> tuple[int, int]:
    """``PARTITION:OFFSET`` as two numbers; ValueError with what is expected otherwise."""
    partition, sep, offset = text.partition(":")
    # ASCII digits only ("²".isdigit() holds, int("²") fails), and an offset Kafka can hold (an int64: a larger
    # one fails deep in the consumer's fetch request instead of here).
    if not sep or not all(part.isascii() and part.isdigit() for part in (partition, offset)) or int(offset) >= 2**63:
        raise ValueError(f"expected PARTITION:OFFSET (such as 0:12), got {text!r}")
    return int(partition), int(offset)


# --- reading -------------------------------------------------------------------------------------------------------


def _consumer(settings: Settings) -> KafkaConsumer:
    """A consumer in no group, reading what committed transactions wrote (the worker's dead letters with output
    transactions on), that never creates the topic it looks for."""
    wait_for_broker(settings)
    try:
        return KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id="cxstream-deadletters",
            group_id=None,
            enable_auto_commit=False,
            allow_auto_create_topics=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=100,
            request_timeout_ms=15_000,
        )
    except KafkaError as exc:
        raise BrokerUnreachable(f"no Kafka broker answered at {settings.kafka_url}: {exc}") from exc


def _partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        raise NothingToRead(
            f"no topic {topic} on the broker: nothing was dead-lettered there yet (CXSTREAM_TOPIC_PREFIX?)"
        )
    return [TopicPartition(topic, partition) for partition in sorted(found)]


def _parse(value: bytes | None) -> DeadLetter | None:
    """The dead letter a record holds, or None when it holds none (not one's JSON, or an original that is not
    base64: another producer's record, which --show and --replay would otherwise fail on)."""
    if not value:
        return None
    try:
        dead = DeadLetter.model_validate_json(value)
        dead.original()
    except (ValidationError, binascii.Error):
        return None
    return dead


def scan(
    settings: Settings, selection: Selection, visit: Callable[[Letter], None], *, limit: int, timeout_s: float
) -> Scan:
    """Read the dead-letter topic from its beginning to its end offsets, giving ``visit`` every dead letter that
    ``selection`` matches, in the order read; stop after ``limit`` of them or ``timeout_s`` seconds.

    Raises BrokerUnreachable, or NothingToRead when the topic does not exist.
    """
    topic = Topics(settings.topic_prefix).deadletter
    deadline = time.monotonic() + timeout_s
    consumer = _consumer(settings)
    try:
        tps = _partitions(consumer, topic)
        result = Scan(topic, partitions=len(tps))
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        # Reading stops at the ends found now, so a topic written to meanwhile cannot keep it going. (A broker may
        # report an end short of its last batch, as the embedded one does; that batch still comes whole.)
        reading = [tp for tp in tps if consumer.position(tp) < ends[tp]]
        while reading:
            if time.monotonic() >= deadline:
                result.stopped, result.timed_out = f"--timeout {timeout_s:g} s", True
                break
            for tp, records in consumer.poll(timeout_ms=200).items():
                for record in records:
                    result.read += 1
                    dead = _parse(record.value)
                    if dead is None:
                        result.unreadable += 1
                    elif selection.matches(dead):
                        visit(Letter(tp.partition, record.offset, dead))
                        result.matched += 1
                        if result.matched >= limit:
                            result.stopped = f"--limit {limit}"
                            return result
            done = [tp for tp in reading if consumer.position(tp) >= ends[tp]]
            if done:
                consumer.pause(*done)
                reading = [tp for tp in reading if tp not in done]
        return result
    finally:
        consumer.close()


def find(settings: Settings, partition: int, offset: int, *, timeout_s: float) -> Letter:
    """The dead letter at ``partition:offset``; NothingToRead when there is none (or it is not a dead letter)."""
    topic = Topics(settings.topic_prefix).deadletter
    where = f"{partition}:{offset}"
    deadline = time.monotonic() + timeout_s
    consumer = _consumer(settings)
    try:
        tps = _partitions(consumer, topic)
        if partition >= len(tps):
            raise NothingToRead(f"no dead letter at {where}: {topic} has partitions 0 to {len(tps) - 1}")
        tp = tps[partition]
        consumer.assign([tp])
        start, end = consumer.beginning_offsets([tp])[tp], consumer.end_offsets([tp])[tp]
        if offset < start:
            raise NothingToRead(f"no dead letter at {where}: partition {partition} starts at offset {start}")
        consumer.seek(tp, offset)
        empty = 0
        while time.monotonic() < deadline:
            records = consumer.poll(timeout_ms=300).get(tp, [])
            for record in records:
                if record.offset == offset:
                    dead = _parse(record.value)
                    if dead is None:
                        raise NothingToRead(f"the record at {where} of {topic} is not a dead letter")
                    return Letter(partition, offset, dead)
                if record.offset > offset:
                    break  # no record at that offset (a transaction marker, or removed by compaction)
            if records:
                raise NothingToRead(f"no dead letter at {where} of {topic}")
            # Past the end: nothing comes (twice, so that a fetch merely in flight is not taken for the end).
            empty += 1
            if empty >= 2 and consumer.position(tp) >= end:
                raise NothingToRead(f"no dead letter at {where}: past the end of partition {partition}")
        raise NothingToRead(f"no dead letter at {where} read within --timeout {timeout_s:g} s")
    finally:
        consumer.close()


# --- what a dead letter holds ----------------------------------------------------------------------------------------


def original_state(dead: DeadLetter) -> str:
    """What the dead letter holds of its record: ``kept``, ``truncated`` (its first bytes only), ``hashed`` or
    ``dropped`` (``CXSTREAM_DEAD_LETTER_ORIGINALS``)."""
    if dead.original_digest is not None:
        return "hashed"
    if not dead.original_b64:
        # An empty record's original is empty whatever the setting: nothing was lost.
        return "kept" if dead.reason == "empty_record" else "dropped"
    return "truncated" if _truncated(dead) else "kept"


def _truncated(dead: DeadLetter) -> bool:
    if "the dead letter keeps" in dead.detail:  # adapters and the collector say so when they cut a line or a body
        return True
    if dead.reason == "record_too_large":  # the worker keeps the first 64 KiB and names the full length first
        full = _FULL_LENGTH.match(dead.detail)
        return full is None or len(dead.original()) < int(full.group(1))
    return False


def original_text(raw: bytes) -> str | None:
    """The original as text when it is UTF-8, else None."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _source(dead: DeadLetter) -> str:
    """Where the rejected record came from: its topic and offset, its file and line, or the collector's call."""
    if dead.topic is not None:
        return f"{dead.topic}[{dead.partition}]@{dead.offset}"
    if dead.source_file is not None:
        return dead.source_file + (f":{dead.line}" if dead.line is not None else "")
    return "-"


def letter_json(letter: Letter, *, original: bool = False) -> dict[str, Any]:
    """A dead letter as JSON output gives it: its position, its fields, and with ``original`` what it holds of
    the record (state, and the text when UTF-8)."""
    # "position" is where it sits on the dead-letter topic; its own partition and offset say where the worker read
    # the record it rejects.
    data: dict[str, Any] = {"position": letter.position, **letter.dead.model_dump(mode="json")}
    if original:
        state = original_state(letter.dead)
        data["original_state"] = state
        data["original_text"] = original_text(letter.dead.original()) if state in ("kept", "truncated") else None
    return data


def list_line(letter: Letter) -> str:
    """One line of ``--list``: position, time, reason, channel, stage and source, the start of the detail."""
    dead = letter.dead
    detail = dead.detail if len(dead.detail) <= SHORT_DETAIL else dead.detail[: SHORT_DETAIL - 1] + "…"
    fields = (letter.position, when(dead.rejected_at), dead.reason, dead.channel or "-", dead.stage, _source(dead))
    return printable("  ".join(fields) + "  " + detail)


def show_lines(letter: Letter, topic: str) -> list[str]:
    """A dead letter in full (``--show``), with its original bytes: as text when UTF-8, else base64."""
    dead = letter.dead
    lines = [
        f"dead letter {letter.position} of {topic}",
        f"reason:      {dead.reason}",
        f"channel:     {dead.channel or '-'}",
        f"stage:       {dead.stage}",
        f"rejected at: {when(dead.rejected_at)}",
        f"source:      {_source(dead)}",
        f"detail:      {dead.detail}",
    ]
    lines = [printable(line) for line in lines]
    raw = dead.original()
    state = original_state(dead)
    if state == "hashed":
        lines.append(f"original:    not kept (CXSTREAM_DEAD_LETTER_ORIGINALS=hash), digest {dead.original_digest}")
        return lines
    if state == "dropped":
        lines.append("original:    not kept (CXSTREAM_DEAD_LETTER_ORIGINALS=drop)")
        return lines
    cut = ", truncated: only its first bytes were kept" if state == "truncated" else ""
    text = original_text(raw)
    if text is None:
        lines.append(f"original:    {len(raw)} bytes{cut}, not UTF-8, base64:")
        lines.append(dead.original_b64)
    else:
        lines.append(f"original:    {len(raw)} bytes{cut}, UTF-8 text:")
        lines.append(printable(text, newlines=True))
    return lines


# --- counting ------------------------------------------------------------------------------------------------------


@dataclass
class _Group:
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None


@dataclass
class Tally:
    """Counts of dead letters by reason, channel and stage, with when each was first and last rejected."""

    groups: dict[tuple[str, str, str], _Group] = field(default_factory=dict)

    def add(self, letter: Letter) -> None:
        """Count one dead letter."""
        dead = letter.dead
        group = self.groups.setdefault((dead.reason, dead.channel or "-", dead.stage), _Group())
        group.count += 1
        at = dead.rejected_at
        group.first = at if group.first is None else min(group.first, at)
        group.last = at if group.last is None else max(group.last, at)

    def _ordered(self) -> list[tuple[tuple[str, str, str], _Group]]:
        return sorted(self.groups.items(), key=lambda item: (-item[1].count, item[0]))

    def rows(self) -> list[dict[str, Any]]:
        """The counts as JSON output gives them, most frequent first."""
        return [
            {
                "reason": reason,
                "channel": channel,
                "stage": stage,
                "count": group.count,
                "first_rejected_at": group.first,
                "last_rejected_at": group.last,
            }
            for (reason, channel, stage), group in self._ordered()
        ]

    def lines(self) -> list[str]:
        """The counts as a table, most frequent first, and the total."""
        body = [
            [reason, channel, stage, str(group.count), when(group.first), when(group.last)]
            for (reason, channel, stage), group in self._ordered()
        ]
        total = sum(group.count for group in self.groups.values())
        headers = ["reason", "channel", "stage", "count", "first rejected", "last rejected"]
        return [printable(line) for line in table(headers, body, right=frozenset({3}))] + [plural(total, "dead letter")]


# --- replaying -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Republish:
    """One record a replay sends: where, with which key or partition, and which dead letter it comes from. Its
    value stays in the plan's spool (``ReplayPlan.value``)."""

    #: The dead letter's ``rejected_at``, partition and offset: records are sent in this order.
    order: tuple[datetime, int, int]
    #: The dead letter's position and reason, for the preview.
    position: str
    reason: str
    topic: str
    #: Where the value is in the plan's spool.
    place: tuple[int, int]
    key: bytes | None = None
    partition: int | None = None


class ReplayPlan:
    """What a replay would send, built a dead letter at a time (``add``); what it cannot replay (by why: any
    stops it); adapter dead letters the adapter still rejects today (by reason: left where they are).

    The values to send are kept in a temporary file, not in memory: a selection of 10,000 dead letters of up to
    ``CXSTREAM_MAX_RECORD_BYTES`` each costs their positions and keys, not their bytes. ``close`` removes it.
    """

    def __init__(self, settings: Settings) -> None:
        """An empty plan, with today's settings (the adapters' region and identifier hashing, the topics)."""
        self.records: list[Republish] = []
        self.refused: Counter[str] = Counter()
        self.still_rejected: Counter[str] = Counter()
        self._topics = Topics(settings.topic_prefix)
        self._hashing = identifier_hashing(settings)
        self._region = settings.default_phone_region
        self._spool = Spool()

    def add(self, letter: Letter) -> None:
        """Plan the replay of one dead letter (none of its bytes stays in memory)."""
        dead = letter.dead
        state = original_state(dead)
        topics = self._topics
        cause = None
        if state != "kept":
            setting = {"hashed": "hash", "dropped": "drop"}.get(state)
            cause = f"originals {state}" + (f" (CXSTREAM_DEAD_LETTER_ORIGINALS={setting})" if setting else "")
        elif dead.reason == "empty_record":
            cause = "empty records (no event to replay)"
        elif dead.stage == "collector":
            cause = "collector requests (their clients send them again)"
        elif dead.stage == "adapter" and (dead.reason == "invalid_csv" or _is_csv(dead.source_file)):
            cause = "CSV rows (without their file's header: publish the fixed file again)"
        elif dead.channel not in _CHANNELS and dead.topic is None:
            cause = "without a channel"
        elif dead.topic is not None and dead.topic not in topics.channels:
            cause = f"read from a topic that is not a channel topic of prefix {topics.prefix!r}"
        if cause is not None:
            self.refused[cause] += 1
        elif dead.stage == "adapter":
            item = convert_one(
                str(dead.channel),
                dead.original(),
                source_file=dead.source_file,
                line=dead.line,
                default_region=self._region,
                hashing=self._hashing,
            )
            if isinstance(item, Accepted):
                event = encode_event(item.event)
                self._send(letter, topics.channel(event.channel), event.value, key=event.key)
            else:
                self.still_rejected[item.reason] += 1
        else:
            self._worker_record(letter, dead.topic or topics.channel(str(dead.channel)))

    def _worker_record(self, letter: Letter, topic: str) -> None:
        """A worker's dead letter as it goes back: an event keyed as the adapters key it (so it joins its
        customer's partition), anything else to the partition it was read from."""
        raw = letter.dead.original()
        try:
            event = TouchpointEvent.model_validate_json(raw)
        except ValidationError:
            self._send(letter, topic, raw, partition=letter.dead.partition)
            return
        self._send(letter, topic, raw, key=partition_key(event))

    def _send(
        self, letter: Letter, topic: str, value: bytes, *, key: bytes | None = None, partition: int | None = None
    ) -> None:
        order = (letter.dead.rejected_at, letter.partition, letter.offset)
        place = self._spool.add(value)
        self.records.append(Republish(order, letter.position, letter.dead.reason, topic, place, key, partition))

    def ordered(self) -> list[Republish]:
        """The records to send, oldest dead letter first."""
        return sorted(self.records, key=lambda record: record.order)

    def value(self, record: Republish) -> bytes:
        """The bytes ``record`` sends."""
        return self._spool.read(record.place)

    def close(self) -> None:
        """Remove the temporary file of values."""
        self._spool.close()

    def refusal(self, total: int) -> str | None:
        """The one-line error of a plan that must not run, or None."""
        if not self.refused:
            return None
        why = "; ".join(f"{n} {cause}" for cause, n in sorted(self.refused.items()))
        return (
            f"cannot replay {sum(self.refused.values())} of the {plural(total, 'dead letter')} selected ({why}): "
            "nothing was published; select others with --reason, --channel or --stage"
        )

    def preview(self) -> list[str]:
        """One line per record a dry run would send: the dead letter's position and reason, and where it goes."""
        return [
            f"  {record.position}  {record.reason}  -> {record.topic}"
            + ("" if record.partition is None else f"[{record.partition}]")
            for record in self.ordered()
        ]

    def lines(self, *, sent: PublishSummary | None) -> list[str]:
        """What was (or, without ``sent``, would be) republished, by topic, and what the adapter still rejects."""
        verb = "would republish" if sent is None else "republished"
        by_topic = Counter(record.topic for record in self.records)
        by_reason = Counter(record.reason for record in self.records)
        count = len(self.records) if sent is None else sent.published
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(by_reason.items()))
        lines = [f"{verb} {plural(count, 'dead letter')}" + (f" ({reasons})" if reasons else "")]
        lines += [f"  to {topic}: {n}" for topic, n in sorted(by_topic.items())]
        if self.still_rejected:
            rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(self.still_rejected.items()))
            lines.append(f"the adapter still rejects {sum(self.still_rejected.values())} ({rejected}): not republished")
        if sent is not None and sent.not_sent:
            lines.append(f"NOT SENT: {sent.not_sent} records (the broker did not acknowledge them)")
            lines += [f"  error: {error}" for error in sent.errors[:3]]
        return lines


def _is_csv(source_file: str | None) -> bool:
    return source_file is not None and source_file.lower().endswith(".csv")


def replay(plan: ReplayPlan, settings: Settings) -> PublishSummary:
    """Send a plan's records and wait for the broker's acknowledgements (re-sending what fails, as publish does)."""
    if not plan.records:
        return PublishSummary()
    ensure_topics(settings, sorted({record.topic for record in plan.records}))
    publisher = Publisher(settings)
    for record in plan.ordered():
        publisher.summary.read += 1
        publisher.record(record.topic, plan.value(record), key=record.key, partition=record.partition)
    return publisher.close()
