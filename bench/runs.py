"""Pipeline runs: real ``cxstream worker`` processes on a fresh database, timed from the SQL they commit.

A run is done when every channel-topic partition's end offset is in ``stream_offsets`` and the ``outbox`` is
empty (everything applied and published downstream). The sustained rate is timed from the database's own
clock: from the first ``touchpoints.committed_at`` to done, counting the events processed after that first
batch, which leaves out the worker's start-up and group join the same way the baselines do (see
:attr:`PipelineResult.sustained_eps`); the wall time from starting the worker to done is reported beside it.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import Popen
from typing import Any

import psutil
from sqlalchemy import Connection, Engine, create_engine, func, select
from sqlalchemy.exc import DBAPIError

from bench import workload as wl
from bench.procs import (
    Children,
    PostgresServer,
    RssSampler,
    clean_env,
    cpu_seconds,
    free_port,
    log_tail,
    tree_cpu_seconds,
)
from sinks import tables as t

#: Tables whose rows are the results a user sees (as tests/support/results.py counts them).
RESULT_TABLES = ("customers", "identities", "touchpoints", "metrics", "metric_cells", "alerts", "identity_merges")


class RunFailed(RuntimeError):
    """A configuration failed (stalled, timed out, worker died); the message says which and why."""


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline configuration: database kind, input shape and number of workers."""

    name: str
    database: str  # "sqlite" | "postgres"
    shape: str  # "single" | "envelopes"
    workers: int = 1


@dataclass
class PipelineResult:
    """Figures of one pipeline run."""

    events: int
    records: int
    workers: int
    wall_s: float
    first_commit_s: float
    commit_span_s: float
    batches: int
    measured_span_s: float
    measured_to_done_s: float
    measured_share: float
    touchpoints: int
    rows_by_table: dict[str, int]
    peak_rss: dict[str, int]
    #: (seconds after the first commit, touchpoints committed then) per commit, for anyone who wants to plot it.
    commit_timeline: list[tuple[float, int]]
    #: The workers' own Prometheus counters at the end (see scrape_counters).
    counters: dict[str, Any]
    #: CPU seconds each worker used from its start to done.
    worker_cpu_s: dict[str, float]
    #: Share of the whole machine's CPU time that was busy from the workers' start to done (every process,
    #: the database server, the broker and anything else running on the machine included).
    machine_cpu_busy: float
    #: CPU seconds from the workers' start to done per process: each worker's Faust and apply process, and the
    #: embedded broker (absent with an external one). Divided by the events, the CPU an event costs.
    cpu_by_process: dict[str, float] = field(default_factory=dict)

    @property
    def sustained_eps(self) -> float | None:
        """Events processed after each worker's first batch / the time from that batch's commit to done.

        Done is the end of the job, end to end: every input offset applied *and* the outbox empty, i.e. the
        downstream records of the last batch published too. Ending at the last SQL commit instead leaves that
        last publish out, which flatters runs of a few huge batches enormously (envelope runs here made two
        commits and then spent a minute and a half publishing the last batch's outputs; see sql_span_eps).

        A batch's events are processed before its commit, so the first batch's events fall outside a span
        that starts at the first commit: counting them would overstate the rate by about batches /
        (batches - 1). With W workers the span starts at the W-th commit (each worker's first batch,
        roughly). The share of events after it is the share of touchpoints committed after it.
        """
        if not self.measurable or self.measured_to_done_s <= 0:
            return None
        return self.events * self.measured_share / self.measured_to_done_s

    @property
    def measurable(self) -> bool:
        """Enough commits for a sustained rate: the span must hold most of the events, not a sliver.

        A small run can be a handful of batches; leaving out the first one then leaves little, and with two
        workers whose first batches differ in size the estimate becomes noise. Better no figure than that.
        """
        return self.batches >= self.workers + 2 and self.measured_share >= 0.5

    @property
    def sql_span_eps(self) -> float | None:
        """The same events over the span of SQL commits only (to the last commit): leaves the last publish out."""
        if not self.measurable or self.measured_span_s <= 0:
            return None
        return self.events * self.measured_share / self.measured_span_s

    @property
    def naive_eps(self) -> float | None:
        """Events / (last commit - first commit), first batch included and last publish left out."""
        return self.events / self.commit_span_s if self.commit_span_s > 0 else None

    @property
    def wall_eps(self) -> float:
        """Events / (done - worker start): includes start-up and the group join."""
        return self.events / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def sql_rows(self) -> int:
        """Rows written in the result tables at the end (the ``metrics`` view's figures are not written)."""
        return sum(n for name, n in self.rows_by_table.items() if name not in t.views.tables)

    @property
    def sql_rows_per_s(self) -> float | None:
        """Result rows over the measured span to done, scaled like the events (rows are not attributable to a batch)."""
        if self.sustained_eps is None:
            return None
        return self.sql_rows * self.measured_share / self.measured_to_done_s


@dataclass
class LatencyResult:
    """End-to-end latency of a paced slice: committed_at - received_at per touchpoint."""

    shape: str
    offered_rate: float
    achieved_rate: float
    events: int
    seconds: float
    measured: int
    percentiles: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)


@dataclass
class BenchContext:
    """What every run needs: the broker, the process registry, timeouts and where to put files."""

    #: Empty until the broker is started (a run of profile reads alone starts none: they read no topic).
    kafka_url: str
    run_id: str
    workdir: Path
    children: Children
    sampler: RssSampler
    partitions: int
    postgres: PostgresServer | None
    postgres_error: str | None
    timeout_s: float
    stall_s: float
    worker_env: dict[str, str]
    #: The embedded broker's process, when the benchmark started one (its CPU is reported with each run).
    broker_pid: int | None = None
    #: The published channel topics: kept when a configuration's other topics are deleted.
    input_topics: set[str] = field(default_factory=set)


# --- databases and workers ----------------------------------------------------------------------------


@contextmanager
def fresh_database(ctx: BenchContext, kind: str, name: str) -> Iterator[str]:
    """A new empty database URL of ``kind`` for one run; a PostgreSQL database is dropped afterwards."""
    if kind == "sqlite":
        path = ctx.workdir / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        return
    if ctx.postgres is None:
        raise RunFailed(f"no PostgreSQL server: {ctx.postgres_error}")
    with ctx.postgres.database() as url:
        yield url


def _reader(url: str) -> Engine:
    """An engine for polling the worker's database (reads only; SQLite in WAL mode lets it read meanwhile)."""
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 30})
    return create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=1)


@dataclass
class WorkerProc:
    """One benchmark worker process."""

    name: str
    proc: Popen[bytes]
    log_path: Path
    web_port: int


def start_worker(ctx: BenchContext, name: str, app_id: str, prefix: str, database_url: str, tag: str) -> WorkerProc:
    """Start ``cxstream worker`` with explicit CXSTREAM_* settings and watch its memory."""
    web_port = free_port()
    data_dir = ctx.workdir / f"{tag}-{name}"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = clean_env(
        {
            "CXSTREAM_KAFKA_URL": ctx.kafka_url,
            "CXSTREAM_DATABASE_URL": database_url,
            "CXSTREAM_TOPIC_PREFIX": prefix,
            "CXSTREAM_PARTITIONS": str(ctx.partitions),
            "CXSTREAM_APP_ID": app_id,
            "CXSTREAM_WORKER_ID": name,
            "CXSTREAM_WEB_PORT": str(web_port),
            "CXSTREAM_DATA_DIR": str(data_dir),
            # Stated rather than inherited: the figures depend on them (docs/architecture.md §7).
            "CXSTREAM_BROKER_SESSION_TIMEOUT": "6",
            "CXSTREAM_BROKER_HEARTBEAT_INTERVAL": "2",
            **ctx.worker_env,
        }
    )
    log_path = ctx.workdir / f"{tag}-{name}.log"
    argv = [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "warning"]
    proc = ctx.children.spawn(f"{tag}-{name}", argv, env=env, cwd=data_dir, log_path=log_path)
    ctx.sampler.watch(name, proc.pid)
    return WorkerProc(name, proc, log_path, web_port)


def drop_topics_except(ctx: BenchContext, keep: set[str]) -> None:
    """Delete every topic but ``keep`` (the published input topics) once a configuration is over.

    The embedded broker holds every topic in memory and the downstream topics take several times the
    input (a run of 500k events writes a few GB of timeline, profile and metric records): deleting them
    frees that memory, so one configuration's outputs neither crowd out nor slow down the next one.
    The next worker creates them again at start.
    """
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=ctx.kafka_url.split("://", 1)[1], request_timeout_ms=30_000)
        try:
            doomed = [name for name in admin.list_topics() if name not in keep]
            if doomed:
                admin.delete_topics(doomed, timeout_ms=30_000)
        finally:
            admin.close()
    except Exception as exc:  # the figures do not depend on it: say so and carry on
        print(f"[bench]   could not delete the run's output topics ({exc.__class__.__name__}: {exc})", flush=True)


def stop_workers(ctx: BenchContext, workers: list[WorkerProc]) -> None:
    """Stop the workers (SIGTERM, then SIGKILL) and stop sampling them."""
    for worker in workers:
        ctx.sampler.unwatch(worker.name)
    for worker in workers:
        ctx.children.stop(worker.proc)


# --- progress -----------------------------------------------------------------------------------------


def applied_records(engine: Engine, group_id: str, ends: dict[tuple[str, int], int]) -> tuple[int, bool]:
    """Records applied so far (per partition, up to its end) and whether the outbox is empty.

    Returns (0, False) until the worker has created the schema.
    """
    try:
        with engine.connect() as conn:
            offsets = t.stream_offsets.c
            applied = {
                (topic, part): off
                for topic, part, off in conn.execute(
                    select(offsets.topic, offsets.partition, offsets.applied_offset).where(offsets.group_id == group_id)
                )
            }
            pending = conn.execute(select(t.outbox.c.id).limit(1)).first()
    except DBAPIError:
        return 0, False
    done = sum(min(applied.get(tp, -1) + 1, end) for tp, end in ends.items())
    return done, pending is None


def _cpu_seconds(workers: list[WorkerProc]) -> float:
    """CPU time the workers (each with its apply process) have used so far (user + system), seconds."""
    return sum(cpu_seconds(worker.proc.pid, children=True) for worker in workers)


def _cpu_by_process(workers: list[WorkerProc]) -> dict[str, float]:
    """Each worker's CPU seconds so far, split into its Faust process and its apply process."""
    split: dict[str, float] = {}
    for worker in workers:
        faust = cpu_seconds(worker.proc.pid)
        split[f"{worker.name} faust"] = round(faust, 1)
        split[f"{worker.name} apply"] = round(cpu_seconds(worker.proc.pid, children=True) - faust, 1)
    return split


def _busy_share(before: Any, after: Any) -> float:
    """Busy share of all CPUs between two psutil.cpu_times() readings."""
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    total = sum(after) - sum(before)
    return round(1.0 - idle / total, 3) if total > 0 else 0.0


#: A worker using less than this share of a core while nothing moves is waiting on something, not working.
IDLE_CPU_SHARE = 0.05

#: A worker busy for this many stall timeouts without applying anything is stuck all the same.
BUSY_STALL_FACTOR = 5


def wait_applied(
    ctx: BenchContext,
    engine: Engine,
    group_id: str,
    ends: dict[tuple[str, int], int],
    workers: list[WorkerProc],
    label: str,
    *,
    started: float,
) -> float:
    """Wait until every record below ``ends`` is applied and the outbox is empty; return when (monotonic).

    Fails the run when a worker exits, after ``ctx.timeout_s`` in all, or when it has stalled: nothing
    applied or published for ``ctx.stall_s`` seconds while the workers sit idle (blocked, stopped,
    waiting for a group that never forms), or for ``BUSY_STALL_FACTOR`` times as long while they burn
    CPU. The two limits differ because a busy worker can legitimately go a while without a visible move:
    its gathered input is applied in transactions of up to CXSTREAM_BATCH_MAX_EVENTS events one after the
    other, and the outbox is emptied only as they are published.
    """
    total = sum(ends.values())
    last_state: tuple[int, bool] = (-1, False)
    last_move = last_print = time.monotonic()
    cpu_at_move = _cpu_seconds(workers)
    while True:
        now = time.monotonic()
        for worker in workers:
            if worker.proc.poll() is not None:
                raise RunFailed(
                    f"{label}: {worker.name} exited with code {worker.proc.returncode}; log tail:\n"
                    f"{log_tail(worker.log_path)}"
                )
        done, outbox_empty = applied_records(engine, group_id, ends)
        if done >= total and outbox_empty:
            return now
        if (done, outbox_empty) != last_state:
            last_state, last_move, cpu_at_move = (done, outbox_empty), now, _cpu_seconds(workers)
        else:
            still = now - last_move
            busy = (_cpu_seconds(workers) - cpu_at_move) / still if still > 0 else 1.0
            idle_stall = still > ctx.stall_s and busy < IDLE_CPU_SHARE
            if idle_stall or still > BUSY_STALL_FACTOR * ctx.stall_s:
                tails = "\n".join(f"--- {w.name}:\n{log_tail(w.log_path, 1500)}" for w in workers)
                how = "idle" if idle_stall else f"busy ({busy:.0%} of a core)"
                raise RunFailed(
                    f"{label}: stalled, nothing applied or published for {still:.0f}s with the workers {how} "
                    f"({done:,} of {total:,} records applied, outbox {'empty' if outbox_empty else 'not empty'}); "
                    f"log tails:\n{tails}"
                )
        if now - started > ctx.timeout_s:
            raise RunFailed(f"{label}: timed out after {ctx.timeout_s:.0f}s ({done:,} of {total:,} records applied)")
        if now - last_print >= 10:
            last_print = now
            print(f"[bench]   {label}: {done:,}/{total:,} records applied ({now - started:.0f}s)", flush=True)
        time.sleep(0.5)


# --- the workers' own counters ---------------------------------------------------------------------


def scrape_counters(workers: list[WorkerProc]) -> dict[str, Any]:
    """Sum a few of the workers' Prometheus figures: outputs per topic, batches, time in batch transactions and
    in taking locks, batches applied again after contending.

    They explain a rate rather than measure it (how many downstream records each input event costs, how
    large the batches were, how much of the wall time the SQL batches took), so a worker that does not
    answer only leaves them out.
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"outputs_by_topic": {}, "batches": 0, "batch_events": 0.0, "batch_seconds": 0.0}
    for worker in workers:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            out["unavailable"] = out.get("unavailable", 0) + 1
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                if name == "cxstream_outputs_published_total":
                    topic = labels["topic"].rsplit(".", 1)[-1]
                    out["outputs_by_topic"][topic] = out["outputs_by_topic"].get(topic, 0) + int(value)
                elif name == "cxstream_sink_batch_events_count":
                    out["batches"] += int(value)
                elif name == "cxstream_sink_batch_events_sum":
                    out["batch_events"] += value
                elif name == "cxstream_sink_write_duration_seconds_sum":
                    out["batch_seconds"] += value
                elif name == "cxstream_sink_lock_wait_seconds_total":
                    out["lock_wait_seconds"] = out.get("lock_wait_seconds", 0.0) + value
                    by_lock = out.setdefault("lock_wait_by_lock", {})
                    by_lock[labels["lock"]] = by_lock.get(labels["lock"], 0.0) + value
                elif name == "cxstream_sink_contended_total":
                    out["contended"] = out.get("contended", 0) + int(value)
                elif name == "cxstream_events_parked_total":
                    out["parked"] = out.get("parked", 0) + int(value)
                elif name == "cxstream_late_events_total" and labels.get("outcome") == "too_late":
                    out["too_late"] = out.get("too_late", 0) + int(value)
    return out


# --- results from SQL ---------------------------------------------------------------------------------


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def sql_figures(engine: Engine) -> tuple[list[tuple[datetime, int]], dict[str, int]]:
    """Every commit (distinct ``touchpoints.committed_at``, in order, with its touchpoints) and result rows."""
    tp = t.touchpoints.c
    with engine.connect() as conn:
        commits = [
            (_utc(at), int(n))
            for at, n in conn.execute(
                select(tp.committed_at, func.count()).group_by(tp.committed_at).order_by(tp.committed_at)
            )
        ]
        rows = result_rows(conn)
    return commits, rows


def result_rows(conn: Connection) -> dict[str, int]:
    """Rows of each result table (figures of the ``metrics`` view included), by name."""
    return {name: int(conn.scalar(select(func.count()).select_from(t.RESULTS[name])) or 0) for name in RESULT_TABLES}


def upgrade_schema(ctx: BenchContext, database_url: str, tag: str) -> None:
    """Create the schema before any worker starts (``cxstream db upgrade``, the documented deployment step).

    Workers also migrate at start, but two of them doing it at once on a fresh PostgreSQL database race to
    create ``alembic_version`` and one dies (UniqueViolation on pg_type). Migrating first also keeps the
    start-up in the wall times the same for one and two workers.
    """
    env = clean_env({"CXSTREAM_DATABASE_URL": database_url})
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "db", "upgrade"],
        env=env,
        cwd=ctx.workdir,
        capture_output=True,
        timeout=180,
    )
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).decode(errors="replace")[-3000:]
        raise RunFailed(f"{tag}: cxstream db upgrade failed with code {proc.returncode}:\n{output}")


def run_pipeline(ctx: BenchContext, config: PipelineConfig, published: wl.PublishResult, events: int) -> PipelineResult:
    """Run one configuration on its own database and consumer group; stop everything it started."""
    app_id = f"cxbench-{ctx.run_id}-{config.name}"
    with ExitStack() as stack:
        url = stack.enter_context(fresh_database(ctx, config.database, config.name))
        engine = _reader(url)
        stack.callback(engine.dispose)
        stack.callback(drop_topics_except, ctx, ctx.input_topics)  # runs last: after the workers stopped
        peaks = stack.enter_context(ctx.sampler.window())
        workers: list[WorkerProc] = []
        stack.callback(stop_workers, ctx, workers)
        upgrade_schema(ctx, url, config.name)
        started = time.monotonic()
        started_at = datetime.now(UTC)
        machine_before = psutil.cpu_times()
        broker_before = cpu_seconds(ctx.broker_pid)
        server_pid = ctx.postgres.local_pid() if config.database == "postgres" and ctx.postgres else None
        server_before = tree_cpu_seconds(server_pid)
        for i in range(config.workers):
            workers.append(start_worker(ctx, f"worker-{i + 1}", app_id, published.prefix, url, config.name))
        done = wait_applied(ctx, engine, app_id, published.ends, workers, config.name, started=started)
        machine_busy = _busy_share(machine_before, psutil.cpu_times())
        worker_cpu = {w.name: round(_cpu_seconds([w]), 1) for w in workers}
        cpu_split = _cpu_by_process(workers)
        if ctx.broker_pid is not None:
            cpu_split["broker"] = round(cpu_seconds(ctx.broker_pid) - broker_before, 1)
        server_after = tree_cpu_seconds(server_pid)
        if server_before is not None and server_after is not None:
            # Every database on the server counts, the benchmark's own polling included: a small overstatement.
            cpu_split["postgres"] = round(server_after - server_before, 1)
        commits, rows = sql_figures(engine)
        counters = scrape_counters(workers)
        ctx.sampler.sample_now()
        if not commits:
            raise RunFailed(f"{config.name}: every record was applied but no touchpoint was committed")
        first, last = commits[0][0], commits[-1][0]
        # The measured span starts at the W-th commit: each of W workers' first batch is left out.
        start_at = commits[min(config.workers, len(commits)) - 1][0]
        after = sum(n for at, n in commits if at > start_at)
        total = sum(n for _, n in commits)
        return PipelineResult(
            events=events,
            records=published.records,
            workers=config.workers,
            wall_s=done - started,
            first_commit_s=(first - started_at).total_seconds(),
            commit_span_s=(last - first).total_seconds(),
            batches=len(commits),
            measured_span_s=(last - start_at).total_seconds(),
            # started_at (wall clock) and started (monotonic) were read together: done on the wall clock
            # is started_at + wall_s.
            measured_to_done_s=(done - started) - (start_at - started_at).total_seconds(),
            measured_share=after / total if total else 0.0,
            touchpoints=rows["touchpoints"],
            rows_by_table=rows,
            peak_rss=dict(peaks),
            commit_timeline=[(round((at - first).total_seconds(), 3), n) for at, n in commits],
            counters=counters,
            worker_cpu_s=worker_cpu,
            machine_cpu_busy=machine_busy,
            cpu_by_process=cpu_split,
        )
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow exceptions


# --- latency --------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def run_latency(
    ctx: BenchContext,
    *,
    customers: int,
    days: int,
    rate: float,
    seconds: float,
    shape: str,
    tick_s: float,
    warmup: int = 200,
    available: int,
) -> LatencyResult:
    """Publish a slice of the workload at ``rate`` events/s while a SQLite worker runs; measure its latency.

    A warm-up of ``warmup`` events goes first and is waited for, so the worker has joined its group and
    created its schema before the paced slice starts; only the paced slice's touchpoints are measured.
    """
    count = max(1, min(int(rate * seconds), available - warmup))
    prefix = f"{ctx.run_id}.lat."
    name = "latency"
    app_id = f"cxbench-{ctx.run_id}-{name}"
    print(f"[bench] latency: converting a slice of {warmup + count:,} records", flush=True)
    sliced = wl.PacedSlice(customers, days, skip=0, count=warmup + count)
    now = datetime.now(UTC)
    warm = [wl.PacedSlice.stamp(e, now) for e in sliced.events[:warmup]]
    paced = sliced.events[warmup:]
    with ExitStack() as stack:
        url = stack.enter_context(fresh_database(ctx, "sqlite", name))
        engine = _reader(url)
        stack.callback(engine.dispose)
        upgrade_schema(ctx, url, name)
        warm_ends = wl.publish(
            ctx.kafka_url, prefix, warm, envelope_size=0, partitions=ctx.partitions, flush_timeout=60
        ).ends
        peaks = stack.enter_context(ctx.sampler.window())
        workers: list[WorkerProc] = []
        stack.callback(stop_workers, ctx, workers)
        started = time.monotonic()
        workers.append(start_worker(ctx, "worker-1", app_id, prefix, url, name))
        wait_applied(ctx, engine, app_id, warm_ends, workers, f"{name} warm-up", started=started)
        print(f"[bench] latency: worker ready; publishing {len(paced):,} events at {rate:,.0f}/s ({shape})", flush=True)
        result = wl.publish_paced(
            paced, ctx.kafka_url, prefix, rate, shape=shape, partitions=ctx.partitions, tick_s=tick_s
        )
        ends = {tp: max(warm_ends.get(tp, 0), end) for tp, end in {**warm_ends, **result.ends}.items()}
        wait_applied(ctx, engine, app_id, ends, workers, name, started=time.monotonic())
        ids = result.event_ids - {e.event_id for e in warm}
        tp = t.touchpoints.c
        with engine.connect() as conn:
            rows = conn.execute(select(tp.event_id, tp.received_at, tp.committed_at)).all()
        lags = sorted(
            (_utc(committed) - _utc(received)) / timedelta(seconds=1)
            for event_id, received, committed in rows
            if event_id in ids
        )
        ctx.sampler.sample_now()
        pct = {f"p{q}": percentile(lags, q) for q in (50, 95, 99)}
        pct["max"] = lags[-1] if lags else float("nan")
        pct["min"] = lags[0] if lags else float("nan")
        return LatencyResult(
            shape=shape,
            offered_rate=rate,
            achieved_rate=result.achieved_rate,
            events=result.events,
            seconds=result.seconds,
            measured=len(lags),
            percentiles=pct,
            peak_rss=dict(peaks),
        )
    raise AssertionError("unreachable")  # pragma: no cover


def as_dict(obj: Any) -> dict[str, Any]:
    """A result as plain JSON-able data, properties included."""
    data = dict(obj.__dict__)
    for name in ("sustained_eps", "sql_span_eps", "naive_eps", "wall_eps", "sql_rows", "sql_rows_per_s"):
        if hasattr(type(obj), name):
            data[name] = getattr(obj, name)
    return data
