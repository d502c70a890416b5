"""The batch bound: the normal one while the worker keeps up, the bigger one while its waiting input would take
longer than ``behind_s`` to apply, by estimates from its recent batches."""

from __future__ import annotations

from streams.batch_bound import BatchBound


def test_the_normal_bound_until_a_batch_was_measured() -> None:
    bound = BatchBound(normal=5000, behind=20_000, behind_s=10.0)
    assert bound.seconds_behind(10**9) is None and bound.limit(10**9) == 5000
    bound.observe(records=5000, held=5000, applied=5000, seconds=1.0)  # 5,000 events/s, an event a record
    assert bound.limit(50_000) == 5000, "10 s of work: not more than behind_s"
    assert bound.limit(50_001) == 20_000


def test_envelopes_and_a_slow_database_put_the_worker_behind_sooner() -> None:
    bound = BatchBound(normal=5000, behind=20_000, behind_s=10.0)
    bound.observe(records=50, held=5000, applied=5000, seconds=2.5)  # envelopes of 100 events, 2,000 events/s
    assert bound.seconds_behind(100) == 5.0
    assert bound.limit(190) == 5000, "190 envelopes: 9.5 s of work"
    assert bound.limit(300) == 20_000, "300 envelopes: 15 s"


def test_a_big_batch_weighs_more_than_a_small_one_and_redeliveries_do_not_speed_the_worker_up() -> None:
    bound = BatchBound(normal=100, behind=1000, behind_s=1.0)
    bound.observe(records=1000, held=1000, applied=1000, seconds=1.0)  # 1,000 events/s
    bound.observe(records=10, held=10, applied=10, seconds=0.1)  # a small batch, slower per event
    # (0.7 * 1000 + 10) events over (0.7 * 1.0 + 0.1) s: 887.5 events/s, where a moving average of the two
    # batches' rates gave 730.
    assert round(1000 / bound.seconds_behind(1000)) == 888
    # Redelivered records (after a restart) are skipped, not applied: they tell how many events a record holds,
    # not how fast the worker applies them.
    before = bound.seconds_behind(1000)
    bound.observe(records=500, held=500, applied=0, seconds=0.01)
    assert bound.seconds_behind(1000) == before


def test_the_estimates_follow_the_recent_batches() -> None:
    bound = BatchBound(normal=100, behind=1000, behind_s=1.0)
    bound.observe(records=100, held=100, applied=100, seconds=1.0)  # 100 events/s: 2,000 records are 20 s
    assert bound.limit(2000) == 1000
    for _ in range(30):  # then 10,000 events/s
        bound.observe(records=100, held=100, applied=100, seconds=0.01)
    assert bound.limit(2000) == 100 and bound.limit(20_000) == 1000


def test_the_bound_behind_is_never_below_the_normal_one() -> None:
    bound = BatchBound(normal=5000, behind=1000, behind_s=1.0)
    bound.observe(records=1, held=1, applied=1, seconds=1.0)
    assert bound.limit(10**9) == 5000
