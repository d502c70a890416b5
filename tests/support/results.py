"""Reading a run's results for comparison: SQL snapshots, consumed inputs, completion checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from config.topics import Topics
from schemas.touchpoint import TouchpointEvent
from sinks import tables as t
from streams.domain.metrics import METRICS
from tests.support.kafka import log_ends, read_topic
from tests.support.processes import wait_until

#: Tables whose rows are the results a user sees (stream bookkeeping left out).
RESULT_TABLES = ("customers", "identities", "touchpoints", "metrics", "metric_cells", "alerts", "identity_merges")

#: Columns that record when or how often a row was written rather than what it says.
#: Columns that follow how input happened to arrive, not what it was: commit times, row versions, and the keys an
#: event linked when first applied (recorded once for a split; later merges and splits do not rewrite them).
BOOKKEEPING_COLUMNS = {"committed_at", "version", "identifier_keys"}


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run a cxstream command with ``env`` and fail with its output if it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], env={**os.environ, **env}, capture_output=True, timeout=timeout
    )
    assert proc.returncode == 0, f"cxstream {' '.join(args)} failed:\n{proc.stdout.decode()}\n{proc.stderr.decode()}"
    return proc


def consumed_events(kafka_url: str, prefix: str) -> list[TouchpointEvent]:
    """Every event on the channel topics (one per record or envelopes), as the worker reads them."""
    import orjson

    events: list[TouchpointEvent] = []
    for topic in Topics(prefix).channels:
        for _, value in read_topic(kafka_url, topic, timeout=20):
            body = orjson.loads(value)
            for item in body if isinstance(body, list) else [body]:
                events.append(TouchpointEvent.model_validate(item))
    return events


def end_offsets(kafka_url: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """One past the last offset of every partition of ``topics``, read from the log itself.

    The embedded broker's ListOffsets can answer short of the real log end (more so after a restart), which
    would make a run look finished early; reading the partitions to the end cannot.
    """
    return log_ends(kafka_url, topics)


def caught_up(engine: Engine, group_id: str, ends: dict[tuple[str, int], int]) -> bool:
    """True when the worker has applied every record below ``ends`` (no event of them parked) and published its
    outbox."""
    with engine.connect() as conn:
        applied = {
            (topic, part): off
            for topic, part, off in conn.execute(
                select(t.stream_offsets.c.topic, t.stream_offsets.c.partition, t.stream_offsets.c.applied_offset).where(
                    t.stream_offsets.c.group_id == group_id
                )
            )
        }
        pending = conn.execute(select(t.outbox.c.id)).first()
        parked = conn.execute(select(t.parked_events.c.id).where(t.parked_events.c.group_id == group_id)).first()
    return (
        pending is None
        and parked is None
        and all(applied.get(tp, -1) >= end - 1 for tp, end in ends.items() if end > 0)
    )


def settled(engine: Engine, group_id: str, ends: dict[tuple[str, int], int]) -> bool:
    """``caught_up``, and every input partition idle since: the watermark reached the latest event time read and
    was swept (windows final, issues overdue), so nothing more changes until new records arrive."""
    if not caught_up(engine, group_id, ends):
        return False
    with engine.connect() as conn:
        p, c = t.stream_partitions.c, t.stream_clock.c
        latest = conn.scalar(select(func.max(p.event_time)).where(p.group_id == group_id))
        swept = conn.scalar(select(c.swept_to).where(c.group_id == group_id))
    if latest is None:
        return True
    return swept is not None and _utc(swept) >= min(_utc(latest), datetime.now(UTC) + timedelta(days=1))


def wait_settled(engine: Engine, kafka_url: str, prefix: str, group: str, timeout: float = 90) -> None:
    """Wait until the worker applied everything published so far and every partition went idle."""
    ends = end_offsets(kafka_url, Topics(prefix).channels)
    wait_until(lambda: settled(engine, group, ends), timeout, "the worker to apply every record and go idle")


def wait_applied(engine: Engine, kafka_url: str, prefix: str, group: str, timeout: float = 60) -> None:
    """Wait until the worker has applied everything published so far on the channel topics."""
    ends = end_offsets(kafka_url, Topics(prefix).channels)
    wait_until(lambda: caught_up(engine, group, ends), timeout, "the worker to apply every record")


def overall_counters(conn: Connection) -> dict[str, float]:
    """Counters of the all-time ``overall`` metric cell (``touchpoints`` counts every event applied)."""
    c = t.metric_cells.c
    return dict(conn.execute(select(c.counters).where(c.scope == "overall", c.window == "all")).scalar_one())


def prometheus_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` on a /metrics page."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every result row, sorted, without wall-clock columns: equal snapshots mean equal results."""
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for name in RESULT_TABLES:
            table = t.RESULTS[name]
            rows = [
                plain_row({k: v for k, v in row.items() if k not in BOOKKEEPING_COLUMNS})
                for row in conn.execute(select(table)).mappings()
            ]
            out[name] = sorted(rows, key=lambda r: repr(sorted(r.items())))
    return out


def final_survivors(snap: dict[str, list[dict]]) -> dict[str, str]:
    """Where each merged customer id ended up, following chains of merges."""
    into = {row["merged_id"]: row["survivor_id"] for row in snap["identity_merges"]}
    current = {row["customer_id"] for row in snap["customers"]}
    resolved = {}
    for merged in into:
        target = into[merged]
        while target in into and target not in current:
            target = into[target]
        resolved[merged] = target
    return {m: s for m, s in resolved.items() if m not in current}


def without_versions(snap: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """A snapshot without the version bookkeeping that follows how input happened to be batched.

    A metric's ``revision`` (and the ``<basis>_retracted`` counters it is computed from) counts the entry versions
    the worker emitted, and an entry is re-emitted only when a later event changing it came in a later batch: two
    runs whose batches were cut differently (a crash, another interleaving of partitions) publish the same values
    under different revision numbers. For the same reason a figure all of whose entry versions were withdrawn
    (its basis back to 0) exists in one run and not in another: such figures are left out. Everything else must
    be equal.
    """
    out = dict(snap)
    counters = {
        (row["scope"], row["key"], row["window"], row["window_start"]): row["counters"] for row in snap["metric_cells"]
    }
    basis = {name: metric.basis for name, metric in METRICS.items()}
    out["metrics"] = sorted(
        (
            {k: v for k, v in row.items() if k != "revision"}
            for row in snap["metrics"]
            if counters.get((row["scope"], row["key"], row["window"], row["window_start"]), {}).get(
                basis[row["metric"]]
            )
        ),
        key=lambda r: repr(sorted(r.items())),
    )
    out["metric_cells"] = sorted(
        (
            {**row, "counters": {k: v for k, v in row["counters"].items() if not k.endswith("_retracted")}}
            for row in snap["metric_cells"]
        ),
        key=lambda r: repr(sorted(r.items())),
    )
    return out


def snapshot_diff(expected: dict[str, list[dict[str, Any]]], got: dict[str, list[dict[str, Any]]]) -> str:
    """A short account of the rows that differ between two snapshots ('' when they are equal)."""
    lines = []
    for table in sorted(expected.keys() | got.keys()):
        want = {repr(row): row for row in expected.get(table, [])}
        have = {repr(row): row for row in got.get(table, [])}
        missing, extra = [want[k] for k in want.keys() - have.keys()], [have[k] for k in have.keys() - want.keys()]
        if missing or extra:
            lines.append(f"{table}: {len(missing)} row(s) only expected, {len(extra)} only got")
            lines += [f"  - {row}" for row in missing[:3]] + [f"  + {row}" for row in extra[:3]]
    return "\n".join(lines)


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row with plain comparable values (UTC ISO timestamps, normalised decimals, rounded floats)."""
    return {k: _plain(v) for k, v in row.items()}


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _plain(value: Any) -> Any:

    if isinstance(value, datetime):
        return (value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)).isoformat()
    if isinstance(value, Decimal):
        return str(value.normalize())
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    return value
