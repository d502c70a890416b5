"""The ``cxstream`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Literal

import click

from config.settings import Settings, SettingsError, load_settings


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cxstream", message="cxstream %(version)s")
@click.pass_context
def main(ctx: click.Context) -> None:
    """cxstream: one experience timeline per customer across store, phone, web and marketplaces.

    Configuration comes from CXSTREAM_* environment variables (see the README).
    """
    try:
        ctx.obj = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--port", type=int, default=None, help="Port to listen on (default: the port of CXSTREAM_KAFKA_URL).")
@click.option(
    "--storage",
    default="memory://tansu/",
    show_default=True,
    help="Tansu storage engine URL: memory:// (fast, lost on exit) or s3://BUCKET/ (durable, needs AWS_* env).",
)
@click.pass_context
def broker(ctx: click.Context, port: int | None, storage: str) -> None:
    """Run the embedded Kafka-protocol broker (Tansu) on loopback, in the foreground; Ctrl-C stops it."""
    from streams.sandbox.embedded_broker import BrokerError, run_broker_foreground

    port = port or _settings(ctx).kafka_port
    click.echo(f"embedded broker on 127.0.0.1:{port} (storage {storage}); Ctrl-C stops it", err=True)
    try:
        code = run_broker_foreground(port, storage)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command()
@click.option("--loglevel", default="info", show_default=True, help="Log level of the worker.")
@click.pass_context
def worker(ctx: click.Context, loglevel: str) -> None:
    """Run a stream worker: consumes the channel topics, writes SQL, serves /metrics and the collector."""
    from streams.kafka import BrokerUnreachable, LogMismatch
    from streams.worker import run_worker

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_worker(_settings(ctx), loglevel)
    except (BrokerUnreachable, LogMismatch, SettingsError) as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def db() -> None:
    """Manage the results database."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the results database schema to the current version."""
    from sinks.database import make_engine, table_names, upgrade

    settings = _settings(ctx.find_root())
    engine = make_engine(settings.database_url)
    upgrade(engine)
    click.echo(f"{settings.database_url}: schema up to date ({', '.join(table_names(engine))})")


@db.command("reset-offsets")
@click.pass_context
def db_reset_offsets(ctx: click.Context) -> None:
    """Forget which input records were applied, so that workers read the channel topics from their start.

    For a database that followed another copy of the topics (the worker refuses to start on one). Results stay;
    events applied before are recognised by their event id and not counted twice.
    """
    from sinks.database import make_engine, upgrade
    from sinks.sql import SqlSink

    settings = _settings(ctx.find_root())
    engine = make_engine(settings.database_url)
    upgrade(engine)
    reset = SqlSink(engine).reset_offsets(settings.app_id)
    click.echo(f"{settings.database_url}: forgot the applied offsets of {reset} partitions (group {settings.app_id})")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("schemas/json"), show_default=True)
def schemas(out: Path) -> None:
    """Write the JSON Schema of every record that crosses a topic."""
    from schemas.jsonschema import export_schemas

    for path in export_schemas(out):
        click.echo(str(path))


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default=None, help="Default: from the file name.")
@click.option("--envelope", type=int, default=0, show_default=True, help="Events per Kafka record (0: one per record).")
@click.option("--strict", is_flag=True, help="Exit 1 if any record was dead-lettered.")
@click.option(
    "--order",
    type=click.Choice(["time", "file"]),
    default="time",
    show_default=True,
    help="time: all files' events merged by occurred_at (then event_id); file: file by file, as read.",
)
@click.option(
    "--run-events",
    type=click.IntRange(min=1),
    default=250_000,
    show_default=True,
    help="With --order time: most events sorted in memory at once (a run is also cut at about 64 MB) before the "
    "sorted run is spilled to a temporary file under TMPDIR.",
)
@click.argument("sources", nargs=-1, required=True, type=click.UNPROCESSED, metavar="[--channel C] FILE|DIR...")
@click.pass_context
def publish(
    ctx: click.Context,
    fmt: Literal["jsonl", "csv"] | None,
    envelope: int,
    strict: bool,
    order: Literal["time", "file"],
    run_events: int,
    sources: tuple[str, ...],
) -> None:
    """Validate source files and publish their events; bad records go to the dead-letter topic.

    \b
    Name the files by channel, or give a directory laid out by channel:
      cxstream publish --channel store a.csv b.jsonl \\
                       --channel phone c.jsonl --channel web d.jsonl
      cxstream publish --channel phone -        (- is stdin)
      cxstream publish DIR

    --channel C (store, phone, web, ecommerce) applies to the files after it, up to the next --channel; a single
    --channel applies to every file. A directory after --channel C stands for all its .jsonl and .csv files.
    DIR without --channel holds <channel>.jsonl and <channel>.csv files and/or <channel>/ directories of them,
    as `cxstream simulate --out DIR` writes; a file named <channel>.jsonl, or in a <channel>/ directory, needs
    no --channel either.

    By default the events of all the files are published merged in event-time order (an external sort: bounded
    memory, temporary files under TMPDIR, removed at the end); --order file publishes file by file instead.
    """
    import signal

    from streams.backfill import publish_sources
    from streams.kafka import BrokerUnreachable, ensure_topics
    from streams.policies import identifier_hashing
    from streams.progress import stderr_progress
    from streams.publisher import Publisher
    from streams.sources import ArgumentProblem, SourceError, parse_sources

    settings = _settings(ctx)
    try:
        files = parse_sources(sources, fmt)
    except ArgumentProblem as exc:
        raise click.UsageError(str(exc), ctx) from None
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        ensure_topics(settings)
        publisher = Publisher(settings, envelope_size=envelope)
    except BrokerUnreachable as exc:
        total = sum(source.count_records() for source in files)
        raise click.ClickException(f"{exc}\nnothing was sent: {total} records not published") from None
    # A terminated publish leaves no temporary files behind either: SIGTERM unwinds like Ctrl-C.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    report = publish_sources(
        publisher,
        files,
        order=order,
        default_region=settings.default_phone_region,
        hashing=identifier_hashing(settings),
        progress=stderr_progress,
        run_events=run_events,
    )
    summary = publisher.close()
    click.echo(summary.render())
    click.echo(report.render())
    click.echo(
        "the worker reports what it rejects in its log, "
        f"on {settings.topic_prefix}deadletter and in cxstream_dead_letters_total"
    )
    click.echo(report.timing(), err=True)
    if not summary.accounted:
        sys.exit(2)
    if strict and summary.dead_lettered:
        sys.exit(1)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@main.command()
@click.option("--customers", type=int, default=1000, show_default=True, help="Simulated people.")
@click.option("--days", type=int, default=7, show_default=True, help="Days of journeys.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed: same seed, same traffic.")
@click.option(
    "--rate", type=float, default=None, help="Events per second to publish at (default: as fast as possible)."
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write <channel>.jsonl files here instead.")
@click.option("--envelope", type=int, default=0, show_default=True, help="Events per Kafka record (0: one per record).")
@click.option(
    "--duplicates", "duplicate_rate", type=float, default=0.02, show_default=True, help="Share of re-sent records."
)
@click.option(
    "--late", "late_rate", type=float, default=0.02, show_default=True, help="Share of late, out-of-order records."
)
@click.option(
    "--malformed", "malformed_rate", type=float, default=0.005, show_default=True, help="Share of malformed lines."
)
@click.pass_context
def simulate(ctx: click.Context, **options: Any) -> None:
    """Generate realistic multi-channel journeys and publish them through the adapters (or write files)."""
    from streams.sandbox.traffic import run_simulation

    run_simulation(_settings(ctx), **options)


@main.command()
@click.option("--customers", type=int, default=2000, show_default=True)
@click.option("--days", type=int, default=30, show_default=True)
@click.option("--rate", type=float, default=200.0, show_default=True, help="Simulated events per second.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.pass_context
def demo(ctx: click.Context, customers: int, days: int, rate: float, seed: int) -> None:
    """Embedded broker + worker + simulated traffic on SQLite, with /metrics; Ctrl-C stops everything."""
    from streams.sandbox.demo import run_demo

    run_demo(_settings(ctx), customers, days, rate, seed)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=6070, show_default=True, help="Port to listen on.")
@click.pass_context
def api(ctx: click.Context, host: str, port: int) -> None:
    """Serve the read API (profiles, timelines, metric figures; /openapi.json) from the results database."""
    from streams.api import run_api

    settings = _settings(ctx)
    if not settings.read_keys:
        raise click.ClickException("set CXSTREAM_READ_KEYS (keys of the read API, HTTP Basic user names)")
    click.echo(f"read API on http://{host}:{port}/ (OpenAPI at /openapi.json); Ctrl-C stops it", err=True)
    run_api(settings, host, port)


@main.command()
@click.argument("customer")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def timeline(ctx: click.Context, customer: str, as_json: bool) -> None:
    """Print the timeline of CUSTOMER (a customer id, or an identifier such as an e-mail or email:a@b.c)."""
    import orjson
    from sqlalchemy.exc import DBAPIError

    from sinks.database import make_engine, missing_sqlite_file
    from sinks.queries import customer_timeline, resolve_customer

    url = _settings(ctx).database_url
    if missing := missing_sqlite_file(url):
        raise click.ClickException(
            f"no results database at {missing} (CXSTREAM_DATABASE_URL={url}): start a worker to create it, "
            "or point CXSTREAM_DATABASE_URL at the one it writes"
        )
    engine = make_engine(url)
    try:
        customer_id = resolve_customer(engine, customer)
        if customer_id is None:
            raise click.ClickException(f"no customer known by {customer!r}")
        data = customer_timeline(engine, customer_id)
    except DBAPIError as exc:
        first = str(exc.orig or exc).splitlines()[0]
        raise click.ClickException(f"cannot read the results database {url}: {first}") from None
    if as_json:
        click.echo(orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2).decode())
        return
    profile = data["profile"] or {}
    click.echo(f"customer {customer_id}  stage={profile.get('stage')}  events={profile.get('events')}")
    click.echo("identifiers: " + ", ".join(data["identifiers"]))
    stage = None
    for row in data["touchpoints"]:
        if row["stage"] != stage:
            stage = row["stage"]
            click.echo(f"── {stage.replace('_', '-')} " + "─" * 40)
        moments = f"  ★ {row['moments']}" if row["moments"] else ""
        amount = f"  {row['amount']} {row['currency']}" if row["amount"] is not None else ""
        when = row["occurred_at"].strftime("%Y-%m-%d %H:%M")
        click.echo(f"  {when}  {row['channel']:<9} {row['type']:<16}{amount}{moments}")


if __name__ == "__main__":  # pragma: no cover
    main()
