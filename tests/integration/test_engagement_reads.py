"""The engagement score's distribution per channel, read from the customers table (read API, /metrics gauges)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from sinks import tables as t
from sinks.contract import BatchWrite, CustomerRow
from sinks.database import make_engine, upgrade
from sinks.queries import ENGAGEMENT_QUANTILES, engagement_quantiles
from sinks.sql import SqlSink
from streams.observability import EngagementCollector

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CHANNELS = ["ecommerce", "phone", "store", "web"]


def _row(n: int, engagement: float, channels: list[str]) -> CustomerRow:
    return CustomerRow(
        customer_id=f"c-{n}",
        first_seen=T0,
        last_seen=T0,
        stage="purchase",
        events=1,
        purchases=0,
        revenue=Decimal(0),
        contacts=0,
        returns=0,
        open_issues=0,
        overdue_at=None,
        state={"v": 2},
        traits=None,
        engagement=engagement,
        channels=",".join(sorted(channels)),
    )


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_quantiles_per_channel_of_touch_and_their_gauges(database_url: str) -> None:
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    rng = random.Random(7)
    rows = [
        _row(n, round(rng.uniform(0, 100), 1), rng.sample(CHANNELS, rng.randint(1, 3)) if n % 9 else [])
        for n in range(400)
    ]
    with engine.begin() as conn:
        SqlSink(engine).write_state(conn, BatchWrite(group_id="g", offsets={}, customers=rows))
        # A customer written before the score existed (migration 0017) holds none: left out.
        conn.execute(insert(t.customers).values(**{**_row(999, 0.0, ["web"])._asdict(), "engagement": None}))

    expected = {"all": [r.engagement for r in rows]}
    for r in rows:
        for channel in filter(None, r.channels.split(",")):
            expected.setdefault(channel, []).append(r.engagement)
    found = engagement_quantiles(engine)

    assert [row["channel"] for row in found] == ["all", *sorted(set(expected) - {"all"})]
    for row in found:
        values = expected[row["channel"]]
        assert row["customers"] == len(values)
        assert [row[f"p{round(q * 100)}"] for q in ENGAGEMENT_QUANTILES] == [
            _nearest_rank(values, q) for q in ENGAGEMENT_QUANTILES
        ]

    registry = CollectorRegistry()
    registry.register(EngagementCollector("w1", lambda: engagement_quantiles(engine), ENGAGEMENT_QUANTILES))
    samples = {
        (s.name, s.labels.get("channel"), s.labels.get("quantile")): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    for row in found:
        assert samples["cxstream_engagement_customers", row["channel"], None] == row["customers"]
        for q in ENGAGEMENT_QUANTILES:
            assert samples["cxstream_engagement_score", row["channel"], str(q)] == row[f"p{round(q * 100)}"]
    engine.dispose()

    # A database that cannot answer: the gauges are left out of the scrape, the scrape still answers.
    down = CollectorRegistry()
    down.register(EngagementCollector("w1", lambda: engagement_quantiles(engine_down), ENGAGEMENT_QUANTILES))
    engine_down = make_engine("postgresql+psycopg://nobody@127.0.0.1:9/none")
    assert b"cxstream_engagement_score{" not in generate_latest(down)
