"""The worker's one info line per batch: what an operator reads to follow a worker (and the README quotes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from streams.apply_process import BatchSummary
from streams.worker import describe_batch, outgrown_warning


def test_a_busy_batch_in_one_line() -> None:
    summary = BatchSummary(
        events=4_848,
        partitions=4,
        duplicates=31,
        too_late=2,
        merges=3,
        alerts=5,
        rejected={"too_late": 2, "invalid_json": 1, "event_id_conflict": 3},
        # Shown in UTC whatever zone the database driver returned it in.
        watermark=datetime(2026, 12, 1, 11, 0, tzinfo=timezone(timedelta(hours=1))),
    )
    line = describe_batch(summary, 0.4216, lag=1_200)
    assert line == (
        "applied 4,812 events (6 dead letters [event_id_conflict 3, invalid_json 1, too_late 2], 31 duplicates, "
        "3 merges, 5 alerts) from 4 partitions in 0.42 s; watermark 2026-12-01T10:00:00Z; lag 1,200 records"
    )
    assert "\n" not in line


def test_rare_counts_are_named_only_when_not_zero() -> None:
    quiet = BatchSummary(events=1, partitions=1, watermark=datetime(2026, 12, 1, tzinfo=UTC))
    assert describe_batch(quiet, 0.05, lag=0) == (
        "applied 1 event (0 dead letters, 0 duplicates, 0 merges, 0 alerts) from 1 partition in 0.05 s; "
        "watermark 2026-12-01T00:00:00Z; lag 0 records"
    )
    late = BatchSummary(events=9, partitions=2, late_accepted=7, unattributed=1, restored=2, merge_too_large=1)
    assert describe_batch(late, 1.0, lag=1) == (
        "applied 9 events (0 dead letters, 0 duplicates, 0 merges, 0 alerts, 7 late, 1 unattributed, "
        "2 histories read back, 1 link refused (CXSTREAM_MERGE_MAX_TOUCHPOINTS)) from 2 partitions in 1.00 s; "
        "watermark none yet; lag 1 record"
    )


def test_a_customer_over_the_merge_bound_is_named_with_what_to_do() -> None:
    line = outgrown_warning("c-0123", 100_000)
    assert line.startswith("customer c-0123 now holds more than 100,000 touchpoints (CXSTREAM_MERGE_MAX_TOUCHPOINTS)")
    assert "CXSTREAM_BLOCKED_IDENTIFIERS" in line and "\n" not in line
