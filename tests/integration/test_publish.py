"""`cxstream publish` against the real broker: sample files round-trip, bad lines are dead-lettered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from schemas.deadletter import DeadLetter
from schemas.touchpoint import TouchpointEvent
from tests.support.kafka import read_topic
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
