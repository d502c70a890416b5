"""A read that is expensive and whose answer moves slowly, reused for a while: the engagement distribution scans
every customer row, and both the worker's ``/metrics`` scrapes and the read API's ``GET /v1/engagement`` ask for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")

#: Seconds an engagement distribution is served before it is read again.
ENGAGEMENT_TTL_S = 60.0


class Recent(Generic[_T]):
    """The answer of ``read``, read again at most once per ``ttl_s``.

    One read at a time: callers arriving while it runs wait for it and share its answer, so a burst of requests
    costs one read. A read that raises is not kept; each caller waiting for it then reads again itself.
    """

    def __init__(self, read: Callable[[], _T], ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._answer: tuple[float, _T] | None = None

    def get(self) -> _T:
        """The answer of the last read if it is younger than ``ttl_s``, else of a new one (blocks meanwhile)."""
        with self._lock:
            if self._answer is None or self.clock() - self._answer[0] >= self.ttl_s:
                self._answer = (self.clock(), self.read())
            return self._answer[1]
