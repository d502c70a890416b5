"""``Recent``: an expensive read reused for a while, one read at a time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from streams.recent import Recent


class Reads:
    """A read that counts its calls and answers with their number."""

    def __init__(self, pause_s: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.pause_s = pause_s
        self.fail = fail

    def __call__(self) -> int:
        self.calls += 1
        time.sleep(self.pause_s)
        if self.fail:
            raise ConnectionError("database down")
        return self.calls


def test_an_answer_is_reused_until_it_is_ttl_old_then_read_again() -> None:
    now = [100.0]
    read = Reads()
    recent = Recent(read, ttl_s=60.0, clock=lambda: now[0])
    assert (recent.get(), recent.get()) == (1, 1)
    now[0] += 59.9
    assert recent.get() == 1 and read.calls == 1
    now[0] += 0.1
    assert recent.get() == 2 and read.calls == 2


def test_callers_arriving_during_a_read_wait_for_it_and_share_its_answer() -> None:
    read = Reads(pause_s=0.3)
    recent = Recent(read, ttl_s=60.0)
    started = threading.Barrier(8)

    def ask() -> int:
        started.wait()
        return recent.get()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ask(), range(8)))
    assert answers == [1] * 8 and read.calls == 1


def test_a_failed_read_is_not_kept() -> None:
    read = Reads(fail=True)
    recent = Recent(read, ttl_s=60.0)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            recent.get()
    read.fail = False
    assert recent.get() == 3 and read.calls == 3
