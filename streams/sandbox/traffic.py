"""`cxstream simulate`: simulated journeys published through the same adapters as real source files, or written out."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from config.settings import Settings
from schemas.touchpoint import Channel
from streams.adapters.reader import convert_one
from streams.domain.identifiers import IdentifierHashing
from streams.kafka import BrokerUnreachable, ensure_topics
from streams.policies import identifier_hashing
from streams.publisher import Publisher
from streams.sandbox.journeys import SimRecord, simulate, write_files


def run_simulation(settings: Settings, *, rate: float | None, out: Path | None, envelope: int, **journeys: Any) -> None:
    """Generate traffic; write it to ``out`` or publish it (paced at ``rate`` events/s when given).

    ``journeys``: the keyword arguments of :func:`~streams.sandbox.journeys.simulate` (customers, days, seed and
    the rates of duplicate, late and malformed records), as the ``cxstream simulate`` options give them.
    """
    records = simulate(**journeys)
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
