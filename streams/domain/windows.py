"""Event-time tumbling windows for metrics: 1h, 1d, 7d, 30d, and the all-time window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.windows import window_seconds

#: Start and end given to the all-time window, so that every window has bounds.
ALL_TIME_START = datetime(1970, 1, 1, tzinfo=UTC)
ALL_TIME_END = datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """A tumbling window size, aligned to the Unix epoch; ``seconds`` is None for the all-time window."""

    name: str
    seconds: int | None

    def bounds(self, ts: datetime) -> tuple[datetime, datetime]:
        """Return the [start, end) of the window holding ``ts``."""
        if self.seconds is None:
            return ALL_TIME_START, ALL_TIME_END
        epoch = int(ts.timestamp())
        start = epoch - epoch % self.seconds
        begin = datetime.fromtimestamp(start, tz=UTC)
        return begin, begin + timedelta(seconds=self.seconds)


def parse_window(name: str) -> Window:
    """Parse a window name such as ``1h``, ``7d`` or ``all`` (``schemas.windows``); raise ValueError otherwise."""
    return Window(name, window_seconds(name))
