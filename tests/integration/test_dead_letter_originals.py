"""CXSTREAM_DEAD_LETTER_ORIGINALS: dead letters keep the rejected record's bytes by default, a digest of them with
``hash``, nothing with ``drop``; from `cxstream publish` (read back from the broker) and from the worker alike."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from config.settings import load_settings
from schemas.deadletter import DeadLetter
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink
from streams.pipeline import BatchProcessor, InRecord
from tests.support.kafka import read_topic

SALT = "dead-letter-pepper"
#: Rejected lines holding personal data: a malformed e-mail, a zone-less time next to a phone number, broken JSON.
BAD = [
    b'{"receipt_id": "R-1", "store_id": "S", "occurred_at": "2024-05-01T09:00:00Z", "kind": "sale", "total": "1", "currency": "GBP", "email": "ann.lee.example.org"}',
    b'{"receipt_id": "R-2", "store_id": "S", "occurred_at": "2024-05-01T09:00:00", "kind": "visit", "phone": "07700 900123"}',
    b'{"receipt_id": "R-3", "email": "bob@example.org"',
]
PII = [b"ann.lee", b"07700", b"bob@"]


def _publish(kafka_url: str, prefix: str, path: Path, **settings: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXSTREAM_")}
    env |= {"CXSTREAM_KAFKA_URL": kafka_url, "CXSTREAM_TOPIC_PREFIX": prefix}
    env |= {f"CXSTREAM_{k.upper()}": v for k, v in settings.items()}
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "publish", "--channel", "store", str(path)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.mark.parametrize(
    ("settings", "digest"),
    [
        ({"dead_letter_originals": "drop"}, None),
        ({"dead_letter_originals": "hash"}, lambda raw: "sha256:" + hashlib.sha256(raw).hexdigest()),
        (
            {"dead_letter_originals": "hash", "hash_identifiers": "true", "identifier_salt": SALT},
            lambda raw: "hmac-sha256:" + hmac.new(SALT.encode(), raw, hashlib.sha256).hexdigest(),
        ),
    ],
)
def test_published_dead_letters_keep_a_digest_or_nothing(kafka_url, topic_prefix, tmp_path, settings, digest) -> None:
    path = tmp_path / "store.jsonl"
    path.write_bytes(b"\n".join(BAD) + b"\n")
    _publish(kafka_url, topic_prefix, path, **settings)

    records = read_topic(kafka_url, f"{topic_prefix}deadletter", until=lambda r: len(r) >= len(BAD))
    assert len(records) == len(BAD)
    for _, value in records:
        assert not any(pii in value for pii in PII), value
        dead = DeadLetter.model_validate_json(value)
        assert dead.original_b64 == "" and dead.original() == b""
        assert dead.line is not None
        assert dead.original_digest == (digest(BAD[dead.line - 1]) if digest else None)
    reasons = sorted(DeadLetter.model_validate_json(v).reason for _, v in records)
    assert reasons == ["invalid_identifier", "invalid_json", "validation_error"]


def test_the_worker_s_dead_letters_follow_the_setting_too(sqlite_url: str) -> None:
    # A record published straight to a channel topic that is not an event: the worker dead-letters it.
    garbage = orjson.dumps({"event_id": "x", "email": "ann@example.org"})
    for originals, kept in (("keep", garbage), ("drop", b"")):
        engine = make_engine(sqlite_url, writer=True)
        upgrade(engine)
        settings = load_settings(database_url=sqlite_url, dead_letter_originals=originals)
        processor = BatchProcessor(settings, SqlSink(engine))
        processor.reload()  # it reads the applied offsets on first use otherwise
        offset = processor.applied.get(("cx.touchpoints.store", 0), -1) + 1
        report = processor.process([InRecord("cx.touchpoints.store", 0, offset, garbage)])
        (published,) = [value for topic, _, value, _ in report.outputs.records if topic == "cx.deadletter"]
        dead = DeadLetter.model_validate_json(published)
        assert (dead.reason, dead.stage, dead.original()) == ("validation_error", "worker", kept)
