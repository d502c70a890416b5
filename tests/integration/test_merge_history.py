"""identity_merges keeps, for every merge, the customer it joined (``merged_into``), however later merges re-point
``survivor_id`` to the customer that lives on; SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from sinks import tables as t
from sinks.contract import BatchWrite, MergeRow
from sinks.database import make_engine, upgrade
from sinks.erasure import erase_customer
from sinks.sql import SqlSink
from streams.domain.identity import repoint
from tests.support.population import fill

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _batch(*pairs: tuple[str, str]) -> BatchWrite:
    """A batch of merges in this order, as the pipeline writes them (each row's survivor after the batch)."""
    repointed = repoint(pairs)
    merges = [
        MergeRow(merged, final, f"e-{merged}", {"email": f"{merged}@example.org"}, T0, survivor)
        for (merged, survivor), final in zip(pairs, repointed.survivors, strict=True)
    ]
    return BatchWrite("g", {}, merges=merges, repointed=repointed.moved)


def test_a_chain_of_merges_keeps_each_merges_own_survivor(database_url: str) -> None:
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    sink = SqlSink(engine)
    # a -> b, then b -> c in a later batch, then c -> d and e -> d in one batch; then a chain inside one batch:
    # d (the survivor of the rows stored) -> f -> g -> h.
    batches = [
        _batch(("a", "b")),
        _batch(("b", "c")),
        _batch(("c", "d"), ("e", "d")),
        _batch(("d", "f"), ("f", "g"), ("g", "h")),
    ]
    for batch in batches:
        with sink.transaction() as tx:
            sink.write(tx, batch)
    m = t.identity_merges.c
    with engine.connect() as conn:
        rows = {
            row.merged_id: (row.survivor_id, row.merged_into)
            for row in conn.execute(select(m.merged_id, m.survivor_id, m.merged_into))
        }
    assert rows == {
        "a": ("h", "b"),
        "b": ("h", "c"),
        "c": ("h", "d"),
        "e": ("h", "d"),
        "d": ("h", "f"),
        "f": ("h", "g"),
        "g": ("h", "h"),
    }


def test_merges_chained_inside_one_batch_end_on_the_customer_that_lives_on(database_url: str) -> None:
    # The whole population in one batch: customers merge into customers that merge again before it commits.
    fill(database_url, hashing=False, batch=100_000)
    engine = make_engine(database_url)
    m, c = t.identity_merges.c, t.customers.c
    with engine.connect() as conn:
        live = set(conn.execute(select(c.customer_id)).scalars())
        rows = conn.execute(select(m.merged_id, m.survivor_id, m.merged_into)).all()
        touchpoint_owners = set(conn.execute(select(t.touchpoints.c.customer_id).distinct()).scalars())
    chained = [row for row in rows if row.merged_into not in live]
    assert chained, "the population has no merge into a customer merged later in the batch"
    assert {row.survivor_id for row in rows} <= live, "a merge row names a customer merged away"
    assert touchpoint_owners <= live

    # An erasure of the customer finds every merge into it, those of the chain included (their evidence holds the
    # person's identifiers).
    person = chained[0].survivor_id
    erase_customer(engine, person, suppress=None, erasure_id="e-1", at=T0, actor="test", reason="test", options={})
    with engine.connect() as conn:
        left = conn.execute(select(m.merged_id).where((m.survivor_id == person) | (m.merged_into == person))).all()
        merged_ids = {row.merged_id for row in rows if row.survivor_id == person}
        named = conn.execute(select(m.merged_id).where(m.merged_id.in_(merged_ids))).all()
    engine.dispose()
    assert left == [] and named == []


def test_rows_of_ids_a_batch_swaps_move_once(database_url: str) -> None:
    # Only customers formed again could give it, but the rows must still end as the merges in order leave them:
    # x -> z, y -> w, w -> x (x formed again), z -> y leave x's rows on y and y's on x.
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    sink = SqlSink(engine)
    identity = t.identities.c
    with engine.begin() as conn:
        conn.execute(
            t.identities.insert(),
            [
                {
                    "identifier": f"email:{x}",
                    "id_type": "email",
                    "id_value": x,
                    "customer_id": x,
                    "first_seen": T0,
                    "last_seen": T0,
                }
                for x in "xyzw"
            ],
        )
    with sink.transaction() as tx:
        sink.write(tx, _batch(("x", "z"), ("y", "w"), ("w", "x"), ("z", "y")))
    with engine.connect() as conn:
        owners = dict(conn.execute(select(identity.id_value, identity.customer_id)).all())
    assert owners == {"x": "y", "y": "x", "z": "y", "w": "x"}
