"""Soak (``pytest --soak``): a million events through one worker, whose memory stays flat after warm-up.

A worker's state is bounded by the dedupe horizon, the timeline limit and the state cache, not by how many
events went through it; this run shows it (with a small cache, so that it is full well before the middle third).
Both processes of the worker are watched: the Faust process and the apply process, which holds the state cache.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from config.topics import Topics
from sinks.database import make_engine
from tests.support.processes import wait_until
from tests.support.results import caught_up, end_offsets, run_cli

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]

#: About a million events: ~10.6 per simulated customer over 30 days.
SIMULATION = ("--customers", "95000", "--days", "30", "--seed", "21", "--envelope", "100")


def anon_mb(pid: int) -> float:
    """Anonymous resident memory of a process (Linux): its heap, not the file pages it maps.

    File-backed pages (libraries, anything mapped) are the OS's to share and reclaim; a leak of worker state
    shows in the anonymous ones.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no RssAnon for {pid}")


def flat_after_warm_up(name: str, samples: list[float]) -> None:
    """The last third of a run's samples peaks at most 15% above the middle third's peak."""
    third = len(samples) // 3
    warm = max(samples[third : 2 * third])
    late = max(samples[2 * third :])
    print(f"{name} anonymous RSS: warm {warm:.0f} MB, last third {late:.0f} MB, peak {max(samples):.0f} MB")
    assert late <= warm * 1.15, f"{name} memory grew from {warm:.0f} MB to {late:.0f} MB after warm-up"


def test_a_million_events_keep_the_worker_memory_flat(kafka_url, topic_prefix, sqlite_url, workers) -> None:
    # A small state cache fills within the first third of the run, so growth after it is not the cache filling.
    env = workers.env(sqlite_url, topic_prefix, state_cache_customers="5000")
    run_cli(env, "simulate", *SIMULATION, timeout=1800)
    ends = end_offsets(kafka_url, Topics(topic_prefix).channels)
    engine = make_engine(sqlite_url)
    worker = workers.start(env)
    samples: dict[str, list[float]] = {"Faust process": [], "apply process": []}
    failures: list[BaseException] = []
    done = threading.Event()

    def sample() -> None:
        applier: int | None = None
        try:
            while not done.is_set():
                samples["Faust process"].append(anon_mb(worker.proc.pid))
                applier = applier or worker.apply_pid()  # started once partitions are assigned
                if applier is not None:
                    samples["apply process"].append(anon_mb(applier))
                time.sleep(1.0)
        except BaseException as exc:  # re-raised by the test: a dead sampler must not pass for a flat run
            failures.append(exc)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wait_until(
            lambda: bool(failures) or caught_up(engine, env["CXSTREAM_APP_ID"], ends),
            3600,
            "the worker to apply everything",
        )
    finally:
        done.set()
        sampler.join()
    if failures:
        raise failures[0]
    for name, series in samples.items():
        assert len(series) > 60, f"the run was too short to say anything about the {name}'s memory"
        flat_after_warm_up(name, series)
