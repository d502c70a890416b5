"""The ``cxstream`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from config.settings import Settings, SettingsError, load_settings


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    from streams.broker import BrokerError, run_broker_foreground

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
    from streams.kafka import BrokerUnreachable
    from streams.worker import run_worker

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_worker(_settings(ctx), loglevel)
    except BrokerUnreachable as exc:
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


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("schemas/json"), show_default=True)
def schemas(out: Path) -> None:
    """Write the JSON Schema of every record that crosses a topic."""
    from schemas.jsonschema import export_schemas

    for path in export_schemas(out):
        click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    main()
