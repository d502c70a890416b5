"""The two baselines, each run as a child process on the one-event-per-record topics.

* ``aiokafka``: ``getmany`` + orjson parse with no framework, the physical reference for one Python process
  (like measurements/aiokafka_cost.py).
* ``faust``: a bare Faust agent that parses each record and does nothing else (faust_cost.py MODE=pass),
  with the worker's consumer timings (session 6 s, heartbeat 2 s).

Both time from the first record seen to the last, so connecting and the group join are left out, and print
one ``BENCH-RESULT {json}`` line. Child usage: ``python -m bench.baselines aiokafka|faust BROKER
TOPICS EXPECTED [APP_ID]`` (TOPICS comma-separated).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.procs import Children, RssSampler, log_tail

RESULT_PREFIX = "BENCH-RESULT "

#: The checkout that holds the ``bench`` package, which is not installed: the children import it from there.
_CHECKOUT = Path(__file__).resolve().parents[1]

#: A child that has seen no record for this long is stuck (the parent's timeout is the outer guard).
IDLE_LIMIT_S = 120.0


@dataclass
class BaselineResult:
    """Events, seconds from first to last record, and the child's peak RSS."""

    events: int
    seconds: float
    peak_rss: int
    #: CPU seconds the child used over the same span (its own process: the broker's share is measured apart).
    cpu_s: float

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _report(events: int, seconds: float, cpu_s: float) -> None:
    print(RESULT_PREFIX + orjson.dumps({"events": events, "seconds": seconds, "cpu_s": cpu_s}).decode(), flush=True)


# --- children -----------------------------------------------------------------------------------------


async def _aiokafka(broker: str, topics: list[str], expected: int) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=broker, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    n, first, last, cpu_first, cpu_last = 0, 0.0, 0.0, 0.0, 0.0
    idle_since = time.perf_counter()
    loads = orjson.loads
    try:
        while n < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not batch:
                if time.perf_counter() - idle_since > IDLE_LIMIT_S:
                    raise SystemExit(f"aiokafka baseline: no record for {IDLE_LIMIT_S:.0f}s after {n} of {expected}")
                continue
            if not n:
                first, cpu_first = time.perf_counter(), time.process_time()
            for msgs in batch.values():
                for msg in msgs:
                    loads(msg.value)
                n += len(msgs)
            last = idle_since = time.perf_counter()
            cpu_last = time.process_time()
    finally:
        await consumer.stop()
    _report(n, last - first, cpu_last - cpu_first)


def _faust(broker: str, topics: list[str], expected: int, app_id: str) -> None:
    import faust

    app = faust.App(
        app_id,
        broker=f"kafka://{broker}",
        store="memory://",
        broker_session_timeout=6,
        broker_heartbeat_interval=2,
        topic_partitions=4,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        datadir=str(Path.cwd() / f"{app_id}-data"),
    )
    source = app.topic(*topics, value_serializer="raw", key_serializer="raw")
    state = {"n": 0, "first": 0.0, "cpu_first": 0.0}
    loads = orjson.loads

    @app.agent(source)
    async def passthrough(stream):  # type: ignore[no-untyped-def]
        async for value in stream:
            loads(value)
            if not state["n"]:
                state["first"], state["cpu_first"] = time.perf_counter(), time.process_time()
            state["n"] += 1
            if state["n"] >= expected:
                _report(
                    state["n"],
                    time.perf_counter() - state["first"],
                    time.process_time() - state["cpu_first"],
                )
                os._exit(0)  # Faust's orderly shutdown takes seconds and measures nothing

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


def main(argv: list[str]) -> None:
    """Child entry point."""
    kind, broker, topics, expected = argv[0], argv[1], argv[2].split(","), int(argv[3])
    if kind == "aiokafka":
        asyncio.run(_aiokafka(broker, topics, expected))
    elif kind == "faust":
        _faust(broker, topics, expected, argv[4])
    else:
        raise SystemExit(f"unknown baseline {kind!r}")


# --- parent -------------------------------------------------------------------------------------------


def run_baseline(
    kind: str,
    *,
    children: Children,
    sampler: RssSampler,
    workdir: Path,
    broker: str,
    topics: list[str],
    expected: int,
    app_id: str,
    timeout: float,
    env: dict[str, str],
) -> BaselineResult:
    """Run one baseline child to completion (or kill it after ``timeout``) and read its result line."""
    log_path = workdir / f"baseline-{kind}.log"
    argv = [sys.executable, "-m", "bench.baselines", kind, broker, ",".join(topics), str(expected), app_id]
    path = os.pathsep.join(p for p in (str(_CHECKOUT), env.get("PYTHONPATH", "")) if p)
    with sampler.window() as peaks:
        proc = children.spawn(kind, argv, env={**env, "PYTHONPATH": path}, cwd=workdir, log_path=log_path)
        sampler.watch(kind, proc.pid)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if proc.poll() is None:
                raise RuntimeError(
                    f"{kind} baseline did not finish within {timeout:.0f}s; log tail:\n{log_tail(log_path)}"
                )
        finally:
            sampler.unwatch(kind)
            children.stop(proc)
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        # Faust routes a child's print through its logging ("[date] [pid] [WARNING] BENCH-RESULT {...}").
        if RESULT_PREFIX in line:
            data = orjson.loads(line.split(RESULT_PREFIX, 1)[1].strip())
            return BaselineResult(
                int(data["events"]), float(data["seconds"]), peaks.get(kind, 0), float(data.get("cpu_s", 0.0))
            )
    raise RuntimeError(f"{kind} baseline exited with {proc.returncode} and no result; log tail:\n{log_tail(log_path)}")


if __name__ == "__main__":
    main(sys.argv[1:])
