"""Progress bars on stderr for long commands: click's bar on a terminal, nothing when stderr is not one.

A phase of work is opened with its label and total (None when unknown) and gives a function to call with each
step's size. Bars redraw at most ten times a second, so a step per line costs next to nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import click

#: Called with the size of each step of work done.
Advance = Callable[[int], None]

#: Opens a phase of work: (label, total or None) -> a context giving its Advance.
Progress = Callable[[str, int | None], AbstractContextManager[Advance]]

#: Seconds between redraws of a bar.
REDRAW_S = 0.1


def _ignore(_n: int) -> None:
    """Advance nothing."""


@contextmanager
def no_progress(label: str, total: int | None) -> Iterator[Advance]:
    """A phase that shows nothing."""
    yield _ignore


@contextmanager
def stderr_progress(label: str, total: int | None) -> Iterator[Advance]:
    """A bar on stderr when it is a terminal and ``total`` is known; nothing otherwise (logs stay clean)."""
    stream = click.get_text_stream("stderr")
    if total is None or not stream.isatty():
        yield _ignore
        return
    with click.progressbar(length=total, label=label, file=stream) as bar:
        pending = 0
        drawn = time.monotonic()

        def advance(n: int) -> None:
            nonlocal pending, drawn
            pending += n
            now = time.monotonic()
            if now - drawn >= REDRAW_S:
                bar.update(pending)
                pending, drawn = 0, now

        yield advance
        bar.update(pending)
