"""`cxstream simulate`: simulated journeys published through the same adapters as real source files."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path

import click

from config.settings import Settings
from schemas.touchpoint import Channel
from streams.adapters.reader import convert_one
from streams.domain.identifiers import IdentifierHashing
from streams.kafka import BrokerUnreachable, ensure_topics
from streams.policies import identifier_hashing
from streams.publisher import Publisher
from streams.simulate import SimRecord, simulate, write_files


def run_simulation(
    settings: Settings,
    *,
    customers: int,
    days: int,
    seed: int,
    rate: float | None,
    out: Path | None,
    envelope: int,
    duplicate_rate: float,
    late_rate: float,
    malformed_rate: float,
) -> None:
    """Generate traffic; write it to ``out`` or publish it (paced at ``rate`` events/s when given)."""
    records = simulate(
        customers=customers,
        days=days,
        seed=seed,
        duplicate_rate=duplicate_rate,
        late_rate=late_rate,
        malformed_rate=malformed_rate,
    )
    if out is not None:
        for channel, path in write_files(records, out).items():
            click.echo(f"{channel}: {path}")
        return
    try:
        ensure_topics(settings)
        publisher = Publisher(settings, envelope_size=envelope)
    except BrokerUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        publish_simulated(publisher, records, rate=rate, hashing=identifier_hashing(settings))
    except KeyboardInterrupt:
        click.echo("simulation interrupted", err=True)
    finally:
        summary = publisher.close()
        click.echo(summary.render(), err=True)
    if not summary.accounted:
        sys.exit(2)  # like `cxstream publish`: some records were not acknowledged, even after re-sending


def publish_simulated(
    publisher: Publisher,
    records: Iterable[SimRecord],
    *,
    rate: float | None = None,
    hashing: IdentifierHashing | None = None,
) -> None:
    """Convert simulated records through the adapters and publish them (paced at ``rate`` records/s when given).

    Does not flush: the caller closes the publisher, which waits for every acknowledgement and re-sends what the
    broker did not acknowledge.
    """
    started = time.monotonic()
    for n, rec in enumerate(records, 1):
        publisher.summary.read += 1
        item = convert_one(Channel(rec.channel), rec.raw, source_file="simulate", line=n, hashing=hashing)
        dead = getattr(item, "dead_letter", None)
        if dead is not None:
            publisher.dead_letter(dead)
        else:
            publisher.event(item.event, raw_json=None)  # type: ignore[union-attr]
        if rate:
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
