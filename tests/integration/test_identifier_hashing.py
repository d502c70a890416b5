"""Identifier hashing end to end: with it on, no raw e-mail or phone number reaches a channel topic (nor, with
CXSTREAM_DEAD_LETTER_ORIGINALS=hash, the dead-letter topic), and the worker stitches the same customers as without
it, whether the events on the topics were hashed by the adapters or not.

The sample files, a simulated population (``cxstream simulate --out`` then ``cxstream publish``) and collector
requests go through the real adapters three times, to three sets of topics: all hashed, all raw, and mixed (some
channels published by a process with hashing off, as events from before hashing was turned on would be). Each set
is read back with a separate consumer and applied by its own worker.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
import requests
from sqlalchemy import select

from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.touchpoint import Channel, IdentifierType
from sinks import tables as t
from sinks.database import make_engine
from streams.domain.identifiers import InvalidIdentifier, hash_identifier, normalise_phone
from tests.support.kafka import read_messages, read_topic
from tests.support.processes import wait_until
from tests.support.results import caught_up, end_offsets, run_cli
from tests.support.workers import WorkerFactory

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
SALT = "integration-pepper"
HASHING = {"hash_identifiers": "true", "identifier_salt": SALT}
CUSTOMERS, DAYS, SEED = 200, 7, 59

#: Collector requests: an identify with the person's e-mail, and a contact form whose properties hold PII.
COLLECTED = [
    {"type": "identify", "messageId": "col-1", "userId": "u-col", "timestamp": "2024-05-03T10:00:00Z",
     "traits": {"email": "Col.Lector@Example.org", "phone": "+44 20 7946 0999"}},
    {"type": "track", "messageId": "col-2", "userId": "u-col", "timestamp": "2024-05-03T10:05:00Z",
     "event": "Contact Form Submitted",
     "properties": {"email": "col.lector@example.org", "message": "call me on 020 7946 0999", "issue_id": "Q-1"}},
]  # fmt: skip
#: A message the collector rejects: its dead letter must not carry the e-mail either.
BAD_COLLECTED = {"type": "identify", "messageId": "col-bad", "userId": "u-bad", "timestamp": "2024-05-03T10:00:00Z",
                 "traits": {"email": "Bad.Spelling@@example.org"}}  # fmt: skip
COLLECTED_PII = ["Col.Lector@Example.org", "+44 20 7946 0999", "020 7946 0999", "Bad.Spelling@@example.org"]


def source_records(path: Path) -> list[dict[str, Any]]:
    """The records of a sample or simulated file that parse (malformed lines are dead-lettered, not published)."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [row for row in csv.DictReader(handle) if any(row.values())]
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def raw_pii(files: list[Path]) -> set[str]:
    """Every e-mail and phone number in the source records, as written and in every normalised spelling."""
    found: set[str] = set(COLLECTED_PII)
    for path in files:
        for record in source_records(path):
            traits = [record.get("traits"), (record.get("context") or {}).get("traits")]
            emails = [record.get("email"), record.get("buyer_email")]
            emails += [trait.get("email") for trait in traits if isinstance(trait, dict)]
            for email in emails:
                if isinstance(email, str) and "@" in email:
                    found |= {email.strip(), email.strip().lower()}
            phone = record.get("phone")
            if isinstance(phone, str) and phone.strip():
                found.add(phone.strip())
                try:
                    e164 = normalise_phone(phone)
                except InvalidIdentifier:
                    continue
                national = "0" + e164[3:] if e164.startswith("+44") else e164[2:]
                found |= {e164, e164[1:], national}
    return {value for value in found if len(value) >= 6}


def publish(env: dict[str, str], *args: str) -> None:
    run_cli(env, "publish", *args)


def post(port: int, messages: list[dict[str, Any]], status: int = 200) -> None:
    auth = "Basic " + base64.b64encode(b"dev-write-key:").decode()
    reply = requests.post(
        f"http://127.0.0.1:{port}/v1/batch",
        data=orjson.dumps({"batch": messages}),
        headers={"Authorization": auth, "Content-Type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == status, reply.text


def grouping(database_url: str) -> tuple[set[frozenset[str]], dict[str, str]]:
    """Which events each customer holds (as sets of event ids), and the identities table."""
    engine = make_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all()
        identities = dict(conn.execute(select(t.identities.c.identifier, t.identities.c.customer_id)).all())
    groups: dict[str | None, set[str]] = {}
    for event_id, customer_id in rows:
        groups.setdefault(customer_id, set()).add(event_id if customer_id else f"unattributed {event_id}")
    return {frozenset(g) for g in groups.values()}, identities


def test_hashing_publishes_no_raw_pii_and_stitches_as_without(
    kafka_url: str, tmp_path: Path, workers: WorkerFactory
) -> None:
    sim = tmp_path / "sim"
    names = ("hashed", "raw", "mixed")
    envs = {
        name: workers.env(
            f"sqlite:///{tmp_path / f'{name}.db'}",
            f"t{uuid.uuid4().hex[:8]}.",
            **(HASHING if name != "raw" else {}),
            **({"dead_letter_originals": "hash"} if name == "hashed" else {}),
        )
        for name in names
    }
    run_cli(envs["raw"], "simulate", "--customers", str(CUSTOMERS), "--days", str(DAYS), "--seed", str(SEED),
            "--out", str(sim))  # fmt: skip
    samples = sorted(SAMPLES.iterdir())
    sim_files = {channel: str(sim / f"{channel.value}.jsonl") for channel in Channel}
    for name, env in envs.items():
        # Mixed: the sample files and the store and phone channels come from a publisher without hashing, as
        # events published before hashing was turned on would; web and marketplace ones are hashed by the adapters.
        before = {**env, "CXSTREAM_HASH_IDENTIFIERS": "false"} if name == "mixed" else env
        for sample in samples:
            publish(before, "--channel", sample.name.split(".")[0], str(sample))
        publish(before, "--channel", "store", sim_files[Channel.STORE], "--channel", "phone", sim_files[Channel.PHONE])
        publish(env, "--channel", "web", sim_files[Channel.WEB], "--channel", "ecommerce", sim_files[Channel.ECOMMERCE])

    started = {name: workers.start(env, name=f"worker-{name}") for name, env in envs.items()}
    for worker in started.values():
        post(worker.web_port, COLLECTED)  # the collector converts with the worker's settings
    post(started["hashed"].web_port, [BAD_COLLECTED], status=400)

    # Read back what the hashed run's adapters and collector put on the channel topics, keys and values.
    topics = Topics(envs["hashed"]["CXSTREAM_TOPIC_PREFIX"])
    records = read_messages(kafka_url, list(topics.channels))
    texts = [(m.key or b"").decode() + "\n" + m.value.decode() for m in records]
    assert len(texts) > 1000 and any("col-2" in text for text in texts)
    pii = raw_pii([*samples, *map(Path, sim_files.values())])
    assert {"alice.smith@example.org", "07700 900123", "+447700900123"} <= pii
    for text in texts:
        leaked = sorted(value for value in pii if value in text)
        assert not leaked, (leaked, text[:400])
        assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.-]+", text), text[:400]  # no e-mail of any kind
        assert not re.search(r"\+\d{9,15}\b", text), text[:400]  # no phone number in E.164
    # Dead letters (malformed simulated lines, a bad collector message) keep only a digest of the original bytes.
    dead = [DeadLetter.model_validate_json(value) for _, value in read_topic(kafka_url, topics.deadletter)]
    assert len(dead) > 5 and {d.stage for d in dead} == {"adapter", "collector"}
    for letter in dead:
        text = letter.model_dump_json()
        assert not [value for value in pii if value in text], text
        assert letter.original_b64 == "" and (letter.original_digest or "").startswith("hmac-sha256:")
    hashed_alice = "email:" + hash_identifier(IdentifierType.EMAIL, "alice.smith@example.org", SALT)
    assert any(text.startswith(hashed_alice) for text in texts), "keys are salted stored keys"

    for name, env in envs.items():
        engine, group = make_engine(env["CXSTREAM_DATABASE_URL"]), env["CXSTREAM_APP_ID"]
        ends = end_offsets(kafka_url, Topics(env["CXSTREAM_TOPIC_PREFIX"]).channels)
        wait_until(lambda e=engine, g=group, o=ends: caught_up(e, g, o), 120, f"the {name} worker to catch up")

    # Nor anything the hashed run's worker wrote: its SQLite file, the WAL beside it, its log.
    database = tmp_path / "hashed.db"
    written = {
        path.name: path.read_bytes() for path in (database, database.with_name("hashed.db-wal")) if path.exists()
    }
    written["log"] = started["hashed"].log().encode()
    assert database.name in written and written["log"]
    for name, data in written.items():
        leaked = sorted(value for value in pii if value.encode() in data)
        assert not leaked, (name, leaked)

    hashed, raw, mixed = (grouping(envs[name]["CXSTREAM_DATABASE_URL"]) for name in names)
    assert len(raw[0]) > CUSTOMERS / 2
    assert hashed[0] == raw[0], "hashing changed who is who"
    # Raw events from before and hashed ones of the same people meet under the very same stored keys.
    assert mixed == hashed
    assert not any("@" in key or key.startswith("phone:+") for key in hashed[1])
