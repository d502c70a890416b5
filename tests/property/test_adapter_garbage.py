"""Whatever bytes arrive, the reader never raises and gives one result per non-blank line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.touchpoint import Channel, TouchpointEvent
from streams.adapters.reader import TOO_LONG_KEPT_BYTES, Accepted, Reason, Rejected, convert_one, read_records

RECEIVED = datetime(2024, 6, 1, tzinfo=UTC)
SAMPLES = Path(__file__).parent.parent / "data" / "samples"

#: Every reason bad input may give; conversion_error is a bug and must never appear.
INPUT_REASONS = {str(r) for r in Reason} - {str(Reason.CONVERSION_ERROR)}

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

channels = st.sampled_from(list(Channel))


def non_blank_lines(data: bytes) -> list[int]:
    """1-based numbers of the lines the reader must answer for."""
    pieces = data.split(b"\n")
    if data.endswith(b"\n"):
        pieces.pop()
    return [n for n, piece in enumerate(pieces, start=1) if piece.strip()]


def check(results: list[Accepted | Rejected], expected_lines: list[int], max_line_bytes: int) -> None:
    assert [r.line for r in results] == expected_lines
    for result in results:
        if isinstance(result, Rejected):
            dead = result.dead_letter
            assert dead.reason in INPUT_REASONS, dead
            assert dead.line == result.line and dead.stage == "adapter"
            kept = result.raw if len(result.raw) <= max_line_bytes else result.raw[:TOO_LONG_KEPT_BYTES]
            assert dead.original() == kept
            dead.model_dump_json()  # publishable
        else:
            TouchpointEvent.model_validate_json(result.event.model_dump_json())


def sample_records(channel: Channel) -> list[dict[str, Any]]:
    name = {Channel.STORE: "store", Channel.PHONE: "phone", Channel.WEB: "web", Channel.ECOMMERCE: "ecommerce"}
    text = (SAMPLES / f"{name[channel]}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


SAMPLE_RECORDS = {channel: sample_records(channel) for channel in Channel}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["", " ", "2024-05-01T10:00:00", "2024-05-01T10:00:00Z", "NaN", "1e999", "-1", "abc@", "+44"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mangled_records(draw: st.DrawFn, channel: Channel) -> dict[str, Any]:
    """A valid sample record with fields dropped, retyped or added: nearly right, which is the hard case."""
    record = dict(draw(st.sampled_from(SAMPLE_RECORDS[channel])))
    for key in draw(st.lists(st.sampled_from(sorted(record)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del record[key]
        else:
            record[key] = draw(json_values)
    record.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2)))
    return record


@FAST
@given(channel=channels, data=st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(channel: Channel, data: bytes) -> None:
    results = list(read_records(channel, data, source_file="fuzz", received_at=RECEIVED))
    check(results, non_blank_lines(data), 1_000_000)


@FAST
@given(
    channel=channels,
    lines=st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass")),
            json_values.map(lambda v: orjson.dumps(v)),
            st.sampled_from([b"", b"   ", b"\r", b"{", b"[]", b"null", b'"x"', b"{}", b"\xef\xbb\xbf{}", b"\x00"]),
        ),
        max_size=20,
    ),
    max_line_bytes=st.sampled_from([16, 64, 1_000_000]),
)
def test_lines_of_garbage_give_one_result_each(channel: Channel, lines: list[bytes], max_line_bytes: int) -> None:
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines)
    results = list(read_records(channel, data, source_file="fuzz", received_at=RECEIVED, max_line_bytes=max_line_bytes))
    check(results, non_blank_lines(data), max_line_bytes)


@FAST
@given(st.data())
def test_nearly_valid_records_never_raise(data: st.DataObject) -> None:
    channel = data.draw(channels)
    records = data.draw(st.lists(mangled_records(channel), min_size=1, max_size=5))
    blob = b"\n".join(orjson.dumps(record) for record in records)
    results = list(read_records(channel, blob, source_file="fuzz", received_at=RECEIVED))
    check(results, list(range(1, len(records) + 1)), 1_000_000)
    for record in records:
        assert isinstance(convert_one(channel, record, received_at=RECEIVED), Accepted | Rejected)


@FAST
@given(channel=st.sampled_from([Channel.STORE, Channel.PHONE]), lines=st.lists(st.text(max_size=60), max_size=12))
def test_csv_garbage_never_raises(channel: Channel, lines: list[str]) -> None:
    header = "receipt_id,visit_id,store_id,occurred_at,kind,total,currency,items,feedback,call_id,phone,survey"
    text = "\n".join([header, *(line.replace("\n", " ").replace("\r", " ") for line in lines)])
    results = list(read_records(channel, text.encode("utf-8", "surrogatepass"), source_file="f", fmt="csv"))
    check(results, non_blank_lines(text.encode("utf-8", "surrogatepass"))[1:], 1_000_000)


@FAST
@given(channel=channels, value=json_values)
def test_convert_one_never_raises_on_any_json_value(channel: Channel, value: Any) -> None:
    raw = orjson.dumps(value)
    result = convert_one(channel, raw, received_at=RECEIVED)
    expected = Reason.NOT_AN_OBJECT if not isinstance(value, dict) else None
    assert isinstance(result, Accepted | Rejected)
    if expected is not None:
        assert isinstance(result, Rejected) and result.reason == expected
    parsed = convert_one(channel, value, received_at=RECEIVED)
    assert isinstance(parsed, Accepted | Rejected)
    if expected is not None:
        assert isinstance(parsed, Rejected) and parsed.reason == expected


def test_one_huge_line_and_deep_nesting() -> None:
    huge = b'{"a": "' + b"x" * 3_000_000 + b'"}'
    deep = b"[" * 5000 + b"]" * 5000
    deep_object = b'{"a":' * 200 + b"1" + b"}" * 200
    data = b"\n".join([huge, deep, deep_object])
    results = list(read_records(Channel.WEB, data, source_file="f", received_at=RECEIVED))
    assert [r.reason for r in results] == ["line_too_long", "invalid_json", "validation_error"]  # type: ignore[union-attr]
    check(results, [1, 2, 3], 1_000_000)
