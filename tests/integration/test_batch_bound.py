"""A worker behind its input takes bigger batches (``CXSTREAM_BATCH_MAX_EVENTS_BEHIND``), and the normal ones
(``CXSTREAM_BATCH_MAX_EVENTS``) once it keeps up: a history load ends sooner, and live input waits no longer."""

from __future__ import annotations

import re

from sinks.database import make_engine
from tests.integration.test_event_time import BATCH_LINE
from tests.support.processes import wait_until
from tests.support.results import run_cli, wait_applied
from tests.support.workers import WorkerFactory


def batch_sizes(log: str) -> list[int]:
    """The events each logged batch applied, in order."""
    return [int(line["applied"].replace(",", "")) for line in BATCH_LINE.finditer(log)]


def test_batches_grow_while_the_worker_is_behind_and_shrink_once_it_keeps_up(
    kafka_url: str, topic_prefix: str, sqlite_url: str, workers: WorkerFactory
) -> None:
    env = workers.env(
        sqlite_url, topic_prefix, batch_max_events="100", batch_max_events_behind="1000", batch_behind_s="0.5"
    )
    # A history waiting before the worker starts: several seconds of its work.
    run_cli(env, "simulate", "--customers", "400", "--days", "7", "--malformed", "0", "--seed", "3")
    worker = workers.start(env, loglevel="info")
    engine = make_engine(sqlite_url)
    wait_applied(engine, kafka_url, topic_prefix, env["CXSTREAM_APP_ID"], timeout=180)
    wait_until(lambda: bool(batch_sizes(worker.log())), 20, "the batch lines")
    backlog = batch_sizes(worker.log())
    assert max(backlog) > 100, f"batches grew while the worker was behind: {backlog}"
    assert max(backlog) <= 1000, backlog
    # Live input, a little at a time: the worker keeps up, and its batches are the normal ones again.
    run_cli(env, "simulate", "--customers", "150", "--days", "3", "--rate", "1000", "--malformed", "0", "--seed", "4")
    wait_applied(engine, kafka_url, topic_prefix, env["CXSTREAM_APP_ID"], timeout=60)
    wait_until(lambda: len(batch_sizes(worker.log())) > len(backlog), 20, "the live batches' lines")
    live = batch_sizes(worker.log())[len(backlog) :]
    assert live and max(live) <= 100, f"the live input's batches: {live}"
    assert re.search(r"lag 0 records", worker.log())
