"""The HTTP collector: Segment-compatible ``POST /v1/track|page|identify|batch`` and marketplace webhooks.

Served by the worker's web server. Authenticated like Segment's HTTP API: the write key is the HTTP Basic
user name. A request is answered 2xx only after the broker acknowledged every event it carried; invalid
messages are dead-lettered and answered 400 with a JSON body saying which and why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
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
from streams.adapters.reader import Rejected, convert_one
from streams.domain.identifiers import IdentifierHashing
from streams.kafka import partition_for
from streams.observability import Metrics

#: Sends (topic, key, value, partition) and resolves when the broker acknowledged it.
SendFn = Callable[[str, bytes | None, bytes, int | None], Awaitable[Any]]

SEGMENT_KINDS = ("track", "page", "identify")


@dataclass
class CollectorReply:
    """HTTP status and JSON body of a collector answer."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class Collector:
    """Validates collector requests and publishes their events; framework-free so tests call it directly."""

    def __init__(self, settings: Settings, send: SendFn, metrics: Metrics) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.send = send
        self.metrics = metrics
        self.write_keys = frozenset(settings.write_keys)
        # The same conversion as `cxstream publish`: with hashing on, no raw e-mail or phone number is published.
        self.hashing = IdentifierHashing.from_settings(settings)

    def authorised(self, authorization: str | None) -> bool:
        """True when the Authorization header carries a known write key as HTTP Basic user name."""
        if not authorization or not authorization.startswith("Basic "):
            return False
        try:
            user = base64.b64decode(authorization[6:], validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user in self.write_keys

    async def handle(
        self, path_kind: str, body: bytes, authorization: str | None, marketplace: str | None = None
    ) -> CollectorReply:
        """Answer one request: ``path_kind`` is track, page, identify, batch or ecommerce."""
        if not self.authorised(authorization):
            return CollectorReply(
                401, {"error": "invalid or missing write key"}, {"WWW-Authenticate": 'Basic realm="cxstream"'}
            )
        if len(body) > self.settings.collector_max_body_bytes:
            return CollectorReply(413, {"error": f"body larger than {self.settings.collector_max_body_bytes} bytes"})
        channel = Channel.ECOMMERCE if path_kind == "ecommerce" else Channel.WEB
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            dead = convert_one(channel, body, source_file=f"collector:/v1/{path_kind}")
            await self._dead_letters([dead] if isinstance(dead, Rejected) else [])
            return CollectorReply(400, {"error": f"invalid JSON: {exc}"})
        messages = self._messages(path_kind, payload, marketplace)
        if messages is None:
            detail = "expected a JSON object (or {'batch': [...]} for /v1/batch)"
            # Valid JSON of the wrong shape is bad input like any other: dead-lettered with its bytes, not dropped.
            dead = DeadLetter(
                channel=channel.value,
                reason="invalid_batch" if path_kind == "batch" else "not_an_object",
                detail=detail,
                source_file=f"collector:/v1/{path_kind}",
                rejected_at=datetime.now(UTC),
                original_b64=DeadLetter.encode(body),
            )
            await self._dead_letters([Rejected(None, dead, body)])
            return CollectorReply(400, {"error": detail})
        now = datetime.now(UTC)
        results = [
            convert_one(
                channel,
                msg if isinstance(msg, dict) else orjson.dumps(msg),
                received_at=now,
                source_file=f"collector:/v1/{path_kind}",
                line=i,
                default_region=self.settings.default_phone_region,
                hashing=self.hashing,
            )
            for i, msg in enumerate(messages)
        ]
        rejected = [r for r in results if isinstance(r, Rejected)]
        events = [r.event for r in results if not isinstance(r, Rejected)]
        await asyncio.gather(self._publish(channel, events), self._dead_letters(rejected))
        if rejected:
            errors = [{"index": r.line, "reason": r.reason, "detail": r.dead_letter.detail} for r in rejected]
            return CollectorReply(400, {"success": False, "accepted": len(events), "errors": errors})
        return CollectorReply(200, {"success": True, "accepted": len(events)})

    @staticmethod
    def _messages(kind: str, payload: Any, marketplace: str | None) -> list[Any] | None:
        if kind == "batch":
            batch = payload.get("batch") if isinstance(payload, dict) else None
            return batch if isinstance(batch, list) else None
        if not isinstance(payload, dict):
            return None
        if kind in SEGMENT_KINDS:
            payload.setdefault("type", kind)
        elif kind == "ecommerce" and marketplace:
            payload["marketplace"] = marketplace
        return [payload]

    async def _publish(self, channel: Channel, events: list[TouchpointEvent]) -> None:
        """One event per record for single calls; envelopes per destination partition for batches."""
        topic = self.topics.channel(channel)
        if len(events) == 1:
            event = events[0]
            await self.send(topic, partition_key(event), event.model_dump_json().encode(), None)
        elif events:
            by_partition: dict[int, list[bytes]] = defaultdict(list)
            for event in events:
                part = partition_for(partition_key(event), self.settings.partitions)
                by_partition[part].append(event.model_dump_json().encode())
            await asyncio.gather(
                *(self.send(topic, None, b"[" + b",".join(vals) + b"]", part) for part, vals in by_partition.items())
            )
        self.metrics.events_published.labels(channel.value).inc(len(events))

    def _as_collector(self, rejected: Rejected) -> bytes:
        dead = rejected.dead_letter.kept(self.settings.dead_letter_originals, self.settings.identifier_salt)
        return dead.model_copy(update={"stage": "collector"}).model_dump_json().encode()

    async def _dead_letters(self, rejected: list[Rejected]) -> None:
        await asyncio.gather(
            *(
                self.send(self.topics.deadletter, (r.dead_letter.channel or "").encode(), self._as_collector(r), None)
                for r in rejected
            )
        )
