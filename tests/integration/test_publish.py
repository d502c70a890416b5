"""`cxstream publish` against the real broker: sample files round-trip, bad lines are dead-lettered."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import orjson
import pytest

from schemas.deadletter import DeadLetter
from schemas.touchpoint import Channel, TouchpointEvent
from streams.sandbox.journeys import simulate, write_files
from tests.support.kafka import read_messages, read_topic
from tests.support.processes import free_port

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def _publish(kafka_url: str, prefix: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "CXSTREAM_KAFKA_URL": kafka_url, "CXSTREAM_TOPIC_PREFIX": prefix}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "publish", *args], env=env, input=stdin, capture_output=True, timeout=120
    )


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.iterdir()))
def test_every_sample_file_reads_back_as_valid_touchpoints(kafka_url: str, topic_prefix: str, sample: str) -> None:
    channel = sample.split(".")[0]
    path = SAMPLES / sample
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    expected = len(lines) - 1 if sample.endswith(".csv") else len(lines)

    proc = _publish(kafka_url, topic_prefix, "--channel", channel, "--strict", str(path))
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"published {expected}" in proc.stdout.decode()

    records = read_topic(kafka_url, f"{topic_prefix}touchpoints.{channel}", until=lambda r: len(r) >= expected)
    events = [TouchpointEvent.model_validate_json(value) for _, value in records]
    assert len(events) == expected
    assert {e.channel.value for e in events} == {channel}
    assert all(key for key, _ in records), "every event is keyed by an identifier"


@pytest.mark.conformance
def test_a_thousand_good_and_ten_bad_lines(kafka_url: str, topic_prefix: str, tmp_path: Path) -> None:
    good = [
        orjson.dumps(
            {
                "call_id": f"C-{i}",
                "occurred_at": f"2026-03-01T10:{i % 60:02d}:00+00:00",
                "phone": f"+4477009{i:05d}",
                "direction": "inbound",
                "queue": "delivery",
                "wait_seconds": 10,
                "duration_seconds": 100,
                "transfers": 0,
                "reason": "where_is_my_order",
                "resolved": True,
            }
        )
        for i in range(1000)
    ]
    bad = [
        b"{not json",
        b'{"call_id": "X"}',
        b"\xff\xfe\x00",
        b"[1,2]",
        b'{"call_id": 5, "occurred_at": "yesterday"}',
    ] * 2
    lines = good[:500] + bad + good[500:]
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    proc = _publish(kafka_url, topic_prefix, "--channel", "phone", str(path))
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "read 1010, published 1000, dead-lettered 10" in out

    assert len(read_topic(kafka_url, f"{topic_prefix}touchpoints.phone", until=lambda r: len(r) >= 1000)) == 1000
    dead = [DeadLetter.model_validate_json(v) for _, v in read_topic(kafka_url, f"{topic_prefix}deadletter")]
    assert len(dead) == 10
    assert sorted(d.line for d in dead if d.line) == sorted(range(501, 511))
    assert {d.original() for d in dead} == set(bad)
    assert all(d.reason and d.source_file == str(path) for d in dead)

    strict = _publish(kafka_url, topic_prefix, "--channel", "phone", "--strict", str(path))
    assert strict.returncode == 1


def test_unreachable_broker_says_how_many_were_not_sent(topic_prefix: str) -> None:
    sample = SAMPLES / "web.jsonl"
    n = len([line for line in sample.read_bytes().splitlines() if line.strip()])
    proc = _publish(f"kafka://127.0.0.1:{free_port()}", topic_prefix, "--channel", "web", str(sample))
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert f"{n} records not published" in err
    assert "Traceback" not in err


# --- several channels in one call ---------------------------------------------------------------

SAMPLE_EVENTS = 73  # valid events in the six sample files (their blank lines and CSV headers are not records)


class Produced(NamedTuple):
    """An event read back from its channel topic, with the time its producer stamped on the record."""

    timestamp_ms: int
    occurred_at: datetime
    event_id: str
    source_file: str | None


def _channel_topics(prefix: str) -> list[str]:
    return [f"{prefix}touchpoints.{channel.value}" for channel in Channel]


def _produced(kafka_url: str, prefix: str) -> list[Produced]:
    """Every event on the channel topics, drained, by a consumer of its own."""
    produced = []
    for record in read_messages(kafka_url, _channel_topics(prefix)):
        assert record.timestamp_type == 0, "CreateTime: the producer's clock when it sent the record"
        event = TouchpointEvent.model_validate_json(record.value)
        produced.append(Produced(record.timestamp, event.occurred_at, event.event_id, event.source.file))
    return produced


def _event_time_inversions(produced: list[Produced]) -> list[tuple[Produced, Produced]]:
    """Pairs where an event that occurred later was sent earlier: none when sent in event-time order.

    Records of different topics have no common offset, but the producer stamps each with its clock when it is
    sent. Sorted by (occurred_at, event_id) as the merge sends them, those stamps must never go back; records
    sent within one millisecond tie, so a check is only as sharp as the spread of the stamps.
    """
    in_event_order = sorted(produced, key=lambda p: (p.occurred_at, p.event_id, p.timestamp_ms))
    return [(a, b) for a, b in itertools.pairwise(in_event_order) if b.timestamp_ms < a.timestamp_ms]


def _sample_args() -> list[str]:
    # Each channel's later file first, and channels in an order unrelated to time: file order is not time order.
    return [
        "--channel", "store", str(SAMPLES / "store.csv"), str(SAMPLES / "store.jsonl"),
        "--channel", "phone", str(SAMPLES / "phone.csv"), str(SAMPLES / "phone.jsonl"),
        "--channel", "web", str(SAMPLES / "web.jsonl"),
        "--channel", "ecommerce", str(SAMPLES / "ecommerce.jsonl"),
    ]  # fmt: skip


def test_six_sample_files_of_four_channels_arrive_merged_in_event_time_order(kafka_url: str, topic_prefix: str) -> None:
    proc = _publish(kafka_url, topic_prefix, "--strict", *_sample_args())
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"read {SAMPLE_EVENTS}, published {SAMPLE_EVENTS}, dead-lettered 0" in out
    assert f"merged {SAMPLE_EVENTS} events from 6 files in event-time order" in out
    assert f"on {topic_prefix}deadletter and in cxstream_dead_letters_total" in out

    produced = _produced(kafka_url, topic_prefix)
    assert len(produced) == len({p.event_id for p in produced}) == SAMPLE_EVENTS
    assert {Path(p.source_file or "").name for p in produced} == {p.name for p in SAMPLES.iterdir()}
    assert not _event_time_inversions(produced)
    first, last = min(p.occurred_at for p in produced), max(p.occurred_at for p in produced)
    assert f"occurred_at {first.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z to {last.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z" in out


def test_a_directory_laid_out_by_channel_publishes_the_same(kafka_url: str, topic_prefix: str, tmp_path: Path) -> None:
    # Both layouts at once: <channel>/ directories (one nested) and flat <channel>.jsonl files.
    for target, sample in [
        ("store/2024-05/tills.csv", "store.csv"),
        ("store/kiosks.jsonl", "store.jsonl"),
        ("phone/calls.csv", "phone.csv"),
        ("phone.jsonl", "phone.jsonl"),
        ("web/segment.jsonl", "web.jsonl"),
        ("ecommerce.jsonl", "ecommerce.jsonl"),
    ]:
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / sample, tmp_path / target)
    by_groups = f"{topic_prefix}groups."

    proc = _publish(kafka_url, topic_prefix, "--strict", str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"merged {SAMPLE_EVENTS} events from 6 files in event-time order" in proc.stdout.decode()
    assert _publish(kafka_url, by_groups, *_sample_args()).returncode == 0

    produced = _produced(kafka_url, topic_prefix)
    assert len(produced) == SAMPLE_EVENTS
    assert not _event_time_inversions(produced)
    assert {p.event_id for p in produced} == {p.event_id for p in _produced(kafka_url, by_groups)}


def test_simulated_history_is_sent_in_event_time_order_and_file_order_on_request(
    kafka_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    # Each simulated file covers the whole period, so file by file would send weeks of one channel first.
    # A thousand events keep the producer busy long enough for its timestamps to tell send order apart.
    paths = write_files(simulate(customers=200, days=10, seed=3, malformed_rate=0.0), tmp_path)
    by_file = f"{topic_prefix}file."

    timed = _publish(kafka_url, topic_prefix, str(tmp_path))
    assert timed.returncode == 0, timed.stderr.decode()
    filed = _publish(kafka_url, by_file, "--order", "file", str(tmp_path))
    assert filed.returncode == 0, filed.stderr.decode()

    produced = _produced(kafka_url, topic_prefix)
    assert len(produced) >= 1000
    assert len({p.timestamp_ms for p in produced}) >= 20, "the send times are spread enough to observe order"
    assert not _event_time_inversions(produced)

    in_file_order = _produced(kafka_url, by_file)
    assert sorted(p.event_id for p in in_file_order) == sorted(p.event_id for p in produced)
    assert _event_time_inversions(in_file_order), "file by file is not event-time order"
    files = sorted(str(path) for path in paths.values())  # the directory's files, in name order
    spans = [(min(ts), max(ts)) for f in files if (ts := [p.timestamp_ms for p in in_file_order if p.source_file == f])]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "each file was sent before the next"


def test_a_bad_line_among_several_files_is_dead_lettered_with_its_file_and_line(
    kafka_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    web = tmp_path / "web.jsonl"
    lines = (SAMPLES / "web.jsonl").read_bytes().splitlines(keepends=True)
    bad = b'{"type": "track", "messageId": "m-bad", "anonymousId": "a", "timestamp": "2024-05-03T10:00:00"}'
    web.write_bytes(b"".join([*lines[:4], bad + b"\n", *lines[4:]]))
    calls = tmp_path / "calls.csv"
    rows = (SAMPLES / "phone.csv").read_bytes().splitlines(keepends=True)
    calls.write_bytes(b"".join([*rows[:2], b"C-9,not a row\n", *rows[2:]]))
    store = SAMPLES / "store.jsonl"
    garbage = b"\xff\xfe not text"
    stdin = b"".join([*(SAMPLES / "phone.jsonl").read_bytes().splitlines(keepends=True), garbage + b"\n"])

    proc = _publish(
        kafka_url,
        topic_prefix,
        "--channel", "store", str(store),
        "--channel", "web", str(web),
        "--channel", "phone", str(calls), "-",
        stdin=stdin,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert "dead-lettered 3" in proc.stdout.decode()

    dead = sorted(
        (DeadLetter.model_validate_json(v) for _, v in read_topic(kafka_url, f"{topic_prefix}deadletter")),
        key=lambda d: (d.channel or "", d.source_file or ""),
    )
    assert [(d.channel, d.source_file, d.line, d.reason, d.original()) for d in dead] == [
        ("phone", "-", 13, "invalid_utf8", garbage),
        ("phone", str(calls), 3, "invalid_csv", b"C-9,not a row"),
        ("web", str(web), 5, "validation_error", bad),
    ]
    produced = _produced(kafka_url, topic_prefix)
    assert len(produced) == 13 + 18 + 8 + 11  # the valid events of store.jsonl, web.jsonl, phone.csv, phone.jsonl
    assert not _event_time_inversions(produced)

    strict = _publish(kafka_url, f"{topic_prefix}s.", "--strict", "--channel", "web", str(web), str(store))
    assert strict.returncode == 1


def test_unreachable_broker_with_a_directory_counts_what_was_not_sent(topic_prefix: str) -> None:
    proc = _publish(f"kafka://127.0.0.1:{free_port()}", topic_prefix, str(SAMPLES))
    assert proc.returncode == 1
    assert f"nothing was sent: {SAMPLE_EVENTS} records not published" in proc.stderr.decode()
