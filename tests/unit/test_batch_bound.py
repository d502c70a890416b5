"""The batch bound: the normal one while the worker keeps up, the bigger one while its waiting input would take
longer than ``behind_s`` to apply, by estimates that follow its recent batches."""

from __future__ import annotations

from streams.batch_bound import BatchBound


def test_before_any_batch_a_record_is_an_event_and_the_normal_bound_a_second_of_work() -> None:
    bound = BatchBound(normal=5000, behind=20_000, behind_s=10.0)
    assert bound.limit(0) == 5000
    assert bound.limit(50_000) == 5000, "10 s of work: not more than behind_s"
    assert bound.limit(50_001) == 20_000


def test_envelopes_and_a_slow_database_put_the_worker_behind_sooner() -> None:
    bound = BatchBound(normal=5000, behind=20_000, behind_s=10.0)
    for _ in range(40):  # envelopes of 100 events, applied at 2,000 events/s
        bound.observe(records=50, events=5000, seconds=2.5)
    assert round(bound.events_per_record) == 100 and round(bound.events_per_s) == 2000
    assert bound.limit(190) == 5000, "190 envelopes: 9.5 s of work"
    assert bound.limit(300) == 20_000, "300 envelopes: 15 s"


def test_the_estimates_follow_the_batches_and_ignore_empty_ones() -> None:
    bound = BatchBound(normal=100, behind=1000, behind_s=1.0)
    bound.observe(records=100, events=100, seconds=0.01)  # 10,000 events/s
    assert 100 < bound.events_per_s < 10_000
    before = (bound.events_per_record, bound.events_per_s)
    bound.observe(records=0, events=0, seconds=0.0)
    bound.observe(records=3, events=0, seconds=0.2)  # every record a redelivery: nothing learnt
    assert (bound.events_per_record, bound.events_per_s) == before
    for _ in range(30):
        bound.observe(records=100, events=100, seconds=0.01)
    assert bound.limit(5000) == 100 and bound.limit(20_000) == 1000


def test_the_bound_behind_is_never_below_the_normal_one() -> None:
    bound = BatchBound(normal=5000, behind=1000, behind_s=1.0)
    assert bound.limit(10**9) == 5000
