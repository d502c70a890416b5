"""A worker behind its input takes bigger batches (``CXSTREAM_BATCH_MAX_EVENTS_BEHIND``), and the normal ones
(``CXSTREAM_BATCH_MAX_EVENTS``) once it keeps up: a history load ends sooner, and live input waits no longer."""

from __future__ import annotations

from sinks.database import make_engine
from tests.integration.test_event_time import BATCH_LINE
from tests.support.processes import wait_until
from tests.support.results import run_cli, wait_applied
from tests.support.workers import WorkerFactory, WorkerProcess


def batch_sizes(log: str) -> list[int]:
    """The events each logged batch applied, in order."""
    return [int(line["applied"].replace(",", "")) for line in BATCH_LINE.finditer(log)]


def settled(worker: WorkerProcess) -> list[int]:
    """The logged batch sizes once no new batch line has come for a while (a batch is logged after its commit)."""
    seen: list[list[int]] = [[]]

    def still() -> bool:
        sizes = batch_sizes(worker.log())
        same = sizes == seen[0]
        seen[0] = sizes
        return same and bool(sizes)

    wait_until(still, 30, "the batch lines to settle", interval=1.5)
    return seen[0]


def test_batches_grow_while_the_worker_is_behind_and_shrink_once_it_keeps_up(
    kafka_url: str, topic_prefix: str, sqlite_url: str, workers: WorkerFactory
) -> None:
    env = workers.env(
        sqlite_url, topic_prefix, batch_max_events="100", batch_max_events_behind="1000", batch_behind_s="2.0"
    )
    # A history waiting before the worker starts: about 8,000 events, seconds of its work in batches of 100.
    run_cli(env, "simulate", "--customers", "1500", "--days", "7", "--malformed", "0", "--seed", "3")
    worker = workers.start(env, loglevel="info")
    engine = make_engine(sqlite_url)
    wait_applied(engine, kafka_url, topic_prefix, env["CXSTREAM_APP_ID"], timeout=180)
    backlog = settled(worker)
    assert max(backlog) > 100, f"batches grew while the worker was behind: {backlog}"
    assert max(backlog) <= 1000, backlog
    # Live input, at 1,000 events/s: the worker keeps up (about 600 events, well under the 2 s of its work that
    # count as behind, even on a loaded machine), and its batches are the normal ones again, though more than 100
    # arrive within a take's wait.
    run_cli(env, "simulate", "--customers", "150", "--days", "3", "--rate", "1000", "--malformed", "0", "--seed", "4")
    wait_applied(engine, kafka_url, topic_prefix, env["CXSTREAM_APP_ID"], timeout=60)
    live = settled(worker)[len(backlog) :]
    assert live and max(live) <= 100, f"the live input's batches: {live}"
