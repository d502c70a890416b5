"""Property test through the real worker: history from several source systems, loaded the way people load it.

Hypothesis draws a multi-channel population spanning at least 60 days (the project's simulator: stores, call
centre, web, marketplaces; duplicates, late records and garbage included), writes each source system's export
the way such systems do (split into files, some sorted by time, some not), and publishes them file by file in a
random order, channel by channel or interleaved, some files twice. A worker with the **default settings** runs
meanwhile. The result tables must equal the oracle's replay of what is on the topics; a second worker, in a new
consumer group with a fresh database, reads the same topics once all is published, beside the first (another
consumption order, other batch cuts), and must end with the same rows.
"""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import load_settings
from schemas.touchpoint import Channel
from sinks.database import make_engine
from streams.adapters.reader import read_records
from streams.kafka import ensure_topics
from streams.publisher import Publisher, publish_items
from streams.sandbox.journeys import simulate
from tests.integration.test_event_time import wait_for_results
from tests.support.expected import expected_results
from tests.support.results import consumed_events
from tests.support.workers import WorkerFactory


def exports(seed: int, customers: int, days: int, parts: int, sort_some: bool) -> list[tuple[str, list[bytes]]]:
    """Each channel's records as a source system exports them: ``parts`` files per channel, some in time order."""
    rng = random.Random(seed)
    lines: dict[str, list[bytes]] = {}
    for record in simulate(customers=customers, days=days, seed=seed, late_rate=0.05, malformed_rate=0.01):
        lines.setdefault(record.channel, []).append(record.raw)
    files = []
    for channel, records in lines.items():
        chunks: list[list[bytes]] = [[] for _ in range(parts)]
        for raw in records:
            chunks[rng.randrange(parts)].append(raw)
        for chunk in chunks:
            if not sort_some or rng.random() < 0.5:
                rng.shuffle(chunk)  # an export in no particular order
            files.append((channel, chunk))
    return files


@pytest.mark.timeout(1200)
@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    seed=st.integers(0, 2**31),
    customers=st.integers(15, 30),
    days=st.integers(70, 80),
    parts=st.integers(1, 3),
    channel_by_channel=st.booleans(),
    resend=st.floats(0.0, 0.4),
)
def test_history_loaded_file_by_file_ends_where_the_oracle_does(
    kafka_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    customers: int,
    days: int,
    parts: int,
    channel_by_channel: bool,
    resend: float,
) -> None:
    rng = random.Random(seed)
    tmp = tmp_path_factory.mktemp("history")
    prefix = f"h{uuid.uuid4().hex[:8]}."
    workers = WorkerFactory(tmp, kafka_url)
    try:
        live_db, replay_db = f"sqlite:///{tmp / 'live.db'}", f"sqlite:///{tmp / 'replay.db'}"
        env = workers.env(live_db, prefix)
        live = load_settings(kafka_url=kafka_url, topic_prefix=prefix)
        ensure_topics(live)
        workers.start(env)

        files = exports(seed, customers, days, parts, sort_some=rng.random() < 0.5)
        if channel_by_channel:
            order = list(dict.fromkeys(channel for channel, _ in files))
            rng.shuffle(order)
            files.sort(key=lambda f: order.index(f[0]))
        else:
            rng.shuffle(files)
        files += [f for f in files if rng.random() < resend]  # a system sends an export again
        publisher = Publisher(live)
        for n, (channel, lines) in enumerate(files):
            items = read_records(Channel(channel), lines, source_file=f"{channel}-{n}.jsonl")
            publish_items(publisher, items)
        assert publisher.close().accounted

        # The same topics, read again by a new consumer group into a fresh database: once everything is on them,
        # while the live worker is still at it (other batch cuts, another consumption order).
        workers.start({**workers.env(replay_db, prefix), "CXSTREAM_APP_ID": f"{prefix}replay"}, name="replay")
        events = consumed_events(kafka_url, prefix)
        assert max(e.occurred_at for e in events) - min(e.occurred_at for e in events) >= timedelta(days=60)
        expected = expected_results(events, load_settings())
        wait_for_results(make_engine(live_db), expected, timeout=120)
        wait_for_results(make_engine(replay_db), expected, timeout=120)
    finally:
        workers.stop_all()
