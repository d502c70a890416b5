"""A record is accepted or rejected alike on SQLite and PostgreSQL: the adapters check the columns' limits.

SQLite stores text of any length and any character; PostgreSQL refuses what is longer than its column or holds
NUL. Records at the limits go through the adapters and the batch processor into both databases; one character
more, or a NUL, is rejected by the adapter before any database sees it.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import DataError

from config.settings import load_settings
from schemas.limits import IDENTIFIER_KEY_MAX, IDENTIFIER_VALUE_MAX, ISSUE_ID_MAX, ISSUE_KEY_MAX, SOURCE_ID_MAX
from schemas.touchpoint import Channel
from sinks import tables as t
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink
from streams.adapters.reader import Accepted, Rejected, convert_one
from streams.pipeline import BatchProcessor, InRecord

RECEIVED = datetime(2024, 6, 1, tzinfo=UTC)
AT = "2024-05-01T09:00:00Z"


def call(call_id: str, **fields: Any) -> dict[str, Any]:
    return {"call_id": call_id, "occurred_at": AT, "phone": "+44 20 7946 0321", "direction": "inbound",
            "duration_seconds": 60, **fields}  # fmt: skip


def sale(store_id: str, receipt_id: str, **fields: Any) -> dict[str, Any]:
    return {"receipt_id": receipt_id, "store_id": store_id, "occurred_at": AT, "kind": "sale", "total": "1",
            "currency": "GBP", **fields}  # fmt: skip


def order(marketplace: str, buyer_id: str) -> dict[str, Any]:
    return {"marketplace": marketplace, "order_id": "o-1", "buyer_id": buyer_id, "occurred_at": AT,
            "status": "placed", "total": "1", "currency": "GBP"}  # fmt: skip


def ticket(message_id: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": message_id, "userId": "u-1", "timestamp": AT,
            "event": "Support Ticket Created", "properties": properties}  # fmt: skip


REASON = ISSUE_KEY_MAX - len("reason:")
#: Store id and receipt number whose source id ``store_id:sale:receipt`` is exactly SOURCE_ID_MAX long.
STORE, RECEIPT = "S" * 100, "R" * (SOURCE_ID_MAX - 100 - len(":sale:"))
#: Marketplace and buyer whose identifier ``marketplace:buyer`` is exactly IDENTIFIER_VALUE_MAX long.
MARKET, BUYER = "m" * 64, "b" * (IDENTIFIER_VALUE_MAX - 65)

#: (channel, record at the limit, the same one character over it, what the dead letter names).
CASES = [
    (Channel.PHONE, call("c-1", issue_id="I" * ISSUE_ID_MAX), call("c-1", issue_id="I" * (ISSUE_ID_MAX + 1)),
     "issue_id"),
    (Channel.WEB, ticket("m-1", ticket_id="T" * ISSUE_ID_MAX), ticket("m-1", ticket_id="T" * (ISSUE_ID_MAX + 1)),
     "properties.ticket_id"),
    (Channel.STORE, sale(STORE, RECEIPT), sale(STORE, RECEIPT + "R"), "record: the source id"),
    (Channel.ECOMMERCE, order(MARKET, BUYER), order(MARKET, BUYER + "b"), "marketplace_buyer_id"),
    (Channel.PHONE, call("c-2", reason="r" * REASON), call("c-2", reason="r" * (REASON + 1)), "reason"),
    (Channel.WEB, ticket("m-2", reason="r" * REASON), ticket("m-2", reason="r" * (REASON + 1)), "properties.reason"),
    (Channel.STORE, sale("S-1", "R-1", loyalty_id="L" * 256), sale("S-1", "R-1", loyalty_id="L\x00"), "loyalty_id"),
    (Channel.WEB, ticket("m-3", note="fine"), ticket("m-3", note="nul \x00 here"), "properties.note"),
    (Channel.STORE, sale("S-2", "R-2"), sale("S-2\x00", "R-2"), "store_id"),
]  # fmt: skip


def test_records_at_the_limits_are_stored_and_one_over_is_rejected_first(database_url: str) -> None:
    events = []
    for channel, fits, over, named in CASES:
        result = convert_one(channel, fits, received_at=RECEIVED)
        assert isinstance(result, Accepted), result
        events.append(result.event)
        rejected = convert_one(channel, over, received_at=RECEIVED)
        assert isinstance(rejected, Rejected), f"{named}: accepted one character over the limit"
        assert rejected.reason == "validation_error" and rejected.dead_letter.detail.startswith(named), rejected

    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    processor = BatchProcessor(load_settings(database_url=database_url), SqlSink(engine))
    offsets: Counter[str] = Counter()  # each topic's offsets follow on, as a partition's do
    records = []
    for event in events:
        topic = f"cx.touchpoints.{event.channel.value}"
        records.append(InRecord(topic, 0, offsets[topic], event.model_dump_json().encode()))
        offsets[topic] += 1
    report = processor.process(records)  # on PostgreSQL, a value that does not fit raises here
    assert not report.dead_letters

    with engine.connect() as conn:
        stored = {row.event_id: row for row in conn.execute(select(t.touchpoints))}
        identities = set(conn.execute(select(t.identities.c.identifier)).scalars())
    assert stored.keys() == {e.event_id for e in events}
    longest = {
        "source_id": max(len(row.source_id) for row in stored.values()),
        "issue_id": max(len(row.issue_id or "") for row in stored.values()),
        "issue_key": max(len(row.issue_key or "") for row in stored.values()),
        "id_value": max(len(key.partition(":")[2]) for key in identities),
    }
    assert longest == {
        "source_id": SOURCE_ID_MAX,
        "issue_id": ISSUE_ID_MAX,
        "issue_key": ISSUE_KEY_MAX,
        "id_value": IDENTIFIER_VALUE_MAX,
    }


@pytest.mark.parametrize(
    ("column", "limit"),
    [
        (t.touchpoints.c.source_id, SOURCE_ID_MAX),
        (t.touchpoints.c.issue_id, ISSUE_ID_MAX),
        (t.touchpoints.c.issue_key, ISSUE_KEY_MAX),
        (t.identities.c.id_value, IDENTIFIER_VALUE_MAX),
        (t.identities.c.identifier, IDENTIFIER_KEY_MAX),
    ],
)
def test_the_limits_are_the_migrated_postgresql_columns(postgres_url: str, column: Any, limit: int) -> None:
    # The adapters' limits must be the columns' own: not smaller (valid input refused), not larger (PostgreSQL
    # refusing what the adapters let through).
    engine = make_engine(postgres_url, writer=True)
    upgrade(engine)
    identity = {"id_type": "crm_id", "id_value": "x", "customer_id": "c-1", "first_seen": RECEIVED,
                "last_seen": RECEIVED, "identifier": "crm_id:x"}  # fmt: skip
    touchpoint = {"event_id": "e-1", "channel": "store", "type": "purchase", "occurred_at": RECEIVED,
                  "received_at": RECEIVED, "committed_at": RECEIVED, "stage": "purchase", "source_id": "s"}  # fmt: skip
    row = dict(identity if column.table is t.identities else touchpoint)
    for text, fits in (("x" * limit, True), ("x" * (limit + 1), False), ("x\x00", False)):
        row[column.name] = text
        with engine.connect() as conn:
            try:
                conn.execute(insert(column.table).values(**row))
            except DataError:
                stored = False
            else:
                stored = True
            conn.rollback()
        assert stored == fits, f"{column}: {len(text)} characters {'refused' if fits else 'stored'}"
