"""`cxstream deadletters` on a real broker: counts, lists and shows what was rejected, and replays it.

Dead letters come from where they come from in production: `cxstream publish` (the adapters) and a running worker.
A call refused `too_late` under an age bound is replayed once the worker runs without it, and is applied. The
commands run in this process through click's runner (a process each costs a second of imports), except where the
exit code and the stderr of the real program are the point.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import orjson
from click.testing import CliRunner, Result
from kafka import KafkaProducer
from sqlalchemy import select

from config.settings import load_settings
from config.topics import Topics
from schemas.touchpoint import Channel, derive_event_id
from sinks import tables as t
from sinks.database import make_engine
from streams import deadletters as dl
from streams.cli import main
from streams.kafka import ensure_topics
from tests.support.kafka import read_topic
from tests.support.processes import wait_until
from tests.support.workers import WorkerFactory

PHONE = "+447700900201"


def cxstream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a cxstream command as an operator would, with ``env`` as its only CXSTREAM_* settings."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def run(env: dict[str, str], *args: str) -> Result:
    """Run a cxstream command in this process with the CXSTREAM_* settings of ``env`` only."""
    settings: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CXSTREAM_")}
    settings |= {k: v for k, v in env.items() if k.startswith("CXSTREAM_")}
    return CliRunner().invoke(main, list(args), env=settings, catch_exceptions=False)


def cli_env(kafka_url: str, prefix: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXSTREAM_")}
    env |= {"CXSTREAM_KAFKA_URL": kafka_url, "CXSTREAM_TOPIC_PREFIX": prefix}
    return env | {f"CXSTREAM_{k.upper()}": v for k, v in settings.items()}


def publish(env: dict[str, str], path: Path, *lines: bytes, **settings: str) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    extra = {f"CXSTREAM_{k.upper()}": v for k, v in settings.items()}
    proc = cxstream(env | extra, "publish", "--channel", "phone", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def call(call_id: str, at: str, phone: str = PHONE) -> bytes:
    return orjson.dumps(
        {"call_id": call_id, "occurred_at": at, "phone": phone, "direction": "inbound", "duration_seconds": 60}
    )


def applied(engine, event_id: str) -> bool:
    with engine.connect() as conn:
        return conn.scalar(select(t.touchpoints.c.event_id).where(t.touchpoints.c.event_id == event_id)) is not None


def test_a_call_refused_too_late_is_applied_once_replayed_to_a_worker_without_the_age_bound(
    kafka_url: str, topic_prefix: str, sqlite_url: str, workers: WorkerFactory, tmp_path: Path
) -> None:
    env = workers.env(sqlite_url, topic_prefix, max_event_age_s=str(86_400))
    engine = make_engine(sqlite_url)
    phone_topic = Topics(topic_prefix).channel("phone")
    # A record that holds no event, written straight to partition 2 of the channel topic.
    ensure_topics(load_settings(kafka_url=kafka_url, topic_prefix=topic_prefix))
    producer = KafkaProducer(bootstrap_servers=kafka_url.split("://", 1)[1].split(","))
    producer.send(phone_topic, value=b"{oops", partition=2).get(timeout=30)
    producer.close()

    worker = workers.start(env)
    publish(env, tmp_path / "today.jsonl", call("C-NEW", "2024-06-10T12:00:00Z"))
    new_id, late_id = derive_event_id(Channel.PHONE, "C-NEW"), derive_event_id(Channel.PHONE, "C-OLD")
    wait_until(lambda: applied(engine, new_id), 60, "the first call to be applied")
    # Nine days older than the watermark the first call set: past the one-day bound.
    publish(env, tmp_path / "late.jsonl", call("C-OLD", "2024-06-01T12:00:00Z"))

    def too_late() -> list[dict]:
        result = run(env, "deadletters", "--list", "--json", "--reason", "too_late", "--timeout", "10")
        assert result.exit_code == 0, result.output
        return orjson.loads(result.stdout)

    wait_until(lambda: bool(too_late()), 60, "the worker to dead-letter the old call too_late")
    (letter,) = too_late()
    assert (letter["stage"], letter["channel"], letter["topic"]) == ("worker", "phone", None)
    assert orjson.loads(base64.b64decode(letter["original_b64"]))["event_id"] == late_id
    assert not applied(engine, late_id)

    summary = run(env, "deadletters").stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:4] for line in summary[2:-1]}
    assert rows == {"too_late": ["phone", "worker", "1"], "invalid_json": ["phone", "worker", "1"]}
    assert summary[-1] == "2 dead letters"

    # The bound was a mistake: the worker restarts without it, and the dead letter is replayed.
    worker.stop()
    del env["CXSTREAM_MAX_EVENT_AGE_S"]
    workers.start(env)
    dry = run(env, "deadletters", "--replay", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"  {letter['position']}  too_late  -> {phone_topic}\n" in dry.stdout, "keyed as the adapters key it"
    assert f"  invalid_json  -> {phone_topic}[2]\n" in dry.stdout, "no event: back to the partition it came from"
    assert "would republish 2 dead letters (invalid_json 1, too_late 1)" in dry.stdout

    replayed = run(env, "deadletters", "--replay", "--reason", "too_late")
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout.splitlines() == ["republished 1 dead letter (too_late 1)", f"  to {phone_topic}: 1"]
    wait_until(lambda: applied(engine, late_id), 60, "the replayed call to be applied")
    story = run(env, "timeline", f"phone:{PHONE}").stdout
    assert "2024-06-01 12:00  phone" in story and "2024-06-10 12:00  phone" in story


def test_adapter_dead_letters_are_counted_listed_shown_and_replayed_through_the_adapter(
    kafka_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = cli_env(kafka_url, topic_prefix)
    phone_topic = Topics(topic_prefix).channel("phone")
    # Under the wrong default region a UK number written without its country code is no phone number.
    wrong_region = call("C-1", "2024-05-01T09:00:00Z", "07700 900123")
    hostile = b'{"call_id": "\x1b[2J'
    publish(env, tmp_path / "calls.jsonl", wrong_region, hostile, default_phone_region="US")
    publish(env, tmp_path / "more.jsonl", call("C-2", "2024-05-01T09:00:00"), dead_letter_originals="drop")

    summary = run(env, "deadletters").stdout.splitlines()
    assert summary[0].split() == ["reason", "channel", "stage", "count", "first", "rejected", "last", "rejected"]
    assert sorted(line.split()[:4] for line in summary[2:-1]) == [
        ["invalid_identifier", "phone", "adapter", "1"],
        ["invalid_json", "phone", "adapter", "1"],
        ["validation_error", "phone", "adapter", "1"],
    ]
    assert summary[-1] == "3 dead letters"
    counts = orjson.loads(run(env, "deadletters", "--json", "--stage", "adapter").stdout)
    assert sorted((row["reason"], row["count"]) for row in counts) == [
        ("invalid_identifier", 1),
        ("invalid_json", 1),
        ("validation_error", 1),
    ]

    listed = orjson.loads(run(env, "deadletters", "--list", "--json").stdout)
    at = {letter["reason"]: letter["position"] for letter in listed}
    assert len(at) == 3 and {letter["source_file"] for letter in listed} == {
        str(tmp_path / "calls.jsonl"),
        str(tmp_path / "more.jsonl"),
    }
    plain = run(env, "deadletters", "--list").stdout.splitlines()
    assert [line.split("  ")[0] for line in plain] == [letter["position"] for letter in listed], "in --json's order"
    (line,) = run(env, "deadletters", "--list", "--reason", "invalid_identifier").stdout.splitlines()
    assert line.startswith(f"{at['invalid_identifier']}  ")
    assert line.endswith(f"phone  adapter  {tmp_path / 'calls.jsonl'}:1  phone: not a possible phone number")
    one = run(env, "deadletters", "--list", "--limit", "1")
    assert len(one.stdout.splitlines()) == 1 and "stopped at --limit 1" in one.stderr
    none = run(env, "deadletters", "--list", "--channel", "web")
    assert none.stdout == f"no dead letters match on {topic_prefix}deadletter (3 records read)\n"

    # In full: the original as text, its control characters escaped; or said not to be kept.
    shown = run(env, "deadletters", "--show", at["invalid_json"]).stdout
    assert "\x1b" not in shown and shown.endswith('original:    17 bytes, UTF-8 text:\n{"call_id": "\\x1b[2J\n')
    dropped = run(env, "deadletters", "--show", at["validation_error"]).stdout
    assert "original:    not kept (CXSTREAM_DEAD_LETTER_ORIGINALS=drop)" in dropped
    as_json = orjson.loads(run(env, "deadletters", "--show", at["validation_error"], "--json").stdout)
    assert (as_json["original_state"], as_json["original_text"], as_json["line"]) == ("dropped", None, 1)

    # A selection holding a dead letter without its original is refused whole: one line, nothing sent.
    refused = cxstream(env, "deadletters", "--replay")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "cannot replay 1 of the 3 dead letters selected" in refused.stderr
    assert "originals dropped (CXSTREAM_DEAD_LETTER_ORIGINALS=drop)" in refused.stderr
    assert "nothing was published" in refused.stderr
    still = run(env, "deadletters", "--replay", "--dry-run", "--reason", "invalid_json").stdout
    assert still == "would republish 0 dead letters\nthe adapter still rejects 1 (invalid_json 1): not republished\n"
    assert read_topic(kafka_url, phone_topic, timeout=5) == [], "neither the refusal nor a dry run sent anything"

    # With the right region (the default, GB) the line goes through the adapter again, as publish sends it.
    replayed = run(env, "deadletters", "--replay", "--reason", "invalid_identifier")
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout.startswith("republished 1 dead letter (invalid_identifier 1)\n")
    ((key, value),) = read_topic(kafka_url, phone_topic, until=lambda got: len(got) >= 1)
    event = orjson.loads(value)
    assert event["event_id"] == derive_event_id(Channel.PHONE, "C-1")
    assert event["identifiers"]["phone"] == "+447700900123" and key and b"900123" not in key


def test_a_missing_or_empty_topic_is_one_line(kafka_url: str, topic_prefix: str) -> None:
    env = cli_env(kafka_url, topic_prefix)
    missing = cxstream(env, "deadletters")
    assert (missing.returncode, missing.stderr) == (0, "")
    assert missing.stdout == (
        f"no topic {topic_prefix}deadletter on the broker: nothing was dead-lettered there yet "
        "(CXSTREAM_TOPIC_PREFIX?)\n"
    )
    assert run(env, "deadletters", "--list", "--json").stdout == "[]\n"

    ensure_topics(load_settings(kafka_url=kafka_url, topic_prefix=topic_prefix), [f"{topic_prefix}deadletter"])
    empty = run(env, "deadletters", "--timeout", "5")
    assert (empty.exit_code, empty.stdout) == (0, f"no dead letters on {topic_prefix}deadletter (0 records read)\n")
    nothing = run(env, "deadletters", "--show", "0:0", "--timeout", "5")
    assert nothing.exit_code == 1 and "no dead letter at 0:0: past the end of partition 0" in nothing.stderr
    usage = run(env, "deadletters", "--dry-run")
    assert usage.exit_code == 2 and "--dry-run goes with --replay" in usage.stderr


def test_a_bad_show_position_is_a_usage_error_and_foreign_records_are_no_dead_letters() -> None:
    env = cli_env("kafka://127.0.0.1:1", "never.")  # refused before any broker is asked
    for position in ("1", "a:1", "-1:2", "²:0", "0:9223372036854775808"):
        refused = run(env, "deadletters", "--show", position)
        assert refused.exit_code == 2 and "expected PARTITION:OFFSET" in refused.stderr, position
    # A record shaped as a dead letter whose original is not base64 (another producer's) is counted as not one,
    # rather than failing --show or --replay when they decode it.
    shaped = {"channel": "phone", "reason": "invalid_json", "rejected_at": "2026-01-01T00:00:00Z"}
    assert dl._parse(orjson.dumps(shaped | {"original_b64": "abc"})) is None
    assert dl._parse(orjson.dumps(shaped | {"original_b64": base64.b64encode(b"{").decode()})) is not None
