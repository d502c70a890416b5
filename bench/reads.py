"""Profile reads (``--only profile-reads``): the read API's latency on a results database of a million touchpoints.

Issue 24 asks that a profile read stay under 50 ms on a database of at least a million touchpoints. The database is
built through the real apply path in this process (:mod:`bench.apply`: the simulated workload converted as
``cxstream simulate`` converts it, applied in the worker's batches by ``BatchProcessor`` + ``SqlSink``), once per
database kind, the same records for both. ``cxstream api`` is then started on it as a user starts it, with only
``CXSTREAM_DATABASE_URL`` and ``CXSTREAM_READ_KEYS`` set, and called over HTTP on one keep-alive connection, one
request at a time, for customers drawn at random: the profile by customer id, the profile by e-mail (the identifier
is resolved first), and the first page of the timeline. Beside the figures, the plan of every statement those
requests run (EXPLAIN QUERY PLAN on SQLite, EXPLAIN ANALYZE on PostgreSQL, for the customer with the most
touchpoints) shows which index each one uses.
"""

from __future__ import annotations

import base64
import gc
import http.client
import random
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import Engine, event, func, select, text

from bench.apply import batches_of, new_processor
from bench.procs import clean_env, cpu_seconds, free_port, log_tail
from bench.runs import BenchContext, RunFailed, fresh_database, percentile, result_rows
from schemas.touchpoint import IdentifierType
from sinks import tables as t
from sinks.database import make_engine
from sinks.queries import customer_exists, customer_of_key, customer_profile, timeline_page
from streams import apply_process
from streams.decoding import InRecord

#: The configuration's name (``--only profile-reads``).
PROFILE_READS = "profile-reads"

#: Touchpoints on a timeline page asked for (the API's default page size, stated in the request so that the
#: plan shown is the plan of the page measured).
TIMELINE_PAGE = 100

#: The requests measured, by name, as the report shows them.
REQUESTS = {
    "profile_id": "GET /v1/customers/{customer_id}",
    "profile_email": "GET /v1/customers/email:{address}",
    "timeline": f"GET /v1/customers/{{customer_id}}/timeline?limit={TIMELINE_PAGE}",
}

#: Issue 24's target: a profile read (by id or by identifier) under 50 ms at the 99th percentile ...
TARGET_P99_S = 0.050
#: ... on a database of at least this many touchpoints (a smaller one gives no verdict).
MIN_TOUCHPOINTS = 1_000_000

#: The API's read key (HTTP Basic user name).
READ_KEY = "bench-read-key"

#: Seconds the API may take to answer its first request after it was started.
API_START_S = 60.0

#: Requests of each kind sent before the measured ones (the API's pooled connections opened, its code paths run
#: once), and the seed that draws the customers.
WARMUP_PER_KIND, SEED = 50, 24

#: Seconds between two progress lines while a database is built.
PROGRESS_S = 30.0


@dataclass(frozen=True)
class Build:
    """How a database was filled: events applied, in how many batches, and the seconds applying took."""

    events: int
    batches: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        """Events applied per second of applying (conversion not included: it is done once for both kinds)."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def build(database_url: str, records: Sequence[InRecord], batch: int, label: str) -> Build:
    """Apply ``records`` to a fresh database in batches of ``batch`` events, as a worker's apply process does.

    The apply path tunes this process's cycle collector as it tunes the apply process's (``tune_collector``,
    ``settle_heap``); the benchmark's own settings come back afterwards, so the HTTP client measured next runs
    as it would anywhere.
    """
    thresholds = gc.get_threshold()
    engine, processor = new_processor(database_url)
    batches = applied = 0
    started = last_print = time.perf_counter()
    try:
        for chunk in batches_of(records, batch):
            apply_process.process(processor, chunk)
            batches, applied = batches + 1, applied + len(chunk)
            if time.perf_counter() - last_print >= PROGRESS_S:
                last_print = time.perf_counter()
                print(f"[bench]   {label}: {applied:,}/{len(records):,} events applied", flush=True)
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
        del processor  # its state cache: a customer's state each
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        gc.collect()
    return Build(len(records), batches, seconds)


# --- the database's size and contents --------------------------------------------------------------------------


def database_bytes(engine: Engine) -> int:
    """Bytes the database takes: the SQLite file and its WAL, or PostgreSQL's ``pg_database_size``."""
    if engine.dialect.name == "sqlite":
        path = engine.url.database or ""
        return sum(
            Path(f"{path}{suffix}").stat().st_size for suffix in ("", "-wal") if Path(f"{path}{suffix}").exists()
        )
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


def busiest_customer(engine: Engine) -> tuple[str, int]:
    """The customer with the most touchpoints and how many: its timeline is the largest first page to sort."""
    tp = t.touchpoints.c
    with engine.connect() as conn:
        customer_id, count = conn.execute(
            select(tp.customer_id, func.count())
            .where(tp.customer_id.is_not(None))
            .group_by(tp.customer_id)
            .order_by(func.count().desc(), tp.customer_id)
            .limit(1)
        ).one()
    return str(customer_id), int(count)


# --- what is requested ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The requests of a run: a warm-up, not measured, then the measured ones, kinds interleaved at random."""

    warmup: list[tuple[str, str]]
    measured: list[tuple[str, str]]


def plan_requests(engine: Engine, count: int, warmup: int, seed: int) -> Plan:
    """``count`` measured requests of each kind in :data:`REQUESTS` and ``warmup`` more of each, every one for a
    different customer (or e-mail address) drawn with ``seed``.

    Drawn from the sorted ids and addresses: the same database contents give the same requests on either kind.
    """
    rng = random.Random(seed)
    with engine.connect() as conn:
        ids = sorted(conn.scalars(select(t.customers.c.customer_id)))
        emails = sorted(
            conn.scalars(select(t.identities.c.id_value).where(t.identities.c.id_type == IdentifierType.EMAIL.value))
        )
    paths = {
        "profile_id": [f"/v1/customers/{quote(c, safe='')}" for c in ids],
        # As a client sends it: the ':' and '@' as they are, anything else of the address escaped.
        "profile_email": [f"/v1/customers/{quote(f'email:{e}', safe=':@')}" for e in emails],
        "timeline": [f"/v1/customers/{quote(c, safe='')}/timeline?limit={TIMELINE_PAGE}" for c in ids],
    }
    warm: list[tuple[str, str]] = []
    measured: list[tuple[str, str]] = []
    for kind, population in paths.items():
        if len(population) < count + warmup:
            raise RunFailed(f"{PROFILE_READS}: {len(population):,} to choose {count + warmup:,} {kind} requests from")
        chosen = rng.sample(population, count + warmup)
        warm += [(kind, path) for path in chosen[:warmup]]
        measured += [(kind, path) for path in chosen[warmup:]]
    rng.shuffle(warm)
    rng.shuffle(measured)
    return Plan(warm, measured)


# --- the API ------------------------------------------------------------------------------------------------------


@contextmanager
def api_process(ctx: BenchContext, database_url: str, tag: str) -> Iterator[tuple[Popen[bytes], int]]:
    """``cxstream api`` on ``database_url`` (read key :data:`READ_KEY`), once it answers; stopped on exit.

    Started as a user starts it: the command, with only the database URL and the read keys set (the caller's other
    CXSTREAM_* variables are dropped), every other setting at its default.
    """
    port = free_port()
    env = clean_env({"CXSTREAM_DATABASE_URL": database_url, "CXSTREAM_READ_KEYS": READ_KEY})
    log_path = ctx.workdir / f"{tag}-api.log"
    argv = [sys.executable, "-m", "streams.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    proc = ctx.children.spawn(f"{tag}-api", argv, env=env, cwd=ctx.workdir, log_path=log_path)
    try:
        deadline = time.monotonic() + API_START_S
        while not _answers(port):
            if proc.poll() is not None:
                raise RunFailed(f"{tag}: cxstream api exited with code {proc.returncode}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RunFailed(f"{tag}: cxstream api did not answer within {API_START_S:.0f}s:\n{log_tail(log_path)}")
            time.sleep(0.2)
        yield proc, port
    finally:
        ctx.children.stop(proc)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class Measured:
    """Seconds each measured request took, by kind, and what the run cost."""

    seconds: dict[str, list[float]]
    wall_s: float
    api_cpu_s: float
    errors: list[str]


def measure(port: int, plan: Plan, api_pid: int) -> Measured:
    """Send the plan's requests one after the other on one keep-alive connection; time each from sending the request
    to having read the whole response.

    The timed loop runs with this process's cycle collector off: a collection there would be the client's pause,
    counted as the API's latency.
    """
    auth = {"Authorization": "Basic " + base64.b64encode(f"{READ_KEY}:".encode()).decode()}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    errors: list[str] = []

    def get(path: str) -> tuple[int, bytes]:
        conn.request("GET", path, headers=auth)
        reply = conn.getresponse()
        return reply.status, reply.read()

    try:
        for _kind, path in plan.warmup:
            get(path)
        seconds: dict[str, list[float]] = {kind: [] for kind in REQUESTS}
        gc.collect()
        gc.disable()
        try:
            cpu_before = cpu_seconds(api_pid)
            started = time.perf_counter()
            for kind, path in plan.measured:
                sent = time.perf_counter()
                status, body = get(path)
                seconds[kind].append(time.perf_counter() - sent)
                if status != 200:
                    errors.append(f"{path}: {status} {body[:200]!r}")
            wall_s = time.perf_counter() - started
            api_cpu_s = cpu_seconds(api_pid) - cpu_before
        finally:
            gc.enable()
    finally:
        conn.close()
    return Measured(seconds, wall_s, api_cpu_s, errors)


def figures(seconds: list[float]) -> dict[str, float]:
    """Percentiles, mean and max of one kind's latencies (seconds), and its requests/s one after the other."""
    ordered = sorted(seconds)
    total = sum(ordered)
    return {
        "requests": len(ordered),
        **{f"p{q}": percentile(ordered, q) for q in (50, 95, 99)},
        "max": ordered[-1] if ordered else float("nan"),
        "mean": total / len(ordered) if ordered else float("nan"),
        "requests_per_s": len(ordered) / total if total > 0 else 0.0,
    }


# --- query plans --------------------------------------------------------------------------------------------------


def query_plans(database_url: str, customer_id: str, email_key: str) -> list[dict[str, Any]]:
    """The plan of every statement a profile read by e-mail and a timeline's first page run, for ``customer_id``.

    The statements are the ones ``sinks.queries`` sends, caught as they are executed (the API runs the same
    functions), so the plans cannot drift from the code. PostgreSQL's are EXPLAIN ANALYZE: they ran, with times.
    """
    engine = make_engine(database_url)
    calls: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
        ("by e-mail: first tried as a customer id (it is not one)", customer_exists, (email_key,)),
        ("by e-mail: the identifier's customer", customer_of_key, (email_key,)),
        ("the profile: its row, its identifiers", customer_profile, (customer_id,)),
        # The API reads one row more than the page to know whether another page follows.
        ("timeline: the first page", timeline_page, (customer_id, None, TIMELINE_PAGE + 1)),
    ]
    caught: list[tuple[str, Any]] = []

    def catch(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        caught.append((statement, parameters))

    spans: list[tuple[str, int, int]] = []
    try:
        with engine.connect():
            pass  # the dialect's own queries on first connect are not the API's
        event.listen(engine, "before_cursor_execute", catch)
        try:
            for label, call, args in calls:
                first = len(caught)
                call(engine, *args)
                spans.append((label, first, len(caught)))
        finally:
            event.remove(engine, "before_cursor_execute", catch)
        plans = [
            {"call": label, "sql": " ".join(sql.split()), "plan": explain(engine, sql, params)}
            for label, first, end in spans
            for sql, params in caught[first:end]
        ]
    finally:
        engine.dispose()
    return plans


def explain(engine: Engine, statement: str, parameters: Any) -> list[str]:
    """The plan of one statement as lines, indented by depth."""
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            sql = "EXPLAIN (ANALYZE, COSTS OFF) " + statement
            return [str(line) for line in conn.exec_driver_sql(sql, parameters).scalars()]
        depth: dict[int, int] = {0: -1}
        lines = []
        for node, parent, _unused, detail in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters):
            depth[node] = depth.get(parent, -1) + 1
            lines.append("  " * depth[node] + str(detail))
        return lines


# --- one database kind ------------------------------------------------------------------------------------------


def run_profile_reads(
    ctx: BenchContext,
    kind: str,
    records: Sequence[InRecord],
    *,
    batch: int,
    requests: int,
    warmup: int,
    seed: int,
    entry: dict[str, Any],
) -> None:
    """Build a database of ``kind`` from ``records``, measure the API's reads on it; the figures go into ``entry``."""
    tag = f"{PROFILE_READS}-{kind}"
    with ExitStack() as stack:
        url = stack.enter_context(fresh_database(ctx, kind, tag))
        print(f"[bench]   {tag}: applying {len(records):,} events in batches of {batch:,}", flush=True)
        built = build(url, records, batch, tag)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        with engine.connect() as conn:
            rows = result_rows(conn)
        size = database_bytes(engine)
        busiest, most = busiest_customer(engine)
        entry.update(
            build={**built.__dict__, "events_per_s": built.events_per_s},
            rows_by_table=rows,
            touchpoints=rows["touchpoints"],
            database_bytes=size,
            most_touchpoints=most,
        )
        print(
            f"[bench]   {tag}: {rows['touchpoints']:,} touchpoints, {rows['customers']:,} customers in "
            f"{built.seconds:.0f}s ({built.events_per_s:,.0f} events/s); {size / 1e6:,.0f} MB",
            flush=True,
        )
        plan = plan_requests(engine, requests, warmup, seed)
        peaks = stack.enter_context(ctx.sampler.window())
        proc, port = stack.enter_context(api_process(ctx, url, tag))
        ctx.sampler.watch(f"{tag}-api", proc.pid)
        stack.callback(ctx.sampler.unwatch, f"{tag}-api")
        run = measure(port, plan, proc.pid)
        ctx.sampler.sample_now()
        if run.errors:
            raise RunFailed(
                f"{tag}: {len(run.errors):,} requests did not answer 200, e.g.:\n" + "\n".join(run.errors[:5])
            )
        total = sum(len(s) for s in run.seconds.values())
        entry.update(
            requests={kind_: figures(s) for kind_, s in run.seconds.items()},
            wall_s=run.wall_s,
            requests_per_s=total / run.wall_s if run.wall_s > 0 else 0.0,
            api_cpu_ms_per_request=1e3 * run.api_cpu_s / total if total else None,
            api_peak_rss=peaks.get(f"{tag}-api", 0),
            plans=query_plans(url, busiest, _email_key(plan)),
            status="ok",
        )
        for name, fig in entry["requests"].items():
            print(
                f"[bench]   {tag}: {name} p50 {1e3 * fig['p50']:.1f} ms, p95 {1e3 * fig['p95']:.1f} ms, "
                f"p99 {1e3 * fig['p99']:.1f} ms, max {1e3 * fig['max']:.1f} ms ({fig['requests_per_s']:,.0f}/s)",
                flush=True,
            )


def _email_key(plan: Plan) -> str:
    """The identifier one of the plan's e-mail requests names (for the plans of its statements)."""
    path = next(path for kind, path in plan.measured if kind == "profile_email")
    return unquote(path.removeprefix("/v1/customers/"))


def profile_p99(entry: dict[str, Any]) -> float | None:
    """The target's figure: the slower p99 of the two profile reads (by id, by e-mail), in seconds; None without."""
    reqs = entry.get("requests") or {}
    values = [reqs[k]["p99"] for k in ("profile_id", "profile_email") if k in reqs]
    return max(values) if values else None
