"""Outbox payloads and partitioning of downstream records."""

from __future__ import annotations

import zlib

import pytest
import zstandard

from streams.downstream import OutboxPayload, Outputs, Partitioner
from streams.kafka import partition_for


def test_an_outbox_payload_reads_back_record_for_record() -> None:
    outputs = Outputs()
    outputs.add("cx.timeline", "c-1", b'{"event_id":"e1","note":"\\u00e9 \\n |"}')
    outputs.add("cx.metrics", "customer|c-1|all|1970", b"{}", route="customer|c-1")
    outputs.add("cx.timeline", "", b"")
    outputs.add("cx.deadletter", "web", bytes(range(256)))

    again = list(OutboxPayload(outputs.encode()).records())

    assert again == outputs.records
    assert again[1][3] == b"customer|c-1", "the route is kept for the partition"


def test_a_tombstone_reads_back_as_no_value_and_an_empty_value_as_empty() -> None:
    outputs = Outputs()
    outputs.add("cx.metrics", "customer|c-2|all|1970", None, route="customer|c-2")
    outputs.add("cx.timeline", "c-1", b"")
    outputs.add("cx.metrics", "customer|c-1|all|1970", b"{}", route="customer|c-1")

    payload = outputs.encode()
    assert payload.startswith(b"CXO4"), "marked apart: a version that cannot read a tombstone refuses the row"
    assert list(OutboxPayload(payload).records()) == [
        ("cx.metrics", b"customer|c-2|all|1970", None, b"customer|c-2"),
        ("cx.timeline", b"c-1", b"", b"c-1"),
        ("cx.metrics", b"customer|c-1|all|1970", b"{}", b"customer|c-1"),
    ]


def test_a_payload_without_tombstones_keeps_the_layout_the_version_before_reads() -> None:
    outputs = Outputs()
    outputs.add("cx.timeline", "c-1", b"{}")
    assert outputs.encode().startswith(b"CXO3")


def test_a_payload_of_the_previous_version_still_reads() -> None:
    # Rows the previous version committed (zlib) are published by the upgraded worker at its start.
    outputs = Outputs()
    outputs.add("cx.timeline", "c-1", b'{"event_id":"e1"}')
    framed = zstandard.ZstdDecompressor().decompress(outputs.encode()[4:])

    assert list(OutboxPayload(b"CXO2" + zlib.compress(framed, 1)).records()) == outputs.records


def test_an_empty_or_foreign_payload() -> None:
    assert list(OutboxPayload(Outputs().encode()).records()) == []
    with pytest.raises(ValueError, match="outbox payload"):
        OutboxPayload(b'[["cx.timeline","c-1","{}"]]')


def test_partitions_follow_kafkas_default_partitioner_and_are_memoised() -> None:
    partition_of = Partitioner(max_keys=3)
    routes = [f"c-{i}".encode() for i in range(10)]
    for route in routes * 2:
        assert partition_of(route, 4) == partition_for(route, 4)
        assert partition_of(route, 7) == partition_for(route, 7)
    assert len(partition_of._memo) <= 3
