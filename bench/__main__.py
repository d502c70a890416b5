"""``python -m bench`` (``make bench``): run the benchmark and write docs/benchmarks.{md,json,png}.

Order of a full run: build the workload, start the broker, publish both shapes, the two baselines, the
pipeline configurations (SQLite and PostgreSQL, single and envelopes), two workers, the latency run (its
rate is half of a sustained rate measured earlier in the same run), then the profile reads (the read API on
a database of a million touchpoints, built without the broker: a run of them alone starts none). A
configuration that fails is reported and the rest go on; every child process is stopped in a ``finally``
block, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from bench import reads, report
from bench import workload as wl
from bench.apply import records_of
from bench.baselines import run_baseline
from bench.procs import Children, PostgresServer, RssSampler, clean_env, cpu_seconds, free_port, throwaway_postgres
from bench.reads import MIN_TOUCHPOINTS, PROFILE_READS, TARGET_P99_S, profile_p99, run_profile_reads
from bench.runs import (
    BenchContext,
    PipelineConfig,
    RunFailed,
    as_dict,
    run_latency,
    run_pipeline,
)
from config.topics import Topics
from streams.sandbox.embedded_broker import start_broker

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=50_000, help="simulated customers (default 50000)")
    p.add_argument("--days", type=int, default=30, help="simulated days (default 30)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="preset: --customers 5000 --days 10 --latency-seconds 15 --profile-customers 10000",
    )
    p.add_argument(
        "--only",
        default="",
        help="comma-separated configurations or globs to run, e.g. 'faust-pass,sqlite-*' "
        "(configurations: aiokafka, faust-pass, sqlite-single, sqlite-envelopes, postgres-single, "
        "postgres-envelopes, postgres-<scaling-shape>-2w, latency, profile-reads)",
    )
    p.add_argument("--partitions", type=int, default=4, help="partitions per channel topic (default 4)")
    p.add_argument(
        "--timeout", type=float, default=1800.0, help="most seconds one configuration may take (default 1800)"
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        help="fail a configuration when nothing moves for this long with its workers idle (5x as long if busy; 120)",
    )
    p.add_argument("--latency-seconds", type=float, default=30.0, help="length of the paced latency slice (default 30)")
    p.add_argument(
        "--latency-shape", choices=("single", "envelopes"), default="single", help="input shape of the latency run"
    )
    p.add_argument(
        "--latency-rate", type=float, default=None, help="offered events/s (default: half the sustained SQLite rate)"
    )
    p.add_argument(
        "--latency-tick", type=float, default=0.1, help="seconds between envelopes in an envelope latency run"
    )
    p.add_argument(
        "--scaling-shape", choices=("single", "envelopes"), default="envelopes", help="input shape of the 2-worker run"
    )
    p.add_argument(
        "--profile-customers",
        type=int,
        default=100_000,
        help="simulated customers of the profile-reads database (default 100000: over 1M touchpoints in 30 days)",
    )
    p.add_argument("--profile-days", type=int, default=30, help="simulated days of the profile-reads database (30)")
    p.add_argument(
        "--profile-requests", type=int, default=2000, help="measured profile-reads requests of each kind (2000)"
    )
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("CXSTREAM_BENCH_POSTGRES_URL"),
        help="PostgreSQL admin URL (CXSTREAM_BENCH_POSTGRES_URL); without one, a throwaway server from pgserver, "
        "on this machine, as the tests start",
    )
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra CXSTREAM_* setting for every worker",
    )
    p.add_argument(
        "--out", type=Path, default=REPO / "docs", help="where to write benchmarks.{md,json,png} (default docs/)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, SQLite files) afterwards")
    args = p.parse_args(argv)
    if args.quick:
        args.customers, args.days, args.latency_seconds, args.profile_customers = 5000, 10, 15.0, 10_000
    return args


def configurations(args: argparse.Namespace) -> tuple[list[str], list[PipelineConfig]]:
    """Every configuration of a full run, in running order, filtered by --only."""
    pipelines = [
        PipelineConfig("sqlite-single", "sqlite", "single"),
        PipelineConfig("sqlite-envelopes", "sqlite", "envelopes"),
        PipelineConfig("postgres-single", "postgres", "single"),
        PipelineConfig("postgres-envelopes", "postgres", "envelopes"),
        PipelineConfig(f"postgres-{args.scaling_shape}-2w", "postgres", args.scaling_shape, workers=2),
    ]
    names = ["aiokafka", "faust-pass", *(c.name for c in pipelines), "latency", PROFILE_READS]
    if args.only:
        patterns = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [pat for pat in patterns if not fnmatch.filter(names, pat)]
        if unknown:
            raise SystemExit(
                f"--only: no configuration matches {', '.join(unknown)}; configurations: {', '.join(names)}"
            )
        names = [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in patterns)]
    return names, [c for c in pipelines if c.name in names]


def worker_defaults() -> dict[str, str]:
    """The batching and fetch defaults of the code under test, read from its Settings (they change as it is tuned)."""
    from config.settings import Settings

    fields = (
        "batch_max_events",
        "batch_max_events_behind",
        "batch_behind_s",
        "batch_max_wait",
        "broker_fetch_max_wait",
        "broker_max_poll_interval",
    )
    # A field the code under test does not have yet (a baseline run of an older commit) is left out.
    known = Settings.model_fields
    return {f"CXSTREAM_{name.upper()}": str(known[name].default) for name in fields if name in known}


def _on_sigterm(_signum: int, _frame: object) -> NoReturn:
    # `kill PID` must clean up like Ctrl-C: stop the broker and workers in the finally blocks.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every selected configuration ran, 1 when one failed."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names, pipelines = configurations(args)
    worker_env: dict[str, str] = {}
    for item in args.worker_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("CXSTREAM_"):
            raise SystemExit(f"--worker-env expects CXSTREAM_NAME=VALUE, got {item!r}")
        worker_env[key] = value
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Also when started from a script that ignores SIGINT (`cmd &` in sh): Ctrl-C or kill -INT must clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    run_id = f"cxb{int(time.time()) % 1_000_000:06d}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{run_id}-"))
    children, sampler = Children(), RssSampler()
    results: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "-m", "bench", *sys.argv[1:]]),
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": report.machine_facts(REPO),
        "configurations": names,
        "baselines": {},
        "pipelines": {},
        "publish": {},
        "failures": [],
        "targets": [],
    }
    print(f"[bench] configurations: {', '.join(names)}; work directory {workdir}", flush=True)
    interrupted = False
    try:
        _run(args, names, pipelines, worker_env, run_id, workdir, children, sampler, results)
    except KeyboardInterrupt:
        interrupted = True
        print("\n[bench] interrupted: stopping everything it started", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children mid-stop
        try:
            children.stop_all()
            sampler.close()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        print(f"[bench] nothing written; logs in {workdir}", file=sys.stderr)
        return 130
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["duration_s"] = time.monotonic() - t0
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summarise(results)
    print("\n" + report.console_summary(results), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "benchmarks.png"
    wrote_png = report.write_png(results, png)
    report.write_json(results, args.out / "benchmarks.json")
    report.write_markdown(results, args.out / "benchmarks.md", png.name if wrote_png else None)
    print(f"[bench] wrote {args.out / 'benchmarks.md'}, benchmarks.json" + (", benchmarks.png" if wrote_png else ""))
    if results["failures"] or args.keep:
        print(f"[bench] logs and databases kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if results["failures"] else 0


def _run(
    args: argparse.Namespace,
    names: list[str],
    pipelines: list[PipelineConfig],
    worker_env: dict[str, str],
    run_id: str,
    workdir: Path,
    children: Children,
    sampler: RssSampler,
    results: dict[str, Any],
) -> None:
    """Every configuration selected; the caller stops the children whatever happens here."""
    postgres: PostgresServer | None = None
    postgres_error: str | None = None
    throwaway: Any = None
    if any(c.database == "postgres" for c in pipelines) or PROFILE_READS in names:
        url = args.postgres_url
        try:
            if url is None:
                throwaway, url = throwaway_postgres()
                print(f"[bench] PostgreSQL from pgserver: {url}", flush=True)
            postgres = PostgresServer(url)
            results["postgres_version"] = postgres.version()
        except Exception as exc:
            postgres, postgres_error = None, f"cannot reach {url}: {exc.__class__.__name__}: {exc}"
            print(f"[bench] {postgres_error}", flush=True)

    sampler.start()
    ctx = BenchContext(
        kafka_url="",
        run_id=run_id,
        workdir=workdir,
        children=children,
        sampler=sampler,
        partitions=args.partitions,
        postgres=postgres,
        postgres_error=postgres_error,
        timeout_s=args.timeout,
        stall_s=args.stall_timeout,
        worker_env=worker_env,
    )
    try:
        if any(name != PROFILE_READS for name in names):
            _streaming(ctx, args, names, pipelines, worker_env, results)
        if PROFILE_READS in names:
            _profile_reads(ctx, args, results)
    finally:
        if postgres is not None:
            postgres.dispose()
        if throwaway is not None:
            throwaway.cleanup()


def _streaming(
    ctx: BenchContext,
    args: argparse.Namespace,
    names: list[str],
    pipelines: list[PipelineConfig],
    worker_env: dict[str, str],
    results: dict[str, Any],
) -> None:
    """The configurations that read topics: the workload, the broker, publishing, baselines, pipelines, latency."""
    print(f"[bench] simulating {args.customers:,} customers over {args.days} days and converting", flush=True)
    work = wl.build_workload(args.customers, args.days)
    results["workload"] = {
        "customers": args.customers,
        "days": args.days,
        "records": work.records,
        "kinds": dict(work.kinds),
        "events": len(work.events),
        "distinct_events": work.distinct_events,
        "rejected": dict(work.rejected),
        "mean_bytes": sum(len(e.value) for e in work.events) / max(1, len(work.events)),
        "simulate_s": work.simulate_s,
        "convert_s": work.convert_s,
    }
    print(
        f"[bench] {len(work.events):,} events ({work.simulate_s:.1f}s simulating, {work.convert_s:.1f}s converting)",
        flush=True,
    )
    results["settings"] = {
        "partitions": args.partitions,
        "envelope_size": wl.ENVELOPE_SIZE,
        "worker_env": worker_env,
        "worker_defaults": worker_defaults(),
    }
    port = free_port()
    ctx.kafka_url = f"kafka://127.0.0.1:{port}"
    broker = start_broker(port, "memory://tansu/", log_path=ctx.workdir / "broker.log")
    ctx.children.adopt("broker", broker)
    ctx.sampler.watch("broker", broker.pid)
    ctx.broker_pid = broker.pid
    print(f"[bench] embedded broker on 127.0.0.1:{port} (pid {broker.pid})", flush=True)
    published = _publish(ctx, work, names, pipelines, results)
    _baselines(ctx, names, published.get("single"), len(work.events), results)
    for config in pipelines:
        pub = published.get(config.shape)
        _guard(results, config.name, lambda c=config, p=pub: _pipeline(ctx, c, p, len(work.events), results))
    if "latency" in names:
        _guard(results, "latency", lambda: _latency(ctx, args, len(work.events), results), latency=True)
    # Nothing after this reads a topic: the broker's memory (every topic, in memory) goes back to the machine.
    ctx.sampler.unwatch("broker")
    ctx.children.stop(broker)


def _publish(
    ctx: BenchContext, work: wl.Workload, names: list[str], pipelines: list[PipelineConfig], results: dict[str, Any]
) -> dict[str, wl.PublishResult]:
    """Publish the shapes the selected configurations read (publishing one-per-record takes longest)."""
    shapes = {c.shape for c in pipelines}
    if "aiokafka" in names or "faust-pass" in names:
        shapes.add("single")
    published: dict[str, wl.PublishResult] = {}
    for shape in ("single", "envelopes"):
        if shape not in shapes:
            continue
        prefix = f"{ctx.run_id}.{'single' if shape == 'single' else 'env'}."
        print(f"[bench] publishing {len(work.events):,} events as {shape} to {prefix}*", flush=True)
        pub = wl.publish(
            ctx.kafka_url,
            prefix,
            work.events,
            envelope_size=0 if shape == "single" else wl.ENVELOPE_SIZE,
            partitions=ctx.partitions,
        )
        published[shape] = pub
        ctx.input_topics.update(Topics(prefix).channels)
        results["publish"][shape] = {**as_dict(pub), "ends": None, "records_per_s": pub.records_per_s}
        print(
            f"[bench]   {pub.records:,} records in {pub.seconds:.1f}s ({pub.records_per_s:,.0f} records/s)", flush=True
        )
    return published


def _guard(
    results: dict[str, Any], name: str, work: Any, latency: bool = False, entry: dict[str, Any] | None = None
) -> None:
    """Run one configuration; record a failure with its message (in ``entry`` when given) and carry on."""
    print(f"[bench] {name}", flush=True)
    try:
        work()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        message = (
            str(exc) if isinstance(exc, RunFailed) else f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"
        )
        print(f"[bench] {name} FAILED: {message[:2000]}", flush=True)
        results["failures"].append({"config": name, "error": message})
        failed = {"status": "failed", "error": message}
        if entry is not None:
            entry.update(failed)
        elif latency:
            results["latency"] = failed
        elif name in ("aiokafka", "faust-pass"):
            results["baselines"][name] = failed
        else:
            results["pipelines"].setdefault(name, {}).update(failed)


def _baselines(
    ctx: BenchContext, names: list[str], single: wl.PublishResult | None, events: int, results: dict[str, Any]
) -> None:
    for kind, name in (("aiokafka", "aiokafka"), ("faust", "faust-pass")):
        if name not in names or single is None:
            continue

        def run(kind: str = kind, name: str = name) -> None:
            broker_before = cpu_seconds(ctx.broker_pid)
            res = run_baseline(
                kind,
                children=ctx.children,
                sampler=ctx.sampler,
                workdir=ctx.workdir,
                broker=ctx.kafka_url.split("://", 1)[1],
                topics=Topics(single.prefix).channels,
                expected=single.records,
                app_id=f"cxbench-{ctx.run_id}-{name}",
                timeout=min(ctx.timeout_s, 600.0),
                env=clean_env({}),
            )
            if res.events != events:
                raise RunFailed(f"{name}: saw {res.events:,} events, expected {events:,}")
            results["baselines"][name] = {
                "status": "ok",
                "events": res.events,
                "seconds": res.seconds,
                "rate": res.rate,
                "peak_rss": {name: res.peak_rss, "broker": _broker_rss(ctx)},
                # The child's own CPU over its measured span; the broker's over the child's whole life (start-up
                # and group join included, when it serves next to nothing).
                "cpu_by_process": {
                    name: round(res.cpu_s, 1),
                    "broker": round(cpu_seconds(ctx.broker_pid) - broker_before, 1),
                },
            }
            print(f"[bench]   {name}: {res.rate:,.0f} events/s ({res.events:,} in {res.seconds:.2f}s)", flush=True)

        _guard(results, name, run)


def _broker_rss(ctx: BenchContext) -> int:
    with ctx.sampler.window() as peaks:
        pass
    return peaks.get("broker", 0)


def _pipeline(
    ctx: BenchContext, config: PipelineConfig, pub: wl.PublishResult | None, events: int, results: dict[str, Any]
) -> None:
    entry = results["pipelines"].setdefault(
        config.name,
        {"database": config.database, "shape": config.shape, "workers": config.workers, "status": "running"},
    )
    if pub is None:
        raise RunFailed(f"{config.name}: the {config.shape} topics were not published")
    res = run_pipeline(ctx, config, pub, events)
    entry.update(as_dict(res))
    entry["status"] = "ok" if res.batches >= 5 else f"ok ({res.batches} commit{'s' if res.batches > 1 else ''})"
    print(
        f"[bench]   {config.name}: {_num(res.sustained_eps)} events/s sustained, wall {res.wall_s:.1f}s, "
        f"{_num(res.sql_rows_per_s)} SQL rows/s, {res.touchpoints:,} touchpoints",
        flush=True,
    )
    per_event = report.cpu_per_event(entry)
    if per_event:
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in per_event.items())
        print(f"[bench]   {config.name}: CPU per event {sum(per_event.values()):,.0f} µs ({parts})", flush=True)


def _latency(ctx: BenchContext, args: argparse.Namespace, available: int, results: dict[str, Any]) -> None:
    basis_name = f"sqlite-{args.latency_shape}"
    if args.latency_rate:
        rate, basis = args.latency_rate, "--latency-rate"
    else:
        sustained = results["pipelines"].get(basis_name, {}).get("sustained_eps")
        if not sustained:
            raise RunFailed(f"latency needs the sustained rate of {basis_name} from this run (or --latency-rate)")
        rate, basis = sustained / 2, f"half of {basis_name}'s sustained {sustained:,.0f} events/s"
    res = run_latency(
        ctx,
        customers=args.customers,
        days=args.days,
        rate=rate,
        seconds=args.latency_seconds,
        shape=args.latency_shape,
        tick_s=args.latency_tick,
        available=available,
    )
    results["latency"] = {"status": "ok", "rate_basis": basis, "tick_s": args.latency_tick, **as_dict(res)}
    p = res.percentiles
    print(
        f"[bench]   latency p50 {p['p50']:.3f}s p95 {p['p95']:.3f}s p99 {p['p99']:.3f}s ({res.measured:,} touchpoints)",
        flush=True,
    )


def _profile_reads(ctx: BenchContext, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The read API's latency on a database of ``--profile-customers``, built once per database kind."""
    defaults = worker_defaults()
    section: dict[str, Any] = {
        "customers": args.profile_customers,
        "days": args.profile_days,
        "requests_per_kind": args.profile_requests,
        "warmup_per_kind": reads.WARMUP_PER_KIND,
        "seed": reads.SEED,
        # A database built from a history: the worker's batches while it is behind its input.
        "batch_events": int(
            defaults.get("CXSTREAM_BATCH_MAX_EVENTS_BEHIND", defaults.get("CXSTREAM_BATCH_MAX_EVENTS", 5000))
        ),
        "databases": {kind: {"status": "not run"} for kind in ("sqlite", "postgres")},
    }
    results["profile_reads"] = section
    print(
        f"[bench] {PROFILE_READS}: simulating {args.profile_customers:,} customers over {args.profile_days} days "
        "and converting",
        flush=True,
    )
    started = time.perf_counter()
    records = records_of(args.profile_customers, args.profile_days)
    section.update(events=len(records), convert_s=time.perf_counter() - started)
    print(f"[bench] {PROFILE_READS}: {len(records):,} events in {section['convert_s']:.0f}s", flush=True)
    for kind, entry in section["databases"].items():
        _guard(
            results,
            f"{PROFILE_READS} {kind}",
            lambda k=kind, e=entry: run_profile_reads(
                ctx,
                k,
                records,
                batch=section["batch_events"],
                requests=args.profile_requests,
                warmup=reads.WARMUP_PER_KIND,
                seed=reads.SEED,
                entry=e,
            ),
            entry=entry,
        )


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


# --- ratios and targets -------------------------------------------------------------------------------


def _events_per_cpu_ratio(two: dict[str, Any], one: dict[str, Any]) -> float | None:
    """Events per CPU-second of the job (workers and database server; the broker left out) of a two-worker run,
    as a multiple of the one-worker run's: what the second worker costs in coordination."""

    def per_cpu(run: dict[str, Any]) -> float | None:
        cpu = sum(v for k, v in (run.get("cpu_by_process") or {}).items() if k != "broker")
        return run["events"] / cpu if cpu and run.get("events") else None

    rate_two, rate_one = per_cpu(two), per_cpu(one)
    return rate_two / rate_one if rate_two and rate_one else None


def summarise(results: dict[str, Any]) -> None:
    """Ratios to the baselines, the two-worker scaling ratio and the targets' verdicts."""
    faust = results["baselines"].get("faust-pass", {}).get("rate")
    raw = results["baselines"].get("aiokafka", {}).get("rate")
    for base in results["baselines"].values():
        rate = base.get("rate")
        base["ratio_vs_faust"] = rate / faust if rate and faust else None
        base["ratio_vs_aiokafka"] = rate / raw if rate and raw else None
    for run in results["pipelines"].values():
        rate = run.get("sustained_eps")
        run["ratio_vs_faust"] = rate / faust if rate and faust else None
        run["ratio_vs_aiokafka"] = rate / raw if rate and raw else None
    targets: list[dict[str, Any]] = []

    def verdict(
        target: str, config: str, value: float | None, goal: float, floor: float | None, shown: str, lower: bool = False
    ) -> None:
        if value is None:
            result = "n/a"
        elif (value < goal) if lower else (value >= goal):
            result = "pass"
        elif floor is not None and value >= floor:
            result = "below target (above floor)"
        else:
            result = "fail"
        targets.append(
            {
                "target": target,
                "config": config,
                "value": value,
                "goal": goal,
                "floor": floor,
                "shown": shown,
                "verdict": result,
            }
        )

    for name, run in results["pipelines"].items():
        if run.get("workers", 1) != 1:
            continue
        ratio = run.get("ratio_vs_faust")
        shown = f"{ratio:.2f}x passthrough" if ratio else "—"
        if run.get("shape") == "envelopes":
            verdict("batched ≥ 5x passthrough (floor 2x)", name, ratio, 5.0, 2.0, shown)
        else:
            verdict("single-event ≥ 1.0x passthrough (floor 0.5x)", name, ratio, 1.0, 0.5, shown)
    lat = results.get("latency")
    p99 = lat["percentiles"]["p99"] if lat and lat.get("status") == "ok" else None
    if "latency" in results["configurations"]:
        verdict(
            "p99 < 1 s at half the sustained rate",
            "latency",
            p99,
            1.0,
            None,
            f"p99 {p99:.3f} s" if p99 is not None else "—",
            lower=True,
        )
    scaling: dict[str, Any] = {}
    for name, run in results["pipelines"].items():
        if run.get("workers", 1) != 2:
            continue
        one_name = name.removesuffix("-2w")
        one = results["pipelines"].get(one_name, {})
        scaling = {"config": name, "baseline": one_name, "ratio": None, "ratio_wall": None}
        if str(run.get("status")).startswith("ok") and str(one.get("status")).startswith("ok"):
            scaling["ratio_wall"] = one["wall_s"] / run["wall_s"]
            if run.get("sustained_eps") and one.get("sustained_eps"):
                scaling["ratio"] = run["sustained_eps"] / one["sustained_eps"]
            else:
                scaling["why"] = (
                    f"no sustained rate (too few commits; use a larger workload); by wall time, start-up "
                    f"included, two workers took {scaling['ratio_wall']:.2f}x less time"
                )
        else:
            scaling["why"] = f"needs both {name} and {one_name} to succeed in the same run"
        shown = f"{scaling['ratio']:.2f}x one worker" if scaling["ratio"] else "—"
        verdict("two workers ≥ 1.3x one", name, scaling["ratio"], 1.3, None, shown)
        counters = run.get("counters") or {}
        if counters.get("batch_seconds") and "lock_wait_seconds" in counters:
            scaling["lock_wait_share"] = counters["lock_wait_seconds"] / counters["batch_seconds"]
            scaling["lock_wait_shares"] = {
                lock: seconds / counters["batch_seconds"]
                for lock, seconds in sorted(counters.get("lock_wait_by_lock", {}).items())
            }
            scaling["contended"] = counters.get("contended", 0)
            scaling["parked"] = counters.get("parked", 0)
        share = scaling.get("lock_wait_share")
        verdict(
            "two workers: lock waits < 5% of batch time",
            name,
            share,
            0.05,
            None,
            f"{share:.1%} of batch time" if share is not None else "—",
            lower=True,
        )
        scaling["cpu_ratio"] = _events_per_cpu_ratio(run, one)
        cpu = scaling["cpu_ratio"]
        verdict(
            "two workers: events per CPU-second ≥ 0.9x one's",
            name,
            cpu,
            0.9,
            None,
            f"{cpu:.2f}x one worker's" if cpu is not None else "—",
        )
    results["scaling"] = scaling
    if PROFILE_READS in results["configurations"]:
        databases = results.get("profile_reads", {}).get("databases", {})
        for kind in ("sqlite", "postgres"):
            entry = databases.get(kind, {})
            p99 = profile_p99(entry) if entry.get("status") == "ok" else None
            touchpoints = entry.get("touchpoints") or 0
            if p99 is not None and touchpoints < MIN_TOUCHPOINTS:
                # On a smaller database the figure says little about the target's: no verdict.
                shown, p99 = f"p99 {1e3 * p99:.1f} ms on only {touchpoints:,} touchpoints", None
            else:
                shown = f"p99 {1e3 * p99:.1f} ms" if p99 is not None else "—"
            target = f"profile read p99 < {1e3 * TARGET_P99_S:.0f} ms (≥ {MIN_TOUCHPOINTS:,} touchpoints)"
            verdict(target, f"{PROFILE_READS} {kind}", p99, TARGET_P99_S, None, shown, lower=True)
    results["targets"] = targets


if __name__ == "__main__":
    sys.exit(main())
