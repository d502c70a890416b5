"""Publishing source files of several channels at once, in event-time order: an initial load of history.

Each source system exports in its own order, and published one channel after another, the stream job would see
weeks of one channel before any of another. So by default the valid events of all the files are published
merged by ``occurred_at`` (ties by ``event_id``), through an external sort (``streams.event_sort``) that keeps
memory bounded however long the history is; files are read line by line, never whole. Bad lines are
dead-lettered as they are read, exactly as a single file's would be. ``order="file"`` publishes file by file as
read, with no sorting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from schemas.touchpoint import TouchpointEvent
from streams.adapters.reader import read_records
from streams.domain.identifiers import IdentifierHashing
from streams.event_sort import RUN_EVENTS, EventSorter
from streams.progress import Progress, no_progress
from streams.publisher import Publisher, encode_event, route_items
from streams.sources import SourceFile

Order = Literal["time", "file"]


@dataclass
class BackfillReport:
    """What a backfill read and sent: files, bytes, valid events and their event-time span, and how long it took."""

    order: Order
    files: int
    bytes_read: int = 0
    events: int = 0
    first: datetime | None = None
    last: datetime | None = None
    read_s: float = 0.0
    publish_s: float = 0.0

    def count(self, event: TouchpointEvent) -> None:
        """Count one valid event and widen the event-time span to hold it."""
        self.events += 1
        if self.first is None or event.occurred_at < self.first:
            self.first = event.occurred_at
        if self.last is None or event.occurred_at > self.last:
            self.last = event.occurred_at

    def render(self) -> str:
        """One line for the command's summary: events, files, order and event-time span."""
        files = f"{self.files} file{'' if self.files == 1 else 's'}"
        if self.first is None or self.last is None:
            return f"no valid events in {files}"
        what = (
            f"merged {self.events} events from {files} in event-time order"
            if self.order == "time"
            else f"{self.events} events from {files} in file order"
        )
        return f"{what}, occurred_at {_utc(self.first)} to {_utc(self.last)}"

    def timing(self) -> str:
        """One line on how long reading and sending took."""
        read = f"read {self.bytes_read:,} bytes of {self.files} file{'' if self.files == 1 else 's'}"
        if self.order == "file":
            return f"{read} and sent {self.events:,} events in {self.read_s:.1f} s"
        return (
            f"{read} in {self.read_s:.1f} s, sent {self.events:,} events in event-time order in {self.publish_s:.1f} s"
        )


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def publish_sources(
    publisher: Publisher,
    sources: Sequence[SourceFile],
    *,
    order: Order = "time",
    default_region: str = "GB",
    hashing: IdentifierHashing | None = None,
    progress: Progress = no_progress,
    run_events: int = RUN_EVENTS,
    temp_dir: str | Path | None = None,
) -> BackfillReport:
    """Read ``sources`` and publish their events in ``order``, dead-lettering bad lines as they are read.

    Does not close the publisher: the caller does, and renders its summary. ``run_events`` and ``temp_dir``
    size and place the external sort's runs (see ``EventSorter``); its temporary files are gone when this returns
    or raises, Ctrl-C included. With ``hashing``, events are hashed as they are read, so neither the topics nor
    the sort's temporary files hold a raw e-mail or phone number.
    """
    report = BackfillReport(order, files=len(sources))
    sizes = [source.size() for source in sources]
    total = None if None in sizes else sum(size or 0 for size in sizes)
    if order == "file":
        _read(publisher, sources, report, progress, total, default_region, hashing, publisher.event)
        return report
    with EventSorter(run_events=run_events, directory=temp_dir) as sorter:
        _read(
            publisher,
            sources,
            report,
            progress,
            total,
            default_region,
            hashing,
            lambda event: sorter.add(event.occurred_at, event.event_id, encode_event(event)),
        )
        started = time.monotonic()
        with progress("publishing", sorter.count) as advance:
            for record in sorter.merged():
                publisher.encoded(record.encoded)
                advance(1)
        report.publish_s = time.monotonic() - started
    return report


def _read(
    publisher: Publisher,
    sources: Sequence[SourceFile],
    report: BackfillReport,
    progress: Progress,
    total: int | None,
    default_region: str,
    hashing: IdentifierHashing | None,
    accept: Callable[[TouchpointEvent], None],
) -> None:
    """Read every source line by line: dead letters to the publisher, valid events counted and given to accept."""

    def counted(event: TouchpointEvent) -> None:
        report.count(event)
        accept(event)

    started = time.monotonic()
    with progress("reading", total) as advance:

        def read_bytes(n: int) -> None:
            report.bytes_read += n
            advance(n)

        for source in sources:
            with source.lines(read_bytes) as lines:
                items = read_records(
                    source.channel,
                    lines,
                    source_file=source.name,
                    fmt=source.fmt,
                    default_region=default_region,
                    hashing=hashing,
                )
                route_items(publisher, items, counted)
    report.read_s = time.monotonic() - started
