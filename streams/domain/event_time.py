"""Event time per input partition, and the consumer group's watermark (the Flink and Kafka Streams model).

Each input partition has its own event time: the greatest ``occurred_at`` read from it. The group's watermark
is the *least* event time of the partitions still active, so one channel's backlog, or a partition consumed
before the others, never moves the watermark for everyone: windows close and issues turn overdue only when
every active partition has passed them. A partition is active while it has a backlog or had a new record within
``idle_s``; an idle one stops holding the watermark back (a channel with no traffic tonight must not stop the
clock). When every partition is idle, the watermark is the greatest event time read: nothing else is coming.

An active partition whose event time is not known yet (a backlog not read from) holds the watermark where it
is. The watermark never goes back, and never runs more than ``MAX_CLOCK_SKEW_S`` ahead of the wall clock: a
record dated in the year 9999 is applied like any other, but must not close every window and make every open
issue overdue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

#: An input partition: (topic, partition).
TopicPartition = tuple[str, int]

#: Furthest the watermark may run ahead of the wall clock, seconds (sources' clocks are not all right).
MAX_CLOCK_SKEW_S = 86400.0


class PartitionTime(NamedTuple):
    """What the group knows of one input partition's progress in event time."""

    #: Greatest event time read from the partition (epoch seconds), or None before its first event.
    event_time: float | None
    #: Wall-clock time (epoch seconds) it last had a new record, or a backlog.
    active_at: float | None


def advance(
    known: Mapping[TopicPartition, PartitionTime],
    read: Mapping[TopicPartition, float],
    backlog: Iterable[TopicPartition],
    now: float,
) -> dict[TopicPartition, PartitionTime]:
    """The partitions whose time moves: those read from (``read``: greatest event time per partition in this
    batch, None-free) and those with a ``backlog``; each is active at ``now``."""
    moved: dict[TopicPartition, PartitionTime] = {}
    ceiling = now + MAX_CLOCK_SKEW_S
    for tp, latest in read.items():
        before = known.get(tp)
        previous = None if before is None else before.event_time
        latest = min(latest, ceiling)
        moved[tp] = PartitionTime(latest if previous is None else max(previous, latest), now)
    for tp in backlog:
        if tp not in moved:
            before = known.get(tp)
            moved[tp] = PartitionTime(None if before is None else before.event_time, now)
    return moved


def watermark(
    partitions: Mapping[TopicPartition, PartitionTime],
    now: float,
    idle_s: float,
    previous: float | None,
    parked: float | None = None,
) -> float | None:
    """The group's watermark over its partitions (see the module docstring); ``previous`` is the last one.
    ``parked``: the earliest event time of the events read but not applied yet (parked while another worker held
    their customer): the watermark waits for them, as it waits for a partition's backlog."""
    active = [p for p in partitions.values() if p.active_at is not None and now - p.active_at <= idle_s]
    candidate: float | None
    if active:
        times = [p.event_time for p in active]
        candidate = None if None in times else min(t for t in times if t is not None)
    else:
        known = [p.event_time for p in partitions.values() if p.event_time is not None]
        candidate = max(known) if known else None
    if candidate is None:
        return previous
    candidate = min(candidate, now + MAX_CLOCK_SKEW_S)
    if parked is not None:
        candidate = min(candidate, parked)
    return candidate if previous is None else max(previous, candidate)
