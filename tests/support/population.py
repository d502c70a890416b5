"""A results database filled as a worker fills it, from a simulated population (the read side's tests)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from config.settings import Settings, load_settings
from schemas.touchpoint import Channel, TouchpointEvent
from sinks.database import make_engine, upgrade
from sinks.sql import SqlSink
from streams.adapters.reader import convert_one
from streams.pipeline import BatchProcessor, InRecord
from streams.policies import identifier_hashing
from streams.sandbox.journeys import simulate

SALT = "read-side-test-salt"
#: Large enough to hold merges and alerts (about 1,100 touchpoints).
CUSTOMERS, DAYS, SEED = 150, 14, 41


def worker_processor(settings: Settings) -> tuple[Engine, BatchProcessor]:
    """A writer engine on ``settings.database_url``, its schema upgraded, and a batch processor on it: what a
    worker's apply process holds."""
    engine = make_engine(settings.database_url, writer=True)
    upgrade(engine)
    return engine, BatchProcessor(settings, SqlSink(engine))


def raw_events() -> list[TouchpointEvent]:
    """A simulated population's events as the adapters convert them without hashing (raw identifiers)."""
    records = simulate(customers=CUSTOMERS, days=DAYS, seed=SEED)
    events = []
    for n, rec in enumerate(records, 1):
        event = getattr(convert_one(Channel(rec.channel), rec.raw, source_file="simulate", line=n), "event", None)
        if event is not None:
            events.append(event)
    return events


def fill(database_url: str, hashing: bool, batch: int = 500) -> None:
    """Apply the population as a worker does, ``batch`` events a batch (identifiers hashed at conversion when
    ``hashing``)."""
    settings = load_settings(
        database_url=database_url, hash_identifiers=hashing, identifier_salt=SALT if hashing else ""
    )
    engine, processor = worker_processor(settings)
    converter = identifier_hashing(settings)
    records = []
    for n, rec in enumerate(simulate(customers=CUSTOMERS, days=DAYS, seed=SEED), 1):
        item = convert_one(Channel(rec.channel), rec.raw, source_file="simulate", line=n, hashing=converter)
        event = getattr(item, "event", None)
        if event is not None:
            records.append(InRecord("cx.touchpoints.all", 0, len(records), event.model_dump_json().encode()))
    for start in range(0, len(records), batch):
        processor.process(records[start : start + batch])
    engine.dispose()
