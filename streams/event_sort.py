"""External merge sort of encoded events by event time, in bounded memory.

A history load can hold tens of millions of lines: too many to sort in memory. Events are gathered into a run of
at most ``run_events`` events or ``run_bytes`` (approximate) bytes; a full run is sorted and spilled to a temporary
file, and at the end the runs are merged with ``heapq.merge``, each read front to back. At most ``fan_in`` runs are
merged at once, since each open run costs a file descriptor and a read buffer; when there are more, the oldest
runs are first merged into bigger ones. So memory holds one run plus one record and one buffer per open run,
whatever the size of the input, and the disk holds about the input's encoded events (twice during a merge pass).

Order: ``occurred_at`` as an instant (microseconds since the epoch, whatever the UTC offset), then ``event_id``,
then the order events were added. Ties are so broken the same way on every run with the same input.

What is spilled is only what publishing needs: the sort key, the channel, the Kafka key and the event's JSON.
"""

from __future__ import annotations

import heapq
import itertools
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple

from streams.publisher import EncodedEvent

#: Default largest run held in memory before it is spilled, in events and in approximate bytes.
RUN_EVENTS = 250_000
RUN_BYTES = 64 * 1024 * 1024

#: Default most runs merged at once.
FAN_IN = 128

#: Python's own cost of one buffered event (a tuple, two ints, a str and three bytes objects), roughly, so that
#: ``run_bytes`` bounds memory rather than payload alone.
EVENT_OVERHEAD_BYTES = 300

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# occurred_us, seq, then the lengths of event_id, channel, key and value; each followed by those bytes.
_HEADER = struct.Struct("<qQIIII")
_BUFFER_BYTES = 256 * 1024


class SortedEvent(NamedTuple):
    """One event in the sort: the sort key (time, id, arrival) first, then what publishing it needs."""

    occurred_us: int
    event_id: str
    seq: int
    channel: str
    key: bytes
    value: bytes

    @property
    def occurred_at(self) -> datetime:
        """The event time as a UTC datetime."""
        return _EPOCH + self.occurred_us * _MICROSECOND

    @property
    def encoded(self) -> EncodedEvent:
        """The event as ``Publisher.encoded`` takes it."""
        return EncodedEvent(self.channel, self.key, self.value)


def epoch_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime: one instant, one number, whatever its offset."""
    return (moment - _EPOCH) // _MICROSECOND


class EventSorter:
    """Collects encoded events and gives them back sorted by event time, spilling sorted runs to temporary files.

    Use it as a context manager: leaving it (normally, on an error or on Ctrl-C) removes every temporary file.
    ``directory`` is where the temporary directory is made (default: the system's, ``TMPDIR``).
    """

    def __init__(
        self,
        *,
        run_events: int = RUN_EVENTS,
        run_bytes: int = RUN_BYTES,
        fan_in: int = FAN_IN,
        directory: str | Path | None = None,
    ) -> None:
        if run_events < 1 or run_bytes < 1 or fan_in < 2:
            raise ValueError("run_events and run_bytes must be positive and fan_in at least 2")
        self.run_events = run_events
        self.run_bytes = run_bytes
        self.fan_in = fan_in
        self.directory = directory
        #: Events added so far.
        self.count = 0
        #: Run files written so far, merge passes included.
        self.runs_spilled = 0
        self._buffer: list[SortedEvent] = []
        self._buffer_bytes = 0
        self._runs: list[Path] = []
        self._tmp: Path | None = None
        self._open: set[BinaryIO] = set()
        self._merging = False

    def __enter__(self) -> EventSorter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def temp_dir(self) -> Path | None:
        """The temporary directory holding the runs, once one was spilled."""
        return self._tmp

    def add(self, occurred_at: datetime, event_id: str, event: EncodedEvent) -> None:
        """Add one event; spills the run in memory when it is full."""
        if self._merging:
            raise RuntimeError("events cannot be added once merging started")
        record = SortedEvent(epoch_us(occurred_at), event_id, self.count, event.channel, event.key, event.value)
        self.count += 1
        self._buffer.append(record)
        self._buffer_bytes += len(event_id) + len(event.key) + len(event.value) + EVENT_OVERHEAD_BYTES
        if len(self._buffer) >= self.run_events or self._buffer_bytes >= self.run_bytes:
            self._runs.append(self._write_run(sorted(self._buffer)))
            self._buffer = []
            self._buffer_bytes = 0

    def merged(self) -> Iterator[SortedEvent]:
        """Every event added, sorted by (event time, event id, order added); may be iterated once."""
        if self._merging:
            raise RuntimeError("merged() may be called once")
        self._merging = True
        # The last, partial run stays in memory as one of the merged inputs: no need to write it.
        last = sorted(self._buffer)
        self._buffer = []
        while len(self._runs) + 1 > self.fan_in:
            batch, self._runs = self._runs[: self.fan_in], self._runs[self.fan_in :]
            self._runs.append(self._write_run(heapq.merge(*(self._read_run(path) for path in batch))))
            for path in batch:
                path.unlink()
        return heapq.merge(*(self._read_run(path) for path in self._runs), last)

    def close(self) -> None:
        """Close every run file and remove the temporary directory; safe to call more than once."""
        for handle in list(self._open):
            handle.close()
        self._open.clear()
        self._buffer = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._runs = []

    # --- run files -------------------------------------------------------------------------------

    def _write_run(self, records: Iterable[SortedEvent]) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="cxstream-sort-", dir=self.directory))
        path = self._tmp / f"run-{self.runs_spilled:06d}"
        self.runs_spilled += 1
        with path.open("wb", buffering=_BUFFER_BYTES) as out:
            for rec in records:
                event_id, channel = rec.event_id.encode(), rec.channel.encode()
                header = _HEADER.pack(
                    rec.occurred_us, rec.seq, len(event_id), len(channel), len(rec.key), len(rec.value)
                )
                out.write(b"".join((header, event_id, channel, rec.key, rec.value)))
        return path

    def _read_run(self, path: Path) -> Iterator[SortedEvent]:
        handle = path.open("rb", buffering=_BUFFER_BYTES)
        self._open.add(handle)
        try:
            for head in iter(lambda: handle.read(_HEADER.size), b""):
                occurred_us, seq, n_id, n_channel, n_key, n_value = _HEADER.unpack(head)
                body = handle.read(n_id + n_channel + n_key + n_value)
                cut = itertools.accumulate((n_id, n_channel, n_key))
                at_channel, at_key, at_value = cut
                yield SortedEvent(
                    occurred_us,
                    body[:at_channel].decode(),
                    seq,
                    body[at_channel:at_key].decode(),
                    body[at_key:at_value],
                    body[at_value:],
                )
        finally:
            handle.close()
            self._open.discard(handle)
