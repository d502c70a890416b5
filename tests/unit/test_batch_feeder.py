"""The worker's batch feeder: batches apply one after the other, in order, and what arrives meanwhile is gathered.

Each applied batch is finished (metrics, outputs) and acknowledged after the next one was submitted, in the
order the batches were applied.
"""

from __future__ import annotations

import asyncio

from streams.pipeline import InRecord
from streams.worker import BatchFeeder


def records(*offsets: int) -> list[InRecord]:
    return [InRecord("t", 0, offset, b"{}") for offset in offsets]


async def nothing(*_: object) -> None:
    """An acknowledgement (or a finish) that does nothing."""


async def unexpected(exc: BaseException) -> None:
    """The failure callback of a feeder whose test expects no failure."""
    raise AssertionError(f"the feeder failed: {exc!r}")


def test_records_taken_while_a_batch_applies_are_applied_next_as_one_batch() -> None:
    applied: list[list[int]] = []
    acked: list[int] = []
    release = asyncio.Event()

    async def apply(batch: list[InRecord]) -> list[int]:
        applied.append([r.offset for r in batch])
        if len(applied) == 1:
            await release.wait()  # the first transaction is slow
        return applied[-1]

    def ack(n: int):
        async def done() -> None:
            acked.append(n)

        return done

    async def run() -> None:
        feeder = BatchFeeder(apply, nothing, max_events=lambda: 100, fail=unexpected)
        await feeder.add(records(0, 1), ack(1))
        await asyncio.sleep(0)
        await feeder.add(records(2), ack(2))
        await feeder.add(records(3, 4), ack(3))
        assert acked == [], "nothing is acknowledged before its batch is applied"
        release.set()
        while len(acked) < 3:
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert applied == [[0, 1], [2, 3, 4]]
    assert acked == [1, 2, 3]


def test_a_batch_that_cannot_be_applied_is_never_acknowledged() -> None:
    acked: list[int] = []

    async def apply(batch: list[InRecord]) -> None:
        return None  # could not apply: the worker is stopping

    async def ack() -> None:
        acked.append(1)

    async def run() -> None:
        feeder = BatchFeeder(apply, nothing, max_events=lambda: 10, fail=unexpected)
        await feeder.add(records(0), ack)
        await asyncio.sleep(0.05)

    asyncio.run(run())
    assert acked == []


def test_adding_waits_while_a_full_batch_is_gathered() -> None:
    release = asyncio.Event()
    order: list[str] = []

    async def apply(batch: list[InRecord]) -> int:
        order.append(f"apply {len(batch)}")
        await release.wait()
        return len(batch)

    async def run() -> None:
        feeder = BatchFeeder(apply, nothing, max_events=lambda: 2, fail=unexpected)
        await feeder.add(records(0), nothing)  # applying: waits on release
        await asyncio.sleep(0)
        await feeder.add(records(1, 2), nothing)  # gathered: 2 records, the limit
        blocked = asyncio.ensure_future(feeder.add(records(3), nothing))
        await asyncio.sleep(0.05)
        assert not blocked.done(), "a third add waits for room"
        release.set()
        await asyncio.wait_for(blocked, 1)
        order.append("added")

    asyncio.run(run())
    assert order[:2] == ["apply 1", "apply 2"]


def test_a_bound_that_changes_while_records_are_gathered_neither_stalls_nor_overfills() -> None:
    """The bound is asked at every add (the worker's grows while it is behind its input): gathering follows the
    bound of the moment, and one that falls below what is gathered waits for the next batch to take it."""
    release = asyncio.Event()
    bound = [4]
    applied: list[int] = []

    async def apply(batch: list[InRecord]) -> int:
        applied.append(len(batch))
        await release.wait()
        return len(batch)

    async def run() -> None:
        feeder = BatchFeeder(apply, nothing, max_events=lambda: bound[0], fail=unexpected)
        await feeder.add(records(0), nothing)  # applying: waits on release
        await asyncio.sleep(0)
        await feeder.add(records(1, 2, 3), nothing)  # gathered 3, under the bound of 4
        bound[0] = 2  # the worker caught up: the bound falls below what is gathered
        blocked = asyncio.ensure_future(feeder.add(records(4), nothing))
        await asyncio.sleep(0.05)
        assert not blocked.done(), "no room under the lower bound"
        release.set()  # the next batch takes the 3 gathered: room again
        await asyncio.wait_for(blocked, 1)
        bound[0] = 10  # behind again: more may be gathered
        await asyncio.wait_for(feeder.add(records(5, 6, 7), nothing), 1)
        while sum(applied) < 8:
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert applied[:2] == [1, 3] and sum(applied) == 8, applied


def test_envelopes_count_by_their_events() -> None:
    release = asyncio.Event()
    envelope = [InRecord("t", 0, 1, b'[{"event_id":"a"},{"event_id":"b"},{"event_id":"c"}]')]

    async def apply(batch: list[InRecord]) -> int:
        await release.wait()
        return len(batch)

    async def run() -> None:
        feeder = BatchFeeder(apply, nothing, max_events=lambda: 3, fail=unexpected)
        await feeder.add(records(0), nothing)  # applying
        await asyncio.sleep(0)
        await feeder.add(envelope, nothing)  # one record, three events: the limit
        blocked = asyncio.ensure_future(feeder.add(records(2), nothing))
        await asyncio.sleep(0.05)
        assert not blocked.done(), "one envelope of three events fills a feeder of three"
        release.set()
        await asyncio.wait_for(blocked, 1)

    asyncio.run(run())


def test_the_next_batch_is_submitted_before_the_last_one_is_finished_and_acknowledged() -> None:
    """The apply process never waits for bookkeeping; finishing and acknowledging keep the commit order."""
    log: list[str] = []
    release_first = asyncio.Event()
    second_submitted = asyncio.Event()
    release_second = asyncio.Event()

    async def apply(batch: list[InRecord]) -> int:
        first = batch[0].offset
        log.append(f"apply {first}")
        if first == 0:
            await release_first.wait()
        else:
            second_submitted.set()
            await release_second.wait()
        return first

    async def finish(first: int) -> None:
        if first == 0:
            # The second batch must be on its way before the first one's outputs and acknowledgements.
            await asyncio.wait_for(second_submitted.wait(), 1)
        log.append(f"finish {first}")

    def ack(first: int):
        async def done() -> None:
            log.append(f"ack {first}")

        return done

    async def until(entry: str) -> None:
        while entry not in log:
            await asyncio.sleep(0.01)

    async def run() -> None:
        feeder = BatchFeeder(apply, finish, max_events=lambda: 100, fail=unexpected)
        await feeder.add(records(0, 1), ack(0))
        await asyncio.sleep(0.01)  # the first batch is applying
        await feeder.add(records(2), ack(2))  # gathered meanwhile
        release_first.set()
        await asyncio.wait_for(until("ack 0"), 2)
        assert "finish 2" not in log, "a batch is finished only once applied"
        release_second.set()
        await asyncio.wait_for(until("ack 2"), 2)

    asyncio.run(run())
    assert log == ["apply 0", "apply 2", "finish 0", "ack 0", "finish 2", "ack 2"]


def test_a_batch_applied_last_is_finished_even_when_nothing_follows() -> None:
    finished: list[int] = []

    async def apply(batch: list[InRecord]) -> int:
        return batch[0].offset

    async def finish(first: int) -> None:
        finished.append(first)

    async def run() -> None:
        feeder = BatchFeeder(apply, finish, max_events=lambda: 100, fail=unexpected)
        await feeder.add(records(5), nothing)
        await asyncio.sleep(0.05)
        await feeder.add(records(6), nothing)  # after the feeder went idle
        await asyncio.sleep(0.05)

    asyncio.run(run())
    assert finished == [5, 6]


def test_a_failure_while_finishing_is_reported_and_stops_acknowledging() -> None:
    """An exception in ``finish`` must stop the worker loudly, not end the drain task silently (with committed
    outputs unpublished and records unacknowledged until a restart)."""
    acked: list[int] = []
    failures: list[BaseException] = []

    async def apply(batch: list[InRecord]) -> int:
        return batch[0].offset

    async def finish(done: int) -> None:
        if done == 1:
            raise ValueError("Counters can only be incremented by non-negative amounts.")

    def ack(n: int):
        async def done() -> None:
            acked.append(n)

        return done

    async def fail(exc: BaseException) -> None:
        failures.append(exc)

    async def run() -> None:
        feeder = BatchFeeder(apply, finish, max_events=lambda: 100, fail=fail)
        await feeder.add(records(0), ack(0))
        await asyncio.sleep(0.05)
        await feeder.add(records(1), ack(1))
        await asyncio.sleep(0.05)

    asyncio.run(run())
    assert [type(exc) for exc in failures] == [ValueError]
    assert acked == [0], "a batch whose finishing failed is not acknowledged"
