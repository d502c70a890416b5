"""What the worker tells of a record that holds no valid event: the dead letter's detail names the field and why."""

from __future__ import annotations

from typing import Any

import orjson

from schemas.deadletter import DeadLetter
from schemas.touchpoint import TouchpointEvent
from streams.decoding import InRecord, decode_record

EVENT: dict[str, Any] = {
    "event_id": "store-1",
    "channel": "store",
    "type": "purchase",
    "occurred_at": "2026-05-01T09:30:00Z",
    "received_at": "2026-05-01T09:31:00Z",
    "identifiers": {"email": "ann@example.org"},
    "source": {"system": "s-1", "id": "r-1"},
}


def _decoded(value: Any) -> tuple[list[TouchpointEvent], list[DeadLetter]]:
    events: list[TouchpointEvent] = []
    dead: list[DeadLetter] = []
    decode_record(InRecord("cx.touchpoints.store", 0, 7, orjson.dumps(value)), "cx.touchpoints.", 1 << 20, events, dead)
    return events, dead


def test_an_unknown_key_of_a_nested_object_is_named_as_an_extra_input_not_a_keyword_argument() -> None:
    events, dead = _decoded({**EVENT, "source": {**EVENT["source"], "q": 2}, "survey": {"nps": 9, "x": 1}})
    assert events == []
    assert [letter.reason for letter in dead] == ["validation_error"]
    assert "source.q: Extra inputs are not permitted" in dead[0].detail
    assert "survey.x: Extra inputs are not permitted" in dead[0].detail
    assert "keyword" not in dead[0].detail


def test_an_unknown_top_level_key_is_ignored_and_an_item_that_is_no_object_is_named() -> None:
    events, dead = _decoded([{**EVENT, "extra": 1}, 123])
    assert [event.event_id for event in events] == ["store-1"]
    assert len(dead) == 1 and "item 2 of 2" in dead[0].detail and "dictionary" in dead[0].detail
