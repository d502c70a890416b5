"""The ``cxstream`` command line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import click

from config.settings import Settings, SettingsError, load_settings
from schemas.deadletter import STAGES
from schemas.outputs import MetricScope

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from streams.deadletters import ReplayPlan


#: A share of records (the simulator's rates): at least 0, less than 1.
_RATE = click.FloatRange(0.0, 1.0, max_open=True)
#: ``simulate`` and ``demo``: a channel to degrade. The choices are ``streams.sandbox.journeys.DEGRADABLE``, spelt
#: out because the simulator is imported only when a command runs.
_DEGRADE = click.option(
    "--degrade",
    type=click.Choice(["store", "phone", "web"]),
    default=None,
    help="Make this channel's experience worse from halfway through the days (lower answers, fewer resolutions): "
    "experience-drop alerts fire.",
)


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
@click.option("--customers", type=click.IntRange(min=1), default=1000, show_default=True, help="Simulated people.")
@click.option("--days", type=click.IntRange(min=1), default=7, show_default=True, help="Days of journeys.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed: same seed, same traffic.")
@click.option(
    "--rate", type=float, default=None, help="Events per second to publish at (default: as fast as possible)."
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write <channel>.jsonl files here instead.")
@click.option("--envelope", type=int, default=0, show_default=True, help="Events per Kafka record (0: one per record).")
@click.option(
    "--duplicates", "duplicate_rate", type=_RATE, default=0.02, show_default=True, help="Share of re-sent records."
)
@click.option(
    "--late", "late_rate", type=_RATE, default=0.02, show_default=True, help="Share of late, out-of-order records."
)
@click.option(
    "--malformed", "malformed_rate", type=_RATE, default=0.005, show_default=True, help="Share of malformed lines."
)
@_DEGRADE
@click.option(
    "--warmup-days",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Start the journeys this many days earlier and send only what occurs from the first day on (a business "
    "already running when tracking begins).",
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
@_DEGRADE
@click.pass_context
def demo(ctx: click.Context, customers: int, days: int, rate: float, seed: int, degrade: str | None) -> None:
    """Embedded broker + worker + simulated traffic on SQLite, with /metrics; Ctrl-C stops everything."""
    from streams.sandbox.demo import run_demo

    run_demo(_settings(ctx), customers, days, rate, seed, degrade)


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


@contextmanager
def _results_database(settings: Settings) -> Iterator[Engine]:
    """The results database to read, or one clear line when there is none at a SQLite path or it cannot be read."""
    from sqlalchemy.exc import DBAPIError

    from sinks.database import make_engine, missing_sqlite_file

    url = settings.database_url
    if missing := missing_sqlite_file(url):
        raise click.ClickException(
            f"no results database at {missing} (CXSTREAM_DATABASE_URL={url}): start a worker to create it, "
            "or point CXSTREAM_DATABASE_URL at the one it writes"
        )
    engine = make_engine(url)
    try:
        yield engine
    except DBAPIError as exc:
        first = str(exc.orig or exc).splitlines()[0]
        raise click.ClickException(f"cannot read the results database {url}: {first}") from None
    finally:
        engine.dispose()


@main.command()
@click.argument("customer")
@click.option(
    "--mode",
    type=click.Choice(["suppress_with_delete", "delete_only"]),
    default="suppress_with_delete",
    show_default=True,
    help="suppress_with_delete: the person's events are dropped from now on, replays included; delete_only: rows "
    "removed only (a replay or a new event brings the person back).",
)
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@click.option("--wait", "wait_s", type=float, default=60.0, show_default=True, help="Seconds to wait for the outbox.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def erase(ctx: click.Context, customer: str, mode: str, reason: str, wait_s: float, as_json: bool) -> None:
    """Erase CUSTOMER (a customer id, or an identifier such as email:a@b.c): GDPR Art. 17.

    Removes the customer's rows (customer, identities, touchpoints, alerts, merges, per-customer metric cells),
    records a suppression entry per identifier (salted hashes only) so that workers drop the person's events from
    now on, replays from offset 0 included, publishes tombstones for the person's keys on cx.profiles and
    cx.metrics, and adds an audit row. The input topics' raw records are outside its reach (README).
    """
    from streams.erasure import Mode, NoSuchCustomer, cli_actor
    from streams.erasure import erase as erase_customer
    from streams.inspection import dumps
    from streams.kafka import BrokerUnreachable

    settings = _settings(ctx)
    if not settings.identifier_salt:
        click.echo(
            "warning: CXSTREAM_IDENTIFIER_SALT is not set: the suppression entries are HMACs with a default key, "
            "which anyone holding a list of identifiers can test them against",
            err=True,
        )
    try:
        report = erase_customer(settings, customer, mode=Mode(mode), actor=cli_actor(), reason=reason, wait_s=wait_s)
    except NoSuchCustomer as exc:
        raise click.ClickException(str(exc)) from None
    except BrokerUnreachable as exc:
        raise click.ClickException(f"{exc}; nothing was erased") from None
    if as_json:
        click.echo(dumps(report.as_json()))
    else:
        data = report.as_json()
        click.echo(
            f"erased customer {data['customer_id']} (erasure {data['erasure_id']}, {data['mode']}): "
            f"{data['touchpoints']} touchpoints, {data['identifiers']} identifiers, {data['alerts']} alerts, "
            f"{data['merges']} merges, {data['metric_cells']} metric cells; {data['suppressed_identifiers']} "
            f"identifiers suppressed; {data['tombstones']} tombstones published"
        )
    if report.unpublished_before:
        click.echo(
            f"warning: {report.unpublished_before} outbox rows committed before the erasure were still unpublished "
            "(no worker running?): when a worker publishes them, the customer's last profile and figures are on "
            "cx.profiles and cx.metrics again, after the tombstones. Erase with a worker running to avoid this",
            err=True,
        )
    if report.problem:
        raise click.ClickException(report.problem)


def _import_exported(
    importer: Callable[..., tuple[int, int, int]],
    settings: Settings,
    import_file: BinaryIO,
    what: str,
    *,
    reason: str,
    as_json: bool,
) -> None:
    """Run an import of what another database's ``--list --json`` printed (never-link rules, merges by hand) and
    say what it added, found there already, and left out because it names an erased person."""
    from streams.erasure import cli_actor
    from streams.identity_rules import BadIdentifier
    from streams.inspection import dumps

    try:
        added, present, erased = importer(settings, import_file.read(), actor=cli_actor(), reason=reason or "imported")
    except BadIdentifier as exc:
        raise click.ClickException(f"{getattr(import_file, 'name', '-')}: {exc}; nothing was imported") from None
    click.echo(
        dumps({"added": added, "already_there": present, "erased": erased})
        if as_json
        else f"{added} {what} added, {present} already there, {erased} left out (they name an erased person)"
    )


@main.command("merge")
@click.argument("refs", nargs=-1)
@click.option("--list", "list_merges", is_flag=True, help="List the merges made by hand, applied or waiting.")
@click.option(
    "--import",
    "import_file",
    type=click.File("rb"),
    help="Add the merges another database's `--list --json` printed (- for stdin): for a database rebuilt from the "
    "input topics (each waits until both its identifiers arrive).",
)
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@click.option(
    "--wait", "wait_s", type=float, default=30.0, show_default=True, help="Seconds to wait for a worker to apply it."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def merge(
    ctx: click.Context,
    refs: tuple[str, ...],
    list_merges: bool,
    import_file: BinaryIO | None,
    reason: str,
    wait_s: float,
    as_json: bool,
) -> None:
    """Merge two customers (ids, or identifiers such as email:a@b.c) that stitching did not link.

    A running worker applies it in its next batch (or within a second when idle), as an event carrying an
    identifier of each would link them, but with no per-type limit: both timelines are derived again, the merged
    customer's figures move into the survivor's, and cx.identity gets a manual_merge record. A never-link rule
    between the two refuses it. An audit_log row records it.
    """
    from streams.erasure import cli_actor
    from streams.identity_rules import BadIdentifier, import_merges, merge_customers, merges_made
    from streams.inspection import dumps

    settings = _settings(ctx)
    if (import_file is not None or list_merges) and (refs or (import_file is not None and list_merges)):
        raise click.UsageError("--list and --import take no customers, and not each other")
    if import_file is not None:
        _import_exported(import_merges, settings, import_file, "merges", reason=reason, as_json=as_json)
        return
    if list_merges:
        merges = merges_made(settings)
        if as_json:
            click.echo(
                dumps(
                    [
                        {
                            "merge_id": m.merge_id,
                            "keys": [m.key_a, m.key_b],
                            "created_at": m.created_at.isoformat(),
                            "applied_at": None if m.applied_at is None else m.applied_at.isoformat(),
                        }
                        for m in merges
                    ]
                )
            )
        for m in [] if as_json else merges:
            state = "waiting" if m.applied_at is None else f"applied {m.applied_at.isoformat()}"
            click.echo(f"{m.merge_id}  {m.key_a}  {m.key_b}  asked {m.created_at.isoformat()}, {state}")
        return
    if len(refs) != 2:
        raise click.UsageError("name two customers (or --list, --import)")
    try:
        report = merge_customers(settings, refs[0], refs[1], actor=cli_actor(), reason=reason, wait_s=wait_s)
    except BadIdentifier as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(dumps(report.as_json()))
    elif report.survivor is not None:
        click.echo(f"merged {report.customers[0]} and {report.customers[1]} into {report.survivor} ({report.merge_id})")
    else:
        click.echo(
            f"merge {report.merge_id} recorded; no worker applied it within {wait_s:g}s: the next one to run does"
        )


@main.command("split")
@click.argument("ref")
@click.option(
    "--identifier",
    "identifiers",
    multiple=True,
    required=True,
    help="An identifier to move to the new customer (TYPE:VALUE, or a bare e-mail or phone number); repeatable.",
)
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@click.option(
    "--wait", "wait_s", type=float, default=30.0, show_default=True, help="Seconds to wait for a worker to apply it."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def split(
    ctx: click.Context, ref: str, identifiers: tuple[str, ...], reason: str, wait_s: float, as_json: bool
) -> None:
    """Split identifiers off a customer (an id, or an identifier such as email:a@b.c) merged by mistake, with the
    events that reached it only through them.

    Never-link rules keep each moved identifier apart from each one the customer keeps (replays and future events
    included, until removed with never-link --remove). A running worker then applies the customer's events again
    under them, from its touchpoints in event-time order: both timelines and their figures are derived again, and
    cx.identity gets a split record. An audit_log row records it.
    """
    from streams.erasure import cli_actor
    from streams.identity_rules import BadIdentifier, split_customer
    from streams.inspection import dumps

    try:
        report = split_customer(_settings(ctx), ref, identifiers, actor=cli_actor(), reason=reason, wait_s=wait_s)
    except BadIdentifier as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(dumps(report.as_json()))
    elif report.moved_to is not None:
        click.echo(
            f"split {report.customer_id}: {', '.join(report.moved)} now with {report.moved_to}, the rest with "
            f"{report.kept_by} ({report.split_id})"
        )
    else:
        click.echo(
            f"split {report.split_id} recorded; no worker applied it within {wait_s:g}s: the next one to run does"
        )


@main.command("never-link")
@click.argument("identifiers", nargs=-1)
@click.option("--remove", is_flag=True, help="Remove the rule keeping the two identifiers apart.")
@click.option(
    "--rule",
    "rule_id",
    help="With --remove, instead of two identifiers: remove every rule of this id (a split's id: all its rules).",
)
@click.option("--list", "list_rules", is_flag=True, help="List the rules in force.")
@click.option(
    "--import",
    "import_file",
    type=click.File("rb"),
    help="Add the rules another database's `--list --json` printed (- for stdin): for a database rebuilt from the "
    "input topics.",
)
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def never_link(
    ctx: click.Context,
    identifiers: tuple[str, ...],
    remove: bool,
    rule_id: str | None,
    list_rules: bool,
    import_file: BinaryIO | None,
    reason: str,
    as_json: bool,
) -> None:
    """Keep two identifiers (e.g. email:ann@example.org email:bob@example.org) out of one customer.

    From the next batch of every worker on, an event that would link them links neither's customer to the
    other: the event goes to the customer of its strongest identifier, as when a per-type limit refuses a link
    (cxstream_identifiers_rejected_total{reason="never_link"}). A customer already holding both stays merged:
    cxstream split undoes the merge (README, Privacy and identity control). Each change is an audit_log row.
    """
    from streams.erasure import cli_actor
    from streams.identity_rules import (
        BadIdentifier,
        allow_link,
        allow_links_of,
        import_rules,
        keep_apart,
        rules_in_force,
    )
    from streams.inspection import dumps

    settings = _settings(ctx)
    if rule_id is not None:
        if not remove or identifiers or list_rules or import_file is not None:
            raise click.UsageError("--rule goes with --remove alone")
        removed = allow_links_of(settings, rule_id, actor=cli_actor(), reason=reason)
        click.echo(dumps({"removed": removed}) if as_json else f"removed {removed} rules of {rule_id}")
        return
    if import_file is not None:
        if identifiers or remove or list_rules:
            raise click.UsageError("--import takes no identifiers, --remove or --list")
        _import_exported(import_rules, settings, import_file, "rules", reason=reason, as_json=as_json)
        return
    if list_rules:
        if identifiers or remove:
            raise click.UsageError("--list takes no identifiers")
        rules = rules_in_force(settings)
        if as_json:
            click.echo(
                dumps(
                    [
                        {"rule_id": r.rule_id, "keys": [r.key_a, r.key_b], "created_at": r.created_at.isoformat()}
                        for r in rules
                    ]
                )
            )
        for rule in [] if as_json else rules:
            click.echo(f"{rule.rule_id}  {rule.key_a}  {rule.key_b}  since {rule.created_at.isoformat()}")
        return
    if len(identifiers) != 2:
        raise click.UsageError("name two identifiers (or --list)")
    change_rule = allow_link if remove else keep_apart
    try:
        change = change_rule(settings, identifiers[0], identifiers[1], actor=cli_actor(), reason=reason)
    except BadIdentifier as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(dumps(change.as_json()))
    elif remove:
        click.echo(f"removed rule {change.rule.rule_id}" if change.rule else "no such rule: nothing changed")
    elif change.rule is not None:
        click.echo(f"{'added' if change.changed else 'already there:'} rule {change.rule.rule_id}")
    if change.holder is not None:
        click.echo(
            f"warning: customer {change.holder} holds both already (merged before the rule): it stays merged until "
            "split (cxstream split); the rule keeps them apart for links made from now on, and in a rebuild",
            err=True,
        )


@main.command()
@click.argument("customer")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def timeline(ctx: click.Context, customer: str, as_json: bool) -> None:
    """Print the timeline of CUSTOMER (a customer id, or an identifier such as an e-mail or email:a@b.c).

    Touchpoints by journey stage with their amounts, survey scores (NPS, CSAT, CES), issues (contact number,
    repeat, resolved) and moments of truth; then the customer's alerts and the customers merged into it.
    """
    from sinks.queries import resolve_customer
    from streams.inspection import customer_story, dumps, story_lines
    from streams.policies import Policies, identifier_hashing
    from streams.references import find_customer

    settings = _settings(ctx)
    with _results_database(settings) as engine:
        # As the read API finds it (normalised, hashed with hashing on); else a bare value of any type as stored.
        customer_id = find_customer(
            engine, customer, identifier_hashing(settings), settings.default_phone_region
        ) or resolve_customer(engine, customer)
        if customer_id is None:
            raise click.ClickException(f"no customer known by {customer!r}")
        data = customer_story(engine, customer_id, Policies.from_settings(settings).customer)
    click.echo(dumps(data) if as_json else "\n".join(story_lines(data)))


def _utc_time(text: str | None, name: str) -> datetime | None:
    """An ISO 8601 time with a zone, or a date (midnight UTC); a usage error naming the option otherwise."""
    if text is None:
        return None
    try:
        return datetime.combine(date.fromisoformat(text), time(), UTC)
    except ValueError:
        pass  # not a bare date
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"expected an ISO 8601 time such as 2024-05-01T00:00:00Z, got {text!r}", param_hint=name
        ) from None
    if at.tzinfo is None:  # a local time would mean whatever this machine's zone is
        raise click.BadParameter(f"needs a time zone (Z or +hh:mm), got {text!r}", param_hint=name)
    return at


@main.command()
@click.option("--scope", type=click.Choice([scope.value for scope in MetricScope]), help="Only figures of this scope.")
@click.option("--key", help="Only figures of this key: a channel, a customer id, or 'all' for overall.")
@click.option("--metric", help="Only this metric (nps, csat, ces, fcr, repeat_contact_rate, ...).")
@click.option("--window", help="Only this window (1h, 1d, 7d, 30d, all; last_7d, last_30d: rolling, as of now).")
@click.option("--from", "since", metavar="TIME", help="Windows starting at or after TIME (ISO 8601, or a UTC date).")
@click.option("--to", "until", metavar="TIME", help="Windows starting before TIME.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Most figures shown.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def metrics(
    ctx: click.Context,
    scope: str | None,
    key: str | None,
    metric: str | None,
    window: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Print metric figures from the results database, by window start: value, basis, status and revision."""
    from sinks.queries import metric_page
    from streams.inspection import METRIC_NAMES, dumps, metric_lines

    if metric is not None and metric not in METRIC_NAMES:
        raise click.BadParameter(
            f"unknown metric {metric!r}; one of {', '.join(sorted(METRIC_NAMES))}", ctx, param_hint="--metric"
        )
    start, end = _utc_time(since, "--from"), _utc_time(until, "--to")
    given = {"scope": scope, "key": key, "metric": metric, "window": window}
    wanted = {name: value for name, value in given.items() if value is not None}
    with _results_database(_settings(ctx)) as engine:
        rows = metric_page(engine, wanted, start, end, None, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    if as_json:
        click.echo(dumps(rows))
    elif rows:
        click.echo("\n".join(metric_lines(rows)))
    else:
        click.echo("no figures match")
    if more:
        click.echo(f"more figures match than --limit {limit}: raise it, or narrow with --from/--to", err=True)


@main.command()
@click.option("--reason", help="Only dead letters with this reason (invalid_json, too_late, ...).")
@click.option("--channel", help="Only dead letters of this channel (store, phone, web, ecommerce).")
@click.option("--stage", type=click.Choice(sorted(STAGES)), help="Only dead letters rejected there.")
@click.option("--list", "as_list", is_flag=True, help="List the dead letters, one per line.")
@click.option("--show", "position", metavar="PARTITION:OFFSET", help="Print one dead letter in full, its original too.")
@click.option("--replay", is_flag=True, help="Publish the selected dead letters' originals again.")
@click.option("--dry-run", is_flag=True, help="With --replay: say what would be published, publish nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (counts, --list, --show).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Stop after this many matching dead letters.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Stop reading after this many seconds.",
)
@click.pass_context
def deadletters(
    ctx: click.Context,
    reason: str | None,
    channel: str | None,
    stage: str | None,
    as_list: bool,
    position: str | None,
    replay: bool,
    dry_run: bool,
    as_json: bool,
    limit: int,
    timeout: float,
) -> None:
    """Read the dead-letter topic to its current end: counts by reason, channel and stage (the default), a list,
    one dead letter in full, or a replay.

    --replay sends the selected dead letters' original bytes again, for records refused for a reason since put
    right (a setting, a bug): a worker's to the channel topic it read them from, an adapter's source line through
    the channel's adapter again with today's settings. It refuses, publishing nothing, when a selected dead letter
    cannot be replayed from what it holds (original not kept or cut, a CSV row, a collector request).
    """
    from config.topics import Topics
    from streams import deadletters as dl
    from streams.inspection import SortedJsonList, dumps
    from streams.kafka import BrokerUnreachable

    if as_list + bool(position) + replay > 1:
        raise click.UsageError("--list, --show and --replay go one at a time", ctx)
    if dry_run and not replay:
        raise click.UsageError("--dry-run goes with --replay", ctx)
    if as_json and replay:
        raise click.UsageError("--json goes with the counts, --list or --show, not --replay", ctx)
    selection = dl.Selection(reason=reason, channel=channel, stage=stage)
    if position and selection != dl.Selection():
        raise click.UsageError("--show takes no --reason, --channel or --stage", ctx)
    settings = _settings(ctx)
    topic = Topics(settings.topic_prefix).deadletter
    if position:
        try:
            partition, offset = dl.parse_position(position)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param_hint="--show") from None
        try:
            letter = dl.find(settings, partition, offset, timeout_s=timeout)
        except (BrokerUnreachable, dl.NothingToRead) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(dumps(dl.letter_json(letter, original=True)) if as_json else "\n".join(dl.show_lines(letter, topic)))
        return
    lines: list[tuple[tuple[datetime, int, int], str]] = []
    listed = SortedJsonList()
    tally = dl.Tally()
    plan = dl.ReplayPlan(settings)
    ctx.call_on_close(listed.close)  # their temporary files
    ctx.call_on_close(plan.close)

    def line_of(letter: dl.Letter) -> None:
        dead = letter.dead
        lines.append(((dead.rejected_at, letter.partition, letter.offset), dl.list_line(letter)))

    def json_of(letter: dl.Letter) -> None:
        listed.add((letter.dead.rejected_at, letter.partition, letter.offset), dl.letter_json(letter))

    try:
        # Only what is shown is kept: the counts need no dead letter, a plain list a line each, not its original
        # bytes (up to CXSTREAM_MAX_RECORD_BYTES each), so a long list stays small; a JSON list, which shows them,
        # and a replay, which sends them, keep them in a temporary file.
        keep = plan.add if replay else (json_of if as_json else line_of) if as_list else tally.add
        scan = dl.scan(settings, selection, keep, limit=limit, timeout_s=timeout)
    except BrokerUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    except dl.NothingToRead as exc:  # no topic: said in one line, and still valid JSON for a script
        click.echo(str(exc), err=as_json)
        if as_json:
            click.echo("[]")
        return
    for note in scan.notes():
        click.echo(note, err=True)
    if as_json and as_list:
        listed.write(click.echo)
    elif as_json:
        click.echo(dumps(tally.rows()))
    elif not scan.matched:
        what = "dead letters" if selection == dl.Selection() else "dead letters match"
        click.echo(f"no {what} on {topic} ({scan.read} records read)" + (": nothing to replay" if replay else ""))
    elif replay:
        if scan.timed_out:  # a replay of part of a selection could not be told from a whole one afterwards
            raise click.ClickException(f"{topic} was not read to its end within --timeout: nothing was republished")
        _replay(settings, plan, scan.matched, dry_run)
    elif as_list:
        click.echo("\n".join(line for _, line in sorted(lines)))
    else:
        click.echo("\n".join(tally.lines()))


def _replay(settings: Settings, plan: ReplayPlan, selected: int, dry_run: bool) -> None:
    """Replay (or with ``dry_run`` describe) the ``selected`` dead letters ``plan`` holds; exit 1 on a refusal, 2
    when the broker lost some."""
    from streams import deadletters as dl
    from streams.kafka import BrokerUnreachable

    if refusal := plan.refusal(selected):
        raise click.ClickException(refusal)
    if dry_run:
        click.echo("\n".join([*plan.preview(), *plan.lines(sent=None)]))
        return
    try:
        sent = dl.replay(plan, settings)
    except BrokerUnreachable as exc:
        raise click.ClickException(f"{exc}\nnothing was republished") from None
    click.echo("\n".join(plan.lines(sent=sent)))
    if sent.not_sent:
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
