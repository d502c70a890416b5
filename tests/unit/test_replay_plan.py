"""``ReplayPlan``: what ``cxstream deadletters --replay`` sends, planned a dead letter at a time, with the values to
send kept on disk: a selection of big dead letters costs their positions, not their bytes."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta

from config.settings import Settings
from streams.deadletters import Letter, ReplayPlan
from streams.decoding import dead_letter

TOPIC = "cx.touchpoints.phone"
T0 = datetime(2026, 12, 7, 9, tzinfo=UTC)


def worker_letter(n: int, original: bytes, minutes: int) -> Letter:
    """A worker's dead letter of record ``n`` (not an event: it goes back to the partition it was read from)."""
    dead = dead_letter("phone", "invalid_json", "not JSON", original).model_copy(
        update={
            "stage": "worker",
            "topic": TOPIC,
            "partition": n % 3,
            "offset": n,
            "rejected_at": T0 + timedelta(minutes=minutes),
        }
    )
    return Letter(0, 100 + n, dead)


def test_the_plan_sends_each_original_oldest_first_and_keeps_the_bytes_on_disk() -> None:
    plan = ReplayPlan(Settings())
    size, count = 256 * 1024, 80  # 20 MiB of originals
    tracemalloc.start()
    try:
        for n in range(count):
            # Rejected in reverse order of reading: the plan sends oldest first, as the listing shows them.
            plan.add(worker_letter(n, bytes([n]) * size, minutes=count - n))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * 1024 * 1024, f"{held:,} bytes held for {count} dead letters of {size:,} bytes"
    ordered = plan.ordered()
    assert [record.position for record in ordered] == [f"0:{100 + n}" for n in reversed(range(count))]
    assert [(record.topic, record.partition, record.key) for record in ordered[:2]] == [
        (TOPIC, 79 % 3, None),
        (TOPIC, 78 % 3, None),
    ]
    assert all(plan.value(record) == bytes([int(record.position[2:]) - 100]) * size for record in ordered)
    assert plan.lines(sent=None) == ["would republish 80 dead letters (invalid_json 80)", f"  to {TOPIC}: 80"]
    plan.close()
