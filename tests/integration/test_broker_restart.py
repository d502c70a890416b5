"""Broker restart: the broker on durable storage is killed and restarted while adapters publish and a worker consumes.

The broker is Tansu on S3 storage (a local ``moto_server``), owned by this module: it is SIGKILLed mid-run and
started again on the same port and storage. The adapters' publisher re-sends what the broker did not
acknowledge, the worker reconnects by itself, and the results equal the oracle's: every event the adapters
produced is in SQL once and counted once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future
from sqlalchemy import Engine, func, select

from config.settings import Settings, load_settings
from config.topics import Topics
from schemas.touchpoint import Channel, TouchpointEvent
from sinks import tables as t
from sinks.database import make_engine
from streams.adapters.reader import Accepted, convert_one
from streams.domain.oracle import replay
from streams.kafka import ensure_topics
from streams.policies import Policies
from streams.publisher import Publisher, PublishSummary
from streams.sandbox.embedded_broker import port_is_free, wait_for_port
from streams.sandbox.journeys import SimRecord, simulate
from streams.sandbox.traffic import publish_simulated
from tests.support.faults import applied_count
from tests.support.kafka import read_topic
from tests.support.processes import free_port, wait_until
from tests.support.results import caught_up, end_offsets, overall_counters
from tests.support.s3 import DurableBroker, S3Server, s3_server  # noqa: F401 - s3_server is a fixture
from tests.support.workers import WorkerFactory

CUSTOMERS, DAYS, SEED, MALFORMED = 300, 5, 17, 0.005
RATE = 150.0  # records/s: about 10 s of traffic, so the broker dies with most of it still to come
#: Records published before the rest waits for the broker's kill (the test kills it after 200 were read).
GATE = 300
OUTAGE_S = 5.0  # longer than the test producer's delivery timeout: records really fail and must be re-sent


@pytest.fixture(scope="module")
def durable_broker(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DurableBroker]:  # noqa: F811
    """This module's own broker on S3 storage (not the session's memory broker: this one gets killed)."""
    bucket = s3_server.create_bucket("cxstream-restart")
    broker = DurableBroker(s3_server, bucket, tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def adapter_output() -> list[TouchpointEvent]:
    """Every event the adapters produce from the simulated traffic (duplicates included), computed offline."""
    records = simulate(customers=CUSTOMERS, days=DAYS, seed=SEED, malformed_rate=MALFORMED)
    items = (convert_one(Channel(r.channel), r.raw, source_file="simulate", line=n) for n, r in enumerate(records, 1))
    return [item.event for item in items if isinstance(item, Accepted)]


def short_timeout_producer(settings: Settings) -> KafkaProducer:
    """The adapters' producer (streams.kafka.make_producer) with a 3 s delivery timeout instead of 60 s.

    With the production timeout kafka-python's own retries would ride out a short outage; shortening it makes
    the broker's outage outlast it, so records really fail and the publisher's re-sending is what saves them.
    Idempotence is off, as make_producer means it to be: kafka-python 3 turns it on by default, and an
    idempotent producer whose batch expires across a broker restart resets its producer id and never sends
    (nor expires) anything again.
    """
    return KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="cxstream-adapter",
        acks="all",
        retries=10,
        retry_backoff_ms=200,
        max_in_flight_requests_per_connection=1,
        linger_ms=5,
        request_timeout_ms=2_000,
        delivery_timeout_ms=3_000,
        enable_idempotence=False,
    )


def stored_event_ids(engine: Engine) -> set[str]:
    """Event ids with a row in ``touchpoints``."""
    with engine.connect() as conn:
        return set(conn.execute(select(t.touchpoints.c.event_id)).scalars())


def test_broker_killed_and_restarted_mid_run_loses_nothing(
    durable_broker: DurableBroker, topic_prefix: str, tmp_path: Path
) -> None:
    url = durable_broker.kafka_url
    workers = WorkerFactory(tmp_path, url)
    # A killed broker can hand out an offset it never stores: the worker seeks back for a few seconds, not 30.
    env = workers.env(f"sqlite:///{tmp_path / 'cx.db'}", topic_prefix, offset_gap_grace_s="5")
    settings = load_settings(kafka_url=url, topic_prefix=topic_prefix, partitions=4)
    engine = make_engine(env["CXSTREAM_DATABASE_URL"])
    group = env["CXSTREAM_APP_ID"]
    events = adapter_output()
    expected = {event.event_id for event in events}

    ensure_topics(settings)
    publisher = Publisher(settings, producer=short_timeout_producer(settings), resend_timeout=60, resend_backoff=0.5)
    summaries: list[PublishSummary] = []

    killed = threading.Event()

    def gated(records: Iterator[SimRecord]) -> Iterator[SimRecord]:
        # The rest of the traffic waits for the kill: on a loaded machine the worker's start can take longer than
        # the whole traffic at RATE, and the broker would die with nothing left to send (nothing to re-send).
        for n, record in enumerate(records):
            if n == GATE:
                killed.wait(120)
            yield record

    def adapters() -> None:
        records = simulate(customers=CUSTOMERS, days=DAYS, seed=SEED, malformed_rate=MALFORMED)
        try:
            publish_simulated(publisher, gated(iter(records)), rate=RATE)
        finally:
            summaries.append(publisher.close())

    started = time.monotonic()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.monotonic() - started, 1)

    try:
        worker = workers.start(env)
        mark("worker up")
        sender = threading.Thread(target=adapters, name="adapters", daemon=True)
        sender.start()
        wait_until(lambda: applied_count(engine, group) > 0, 60, "the worker to apply records")
        wait_until(lambda: publisher.summary.read > 200, 30, "the adapters to publish a part of the traffic")

        durable_broker.kill()
        killed.set()
        mark("broker killed")
        time.sleep(OUTAGE_S)
        durable_broker.start()
        mark("broker restarted")

        sender.join(90)
        mark("adapters done")
        assert summaries, "the adapters finished publishing"
        summary = summaries[0]
        assert summary.read == len(events) + sum(summary.dead_lettered.values()), "every record was read"
        assert summary.resent > 0, "records the broker did not acknowledge were sent again"
        assert summary.not_sent == 0 and summary.accounted, summary.render()
        assert worker.proc.poll() is None, f"the worker survived the broker restart:\n{worker.log()[-4000:]}"

        # A broker killed mid-write can leave a hole in a partition's offsets (an offset handed out, its record
        # never stored: about one kill in two here). The worker takes a hole for records lost in transit and
        # seeks back for streams.pipeline.GAP_GRACE_S (60 s) before it goes on: budget for it.
        wait_until(lambda: stored_event_ids(engine) >= expected, 90, "every event to reach SQL after the restart")
        mark("all in SQL")
        ends = end_offsets(url, Topics(topic_prefix).channels)
        wait_until(lambda: caught_up(engine, group, ends), 60, "the worker to apply every record and its outbox")
        mark("caught up")
    finally:
        workers.stop_all()
    mark("worker stopped")
    consumed = applied_count(engine, group)  # records (offsets) the worker went through, re-sent copies included
    print(f"\n{phases}\n{consumed} records consumed for {len(events)} events\n{summary.render()}")

    oracle = replay(events, Policies.from_settings(load_settings()))
    with engine.connect() as conn:
        touchpoints = dict(conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all())
        rows = conn.scalar(select(func.count()).select_from(t.touchpoints))
        customers = set(conn.execute(select(t.customers.c.customer_id)).scalars())
        identities = dict(conn.execute(select(t.identities.c.identifier, t.identities.c.customer_id)).all())
        overall = overall_counters(conn)
    assert set(oracle.entries) == expected
    assert rows == len(expected) and touchpoints == {eid: e.customer_id for eid, e in oracle.entries.items()}
    assert customers == set(oracle.profiles)
    assert identities == oracle.identities
    assert overall["touchpoints"] == len(expected), "every event counted exactly once, re-sent copies not again"


def test_cli_broker_on_s3_storage_keeps_records_across_a_restart(s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    """`cxstream broker --storage s3://BUCKET/` (AWS_* in its environment) serves again what it stored before."""
    port = free_port()
    env = {**os.environ, **s3_server.broker_env, "CXSTREAM_KAFKA_URL": f"kafka://127.0.0.1:{port}"}
    bucket = s3_server.create_bucket("cxstream-cli")
    command = [sys.executable, "-m", "streams.cli", "broker", "--storage", f"s3://{bucket}/"]
    settings = load_settings(kafka_url=f"kafka://127.0.0.1:{port}", topic_prefix="cli.", partitions=1)
    topic = Topics(settings.topic_prefix).deadletter
    for run in range(2):
        with open(tmp_path / f"broker-{run}.log", "wb") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, timeout=15)
            if run == 0:
                ensure_topics(settings, [topic])
                producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=False)
                producer.send(topic, b"kept across a restart").get(timeout=20)
                producer.close()
            else:
                assert [v for _, v in read_topic(settings.kafka_url, topic)] == [b"kept across a restart"]
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0, "Ctrl-C is a clean stop"
        wait_until(lambda: port_is_free(port), 10, "the port to be released")


# --- the publisher's re-sending, without a broker ------------------------------------------------------------------


class FlakyProducer:
    """A stand-in for KafkaProducer whose first ``failures`` sends fail at once (or every send, with -1)."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or KafkaTimeoutError("Expiring 1 record(s): 3000 ms has passed since batch creation")
        self.sent: list[bytes] = []

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"", partition: int | None = None) -> Future:
        self.sent.append(value)
        future = Future()
        if self.failures:
            self.failures -= 1
            return future.failure(self.error)
        return future.success(None)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass

    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}


def publish_offline(producer: FlakyProducer, events: list[TouchpointEvent], **options: float) -> PublishSummary:
    publisher = Publisher(load_settings(topic_prefix="unit."), producer=producer, resend_backoff=0.01, **options)
    for event in events:
        publisher.summary.read += 1
        publisher.event(event)
    return publisher.close()


def test_records_the_broker_did_not_acknowledge_are_sent_again() -> None:
    events = adapter_output()[:50]
    producer = FlakyProducer(failures=20)
    summary = publish_offline(producer, events)
    assert summary.published == 50 and summary.resent == 20 and summary.not_sent == 0 and summary.accounted
    assert len(producer.sent) == 70 and set(producer.sent) == {e.model_dump_json().encode() for e in events}
    assert "re-sent 20 records" in summary.render() and "NOT SENT" not in summary.render()


def test_records_never_acknowledged_are_reported_not_sent_at_the_deadline() -> None:
    summary = publish_offline(FlakyProducer(failures=-1), adapter_output()[:10], resend_timeout=0.3)
    assert summary.published == 0 and summary.not_sent == 10 and summary.resent > 0 and not summary.accounted
    assert "NOT SENT: 10 records" in summary.render()


def test_a_record_the_broker_refuses_for_good_is_not_sent_again() -> None:
    producer = FlakyProducer(failures=1, error=MessageSizeTooLargeError("too large"))
    summary = publish_offline(producer, adapter_output()[:5])
    assert summary.published == 4 and summary.not_sent == 1 and summary.resent == 0 and len(producer.sent) == 5
