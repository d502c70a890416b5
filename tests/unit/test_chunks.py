"""Transactions are cut at record boundaries by event count, so an envelope's offset commits with all its events."""

from __future__ import annotations

import orjson

from streams.pipeline import InRecord
from streams.worker import chunk_by_events


def _record(offset: int, events: int) -> InRecord:
    body = [{"event_id": f"e{offset}-{i}"} for i in range(events)]
    value = orjson.dumps(body if events > 1 else body[0])
    return InRecord("t", 0, offset, value)


def test_records_are_grouped_up_to_the_event_limit_and_never_split() -> None:
    records = [_record(0, 1), _record(1, 3), _record(2, 4), _record(3, 10), _record(4, 1)]
    chunks = chunk_by_events(records, 5)
    assert [[r.offset for r in chunk] for chunk in chunks] == [[0, 1], [2], [3], [4]]
    assert [r for chunk in chunks for r in chunk] == records, "nothing lost, order kept"


def test_one_event_records_fill_a_chunk_to_the_limit() -> None:
    chunks = chunk_by_events([_record(i, 1) for i in range(7)], 3)
    assert [len(c) for c in chunks] == [3, 3, 1]
