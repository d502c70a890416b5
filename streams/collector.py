"""The HTTP collector: Segment's HTTP Tracking API (``POST /v1/track|page|screen|identify|group|alias|batch`` and
the short forms analytics.js uses) and marketplace webhooks.

Served by the worker's web server (``streams.http`` authenticates, reads and decompresses the request first).
A request is answered 2xx only after the broker acknowledged every event it carried; invalid messages are
dead-lettered and answered 400 with a JSON body saying which and why; a broker that does not acknowledge
within ``CXSTREAM_COLLECTOR_SEND_TIMEOUT_S`` gets the request answered 503 with ``Retry-After``.

Every request costs time and memory linear in its body, whatever it holds. Measured before this bound: one
500 KB ``/v1/batch`` of 250,000 invalid items took the worker from 130 MB to 2.65 GB and did not answer in 60 s,
because every rejected item was its own dead-letter send and all of them were awaited together (aiokafka wakes
every waiting send each time a record batch drains: 1,000 items 0.07 s, 8,000 items 3.6 s). Now a batch holds
at most ``CXSTREAM_COLLECTOR_MAX_BATCH_ITEMS`` messages (Segment's own limits: 500 KB a batch, 32 KB a message),
one beyond is refused whole in one dead letter, and records are handed to the producer one after the other, their
acknowledgements awaited together once all are queued.

Dead letters keep what the client sent, as the file adapters do: a batch item's own bytes, sliced from the body
(``batch_items``), with its 1-based position in the batch as ``line``; a single call's body as sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from config.settings import Settings
from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.touchpoint import Channel, TouchpointEvent
from streams.adapters import partition_key
from streams.adapters.reader import MAX_DETAIL_CHARS, TOO_LONG_KEPT_BYTES, Accepted, Rejected, convert_one
from streams.auth import basic_user
from streams.kafka import partition_for
from streams.observability import Instruments
from streams.policies import identifier_hashing

log = logging.getLogger(__name__)

#: Queues (topic, key, value, partition) with the producer; resolves, once queued, to an awaitable of the
#: broker's acknowledgement. Queuing and acknowledging are apart so that a request's records are queued one
#: after the other and only their acknowledgements are awaited together.
EnqueueFn = Callable[[str, bytes | None, bytes, int | None], Awaitable[Awaitable[Any]]]

#: Segment calls a single-call path stands for (the body's ``type`` defaults to it).
SEGMENT_KINDS = ("track", "page", "screen", "identify", "group", "alias")

#: Segment's HTTP Tracking API paths under /v1/, as its libraries call them, and what each is: the long forms
#: (server libraries, analytics-node) and the short ones analytics.js posts to (/v1/t, /v1/p, ... /v1/b).
SEGMENT_PATHS: dict[str, str] = {
    **{kind: kind for kind in (*SEGMENT_KINDS, "batch")},
    **{kind[0]: kind for kind in SEGMENT_KINDS},
    "b": "batch",
    "import": "batch",
}

#: Bytes of a whole request body a dead letter keeps: bodies up to this travel whole (base64 keeps a dead letter
#: of 512 KiB under Kafka's default 1 MB record limit); a larger body (a raised CXSTREAM_COLLECTOR_MAX_BODY_BYTES)
#: keeps its first TOO_LONG_KEPT_BYTES, and the detail says so, as for an over-long line of a file.
WHOLE_BODY_KEPT_BYTES = 512 * 1024

#: Records are queued in runs of this many between yields to the event loop, so that one large request does not
#: hold the worker's loop (its consumer, its other requests) for the whole of it.
YIELD_EVERY = 200

#: Bodies' worth of records the collector lets wait for the broker at once. Beyond that (a broker down while
#: clients keep sending) requests are answered 503 at once instead of queuing more in the producer's memory.
MAX_UNACKNOWLEDGED_BODIES = 64

Record = tuple[str, bytes | None, bytes, int | None]


@dataclass
class CollectorReply:
    """HTTP status and JSON body of a collector answer."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class Collector:
    """Validates collector requests and publishes their events; framework-free so tests call it directly."""

    def __init__(self, settings: Settings, enqueue: EnqueueFn, instruments: Instruments) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.enqueue = enqueue
        self.instruments = instruments
        self.write_keys = frozenset(settings.write_keys)
        #: Bytes queued with the producer and not acknowledged yet, for MAX_UNACKNOWLEDGED_BODIES.
        self.unacknowledged = 0
        self.max_unacknowledged = MAX_UNACKNOWLEDGED_BODIES * settings.collector_max_body_bytes
        # The same conversion as `cxstream publish`: with hashing on, no raw e-mail or phone number is published.
        self.hashing = identifier_hashing(settings)

    def authorised(self, authorization: str | None) -> bool:
        """True when the Authorization header carries a known write key as HTTP Basic user name."""
        return basic_user(authorization) in self.write_keys

    def authorised_body(self, body: bytes) -> bool:
        """True when a JSON body names a known write key as ``writeKey`` (what analytics.js sends from a browser)."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        key = payload.get("writeKey") if isinstance(payload, dict) else None
        return isinstance(key, str) and key in self.write_keys

    async def handle(self, path_kind: str, body: bytes, marketplace: str | None = None) -> CollectorReply:
        """Answer one authenticated request: ``path_kind`` is track, page, identify, batch or ecommerce.

        ``body`` is the request body as the client sent it, decompressed, within the body limit.
        """
        channel = Channel.ECOMMERCE if path_kind == "ecommerce" else Channel.WEB
        source = f"collector:/v1/{path_kind}"
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            reason = "invalid_utf8" if _not_utf8(body) else "invalid_json"
            return await self.reject_body(channel, source, body, reason, f"invalid JSON: {exc}")
        now = datetime.now(UTC)
        if path_kind == "batch":
            batch = payload.get("batch") if isinstance(payload, dict) else None
            if not isinstance(batch, list):
                detail = "expected a JSON object with a list of messages: {'batch': [...]}"
                return await self.reject_body(channel, source, body, "invalid_batch", detail)
            cap = self.settings.collector_max_batch_items
            if len(batch) > cap:
                detail = (
                    f"a batch holds at most {cap} messages; this one holds {len(batch)}: send it in smaller batches"
                )
                return await self.reject_body(channel, source, body, "too_many_items", detail)
            results = await self._convert_batch(channel, source, body, batch, now)
        else:
            if not isinstance(payload, dict):
                detail = "expected a JSON object"
                return await self.reject_body(channel, source, body, "not_an_object", detail)
            if len(body) > self.settings.collector_max_message_bytes:
                results = [self._too_large(channel, source, body, None, now)]
            else:
                results = [self._convert_call(channel, source, path_kind, body, payload, marketplace, now)]
        rejected = [r for r in results if isinstance(r, Rejected)]
        events = [r.event for r in results if not isinstance(r, Rejected)]
        unavailable = await self._send_all([*self._event_records(channel, events), *self._dead_records(rejected)])
        if unavailable:
            return unavailable
        self.instruments.events_published.labels(channel.value).inc(len(events))
        if rejected:
            # ``index`` is the message's place in the request's array (0-based); its dead letter's ``line`` is index + 1.
            errors = [
                {"index": (r.line or 1) - 1, "reason": r.reason, "detail": r.dead_letter.detail} for r in rejected
            ]
            return CollectorReply(400, {"success": False, "accepted": len(events), "errors": errors})
        return CollectorReply(200, {"success": True, "accepted": len(events)})

    async def reject_body(self, channel: Channel, source: str, body: bytes, reason: str, detail: str) -> CollectorReply:
        """Dead-letter a whole request body (one record) and answer 400 with ``detail``."""
        kept = body if len(body) <= WHOLE_BODY_KEPT_BYTES else body[:TOO_LONG_KEPT_BYTES]
        note = (
            f"; the dead letter keeps the first {len(kept)} of its {len(body)} bytes" if len(kept) < len(body) else ""
        )
        dead = DeadLetter(
            channel=channel.value,
            reason=reason,
            detail=(detail + note)[:MAX_DETAIL_CHARS],
            source_file=source,
            stage="collector",
            rejected_at=datetime.now(UTC),
            original_b64=DeadLetter.encode(kept),
        )
        unavailable = await self._send_all(self._dead_records([Rejected(None, dead, body)]))
        return unavailable or CollectorReply(400, {"error": detail})

    # --- messages ----------------------------------------------------------------------------------

    async def _convert_batch(
        self, channel: Channel, source: str, body: bytes, batch: list[Any], now: datetime
    ) -> list[Accepted | Rejected]:
        """Each item of a batch from its own bytes, as a line of a file: ``line`` is its 1-based position."""
        items = batch_items(body)
        note = ""
        if items is None or len(items) != len(batch):
            # Not expected (orjson accepted the body, and the scanner reads the same JSON): re-encode, and say so.
            log.warning("could not slice the items of a batch from its body; dead letters hold them re-encoded")
            items = [_reencoded(item) for item in batch]
            note = "; the original bytes could not be sliced from the batch: this is the item re-encoded"
        results: list[Accepted | Rejected] = []
        for position, raw in enumerate(items, start=1):
            if len(raw) > self.settings.collector_max_message_bytes:
                results.append(self._too_large(channel, source, raw, position, now))
            else:
                result = convert_one(
                    channel,
                    raw,
                    received_at=now,
                    source_file=source,
                    line=position,
                    default_region=self.settings.default_phone_region,
                    hashing=self.hashing,
                )
                results.append(_collector_stage(result, note))
            if position % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return results

    def _convert_call(
        self,
        channel: Channel,
        source: str,
        kind: str,
        body: bytes,
        payload: dict[str, Any],
        marketplace: str | None,
        now: datetime,
    ) -> Accepted | Rejected:
        """A single call: the path says what the body omits (the Segment type, the marketplace)."""
        if kind in SEGMENT_KINDS:
            payload.setdefault("type", kind)
        elif kind == "ecommerce" and marketplace:
            payload["marketplace"] = marketplace
        result = convert_one(
            channel,
            payload,
            received_at=now,
            source_file=source,
            default_region=self.settings.default_phone_region,
            hashing=self.hashing,
        )
        if isinstance(result, Rejected):
            # The dead letter keeps the body as sent, not the object completed from the path.
            dead = result.dead_letter.model_copy(update={"original_b64": DeadLetter.encode(body)})
            return Rejected(None, dead.model_copy(update={"stage": "collector"}), body)
        return result

    def _too_large(self, channel: Channel, source: str, raw: bytes, position: int | None, now: datetime) -> Rejected:
        limit = self.settings.collector_max_message_bytes
        kept = raw[:TOO_LONG_KEPT_BYTES]
        note = f"; the dead letter keeps its first {len(kept)} bytes" if len(kept) < len(raw) else ""
        dead = DeadLetter(
            channel=channel.value,
            reason="message_too_large",
            detail=f"message is {len(raw)} bytes, over the limit of {limit}{note}",
            source_file=source,
            line=position,
            stage="collector",
            rejected_at=now,
            original_b64=DeadLetter.encode(kept),
        )
        return Rejected(position, dead, raw)

    # --- sending -----------------------------------------------------------------------------------

    def _event_records(self, channel: Channel, events: list[TouchpointEvent]) -> list[Record]:
        """One event per record for single calls; envelopes per destination partition for batches."""
        topic = self.topics.channel(channel)
        if len(events) == 1:
            event = events[0]
            return [(topic, partition_key(event), event.model_dump_json().encode(), None)]
        by_partition: dict[int, list[bytes]] = defaultdict(list)
        for event in events:
            part = partition_for(partition_key(event), self.settings.partitions)
            by_partition[part].append(event.model_dump_json().encode())
        return [(topic, None, b"[" + b",".join(vals) + b"]", part) for part, vals in by_partition.items()]

    def _dead_records(self, rejected: list[Rejected]) -> list[Record]:
        """The dead letters' records, keeping of each original what CXSTREAM_DEAD_LETTER_ORIGINALS says."""
        topic, originals, salt = (
            self.topics.deadletter,
            self.settings.dead_letter_originals,
            self.settings.identifier_salt,
        )
        return [
            (
                topic,
                (r.dead_letter.channel or "").encode(),
                r.dead_letter.kept(originals, salt).model_dump_json().encode(),
                None,
            )
            for r in rejected
        ]

    async def _send_all(self, records: list[Record]) -> CollectorReply | None:
        """Queue ``records`` one after the other, then await their acknowledgements together.

        Returns None once the broker acknowledged them all, or the 503 to answer when it did not within
        ``collector_send_timeout_s`` (or when too much already waits for it). A 503'd request may have been
        published in part: the client sends it again, and event ids make the repeats duplicates.
        """
        if not records:
            return None
        size = sum(len(value) for _, _, value, _ in records)
        if self.unacknowledged + size > self.max_unacknowledged:
            return self._unavailable(f"{self.unacknowledged} bytes are still waiting for the broker")
        timeout = self.settings.collector_send_timeout_s
        self.unacknowledged += size
        acks: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(timeout):
                for n, (topic, key, value, partition) in enumerate(records, start=1):
                    acks.append(asyncio.ensure_future(await self.enqueue(topic, key, value, partition)))
                    if n % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                # asyncio.wait, not gather: a time-out must not cancel the producer's own futures.
                await asyncio.wait(acks)
        except TimeoutError:
            pass
        finally:
            self._release(acks, size)
        failed = [ack.exception() for ack in acks if ack.done() and not ack.cancelled() and ack.exception()]
        if failed:
            log.warning("the broker refused a collector record: %s", failed[0])
            return self._unavailable(f"the broker refused a record: {failed[0]}")
        if len(acks) < len(records) or not all(ack.done() for ack in acks):
            return self._unavailable(f"the broker did not acknowledge within {timeout:g} s")
        return None

    def _release(self, acks: list[asyncio.Future[Any]], size: int) -> None:
        """Count the request's bytes as waiting until its last queued record is settled, however that ends."""
        pending = [ack for ack in acks if not ack.done()]
        if not pending:
            self.unacknowledged -= size
            return
        left = len(pending)

        def settled(ack: asyncio.Future[Any]) -> None:
            nonlocal left
            if not ack.cancelled() and ack.exception() is not None:
                log.debug("a collector record answered 503 was not delivered: %s", ack.exception())
            left -= 1
            if left == 0:
                self.unacknowledged -= size

        for ack in pending:
            ack.add_done_callback(settled)

    def _unavailable(self, why: str) -> CollectorReply:
        retry_after = max(1, math.ceil(self.settings.collector_send_timeout_s))
        return CollectorReply(
            503,
            {"success": False, "error": f"the event broker is unavailable ({why}); send the request again later"},
            {"Retry-After": str(retry_after)},
        )


# --- batch items ---------------------------------------------------------------------------------

_SCAN = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set in __init__, not in the stubs
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def batch_items(body: bytes) -> list[bytes] | None:
    """The bytes of each item of a batch body's ``batch`` array, exactly as sent; None if it is not one.

    The body must already have been accepted as JSON (orjson). The standard library's scanner reads it value by
    value and gives each value's end, so an item's bytes are sliced from the body instead of re-encoded (key order,
    spacing, escapes and number spelling stay the client's). As orjson, the last ``batch`` key wins.
    """
    try:
        text = body.decode("utf-8")
        pos = _skip(text, 0)
        if text[pos] != "{":
            return None
        spans: list[tuple[int, int]] | None = None
        pos = _skip(text, pos + 1)
        if text[pos] == "}":
            return None
        while True:
            key, pos = _SCAN(text, pos)
            pos = _skip(text, pos)
            if text[pos] != ":":
                return None
            pos = _skip(text, pos + 1)
            if key == "batch" and text[pos] == "[":
                spans, pos = _array_spans(text, pos)
            else:
                _, pos = _SCAN(text, pos)
            pos = _skip(text, pos)
            if text[pos] == ",":
                pos = _skip(text, pos + 1)
                continue
            if text[pos] != "}":
                return None
            break
    except (ValueError, IndexError, StopIteration):
        return None
    if spans is None:
        return None
    # Slicing the decoded text and encoding it again gives back the very bytes: UTF-8 round-trips exactly.
    return [text[start:end].encode("utf-8") for start, end in spans]


def _array_spans(text: str, pos: int) -> tuple[list[tuple[int, int]], int]:
    """Start and end of each element of the array opening at ``pos``, and the position after it."""
    spans: list[tuple[int, int]] = []
    pos = _skip(text, pos + 1)
    if text[pos] == "]":
        return spans, pos + 1
    while True:
        _, end = _SCAN(text, pos)
        spans.append((pos, end))
        pos = _skip(text, end)
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
            continue
        if text[pos] != "]":
            raise ValueError("unterminated array")
        return spans, pos + 1


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def _reencoded(item: Any) -> bytes:
    try:
        return orjson.dumps(item)
    except (TypeError, orjson.JSONEncodeError):
        return repr(item).encode("utf-8", "backslashreplace")


def _not_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _collector_stage(result: Accepted | Rejected, note: str = "") -> Accepted | Rejected:
    """A reader's result as the collector's: its dead letter is of stage ``collector`` (``note`` added to its detail)."""
    if isinstance(result, Rejected):
        dead = result.dead_letter
        update = {"stage": "collector", "detail": (dead.detail + note)[:MAX_DETAIL_CHARS]}
        return Rejected(result.line, dead.model_copy(update=update), result.raw)
    return result
