"""Splits by hand in hard cases, on SQLite and PostgreSQL (each found by a review, and failing before its fix): two
splits of one customer pending together; a second worker on PostgreSQL that read Bob's key before another applied the
split; a split after an identifier priority change; months of history; an erased person's identifier on another
customer's touchpoint; a split in one batch with redeliveries and new events of both sides; a pending merge by hand."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, func, select

from schemas.touchpoint import Channel, EventType, IdentifierType, SurveyAnswers
from sinks import tables as t
from sinks.erasure import ErasedRows, erase_customer
from streams.domain.identity import customer_id_for
from streams.identity_rules import split_customer
from tests.integration.test_event_time import order_free
from tests.integration.test_never_link import (
    ANN,
    BOB,
    TABLET,
    comparable,
    customer_of,
    customers,
    event,
    feed,
    household,
    records,
    worker,
)
from tests.integration.test_split import rules
from tests.support.expected import expected_results

CAROL = "email:carol@example.org"


def three_on_a_tablet() -> list:
    carol = {IdentifierType.EMAIL: "carol@example.org"}
    return [
        *household(),
        event(9, Channel.WEB, EventType.IDENTIFY, carol | TABLET),
        event(10, Channel.WEB, EventType.PURCHASE, carol | TABLET, amount=7, currency="GBP"),
        event(11, Channel.PHONE, EventType.SUPPORT_CONTACT, carol, issue_id="CASE-9"),
    ]


def state_of(engine, customer_id: str) -> dict:
    with engine.connect() as conn:
        row = conn.execute(select(t.customers).where(t.customers.c.customer_id == customer_id)).mappings().one()
    return dict(row)


def test_two_splits_of_one_customer_pending_together_do_not_count_events_twice(database_url: str) -> None:
    """Three people on one tablet: Bob and Carol are split off before a worker applies either (worker stopped, or
    two requests within one batch). Each split reads every touchpoint of the customer before either is applied, so
    the second one applies the first one's moved events again, to the customers the first one formed."""
    events = three_on_a_tablet()
    settings, engine, processor = worker(database_url)
    feed(processor, records(events))
    assert customers(engine) == 1
    split_customer(settings, ANN, [BOB], actor="test", wait_s=0)
    split_customer(settings, ANN, [CAROL], actor="test", wait_s=0)
    processor.tick()  # the worker's next tick applies both
    assert customers(engine) == 3
    bob = state_of(engine, customer_of(engine, BOB))
    assert bob["events"] == 3, f"Bob has 3 events (identify, purchase, call), the row says {bob['events']}"
    expected = expected_results(events, settings, rules(settings))
    assert comparable(order_free(engine)) == comparable(expected)


def test_a_worker_reading_bobs_key_while_another_applies_the_split_does_not_put_bobs_next_event_on_ann(
    postgres_url: str,
) -> None:
    """Two workers on PostgreSQL. Worker B reads Bob's identity row (-> the shared customer) and then waits for that
    customer's lock while worker A applies the split. ``_lock_customers`` trusts a key read before the lock when
    its customer's row is still there ("a key's customer changes only by a merge, which deletes the merged
    customer's row"): a split breaks that (the shared customer's row stays, Bob's key moved), so applying one adds
    an audit row, which B finds changed once it holds the lock, and B applies its batch again from what A committed."""
    from sinks.database import make_engine
    from sinks.sql import SqlSink
    from streams.pipeline import BatchProcessor

    events = household()
    settings, engine, first = worker(postgres_url)
    feed(first, records(events))
    both = customer_of(engine, ANN)
    second = BatchProcessor(settings, SqlSink(make_engine(postgres_url, writer=True)))
    split_customer(settings, ANN, [BOB], actor="test", wait_s=0)

    lock = second.sink.lock_customers
    ran = []

    def lock_after_the_other_worker_applied(tx, ids):  # type: ignore[no-untyped-def]
        if not ran:
            ran.append(first.tick())  # worker A's tick applies the split and commits meanwhile
        return lock(tx, ids)

    second.sink.lock_customers = lock_after_the_other_worker_applied  # type: ignore[method-assign]
    later = event(
        30, Channel.ECOMMERCE, EventType.PURCHASE, {IdentifierType.EMAIL: "bob@example.org"}, amount=99, currency="GBP"
    )
    second.process(records([later]))
    bob = customer_of(engine, BOB)
    assert ran[0].result is not None and [c.kind for c in ran[0].result.splits] == ["split"], "A applied it"
    with engine.connect() as conn:
        split_off = conn.execute(select(t.customers.c.customer_id).where(t.customers.c.customer_id != both)).all()
    assert len(split_off) == 1, "Bob's customer exists"
    assert bob == split_off[0][0], f"Bob's identity row points to {bob} (the shared customer) again"
    with engine.connect() as conn:
        owner = conn.execute(
            select(t.touchpoints.c.customer_id).where(t.touchpoints.c.event_id == later.event_id)
        ).scalar_one()
    assert owner == bob, f"Bob's later purchase went to {owner} (Ann's side: {both}), not to Bob's {bob}"


def test_a_split_after_a_priority_change_leaves_no_stale_customer_row(database_url: str) -> None:
    """CXSTREAM_IDENTIFIER_PRIORITY changed after the customers were formed (the README allows it: a customer is
    renamed when a later event links something new). A split re-stitches both sides under the new priority, so
    neither may keep the old id: the old customer is then removed as merged into the side keeping the kept
    identifiers (its row, state and per-customer figures must not stay behind, held by no identifier)."""
    from config.settings import load_settings
    from sinks.sql import SqlSink
    from streams.pipeline import BatchProcessor

    events = household()
    _, engine, processor = worker(database_url)
    feed(processor, records(events))
    both = customer_of(engine, ANN)
    later = load_settings(database_url=database_url, identifier_priority=["web_anonymous_id"])
    processor = BatchProcessor(later, SqlSink(engine))
    split_customer(later, ANN, [BOB], actor="test", wait_s=0)
    processor.tick()
    with engine.connect() as conn:
        ids = set(conn.execute(select(t.customers.c.customer_id)).scalars())
        holders = set(conn.execute(select(t.identities.c.customer_id)).scalars())
        owners = set(conn.execute(select(t.touchpoints.c.customer_id)).scalars())
    assert len(holders) == 2, "split in two"
    assert ids == holders == owners, f"customer rows {sorted(ids)}, identities' {sorted(holders)} (was {both})"


def months_on_a_tablet() -> list:
    """Ann and Bob on the family tablet over half a year: purchases, calls about recurring cases, surveys."""
    import random

    from schemas.touchpoint import SurveyAnswers

    rnd = random.Random(7)
    ann = {IdentifierType.EMAIL: "ann@example.org"}
    bob = {IdentifierType.EMAIL: "bob@example.org"}
    out = []
    for n in range(1, 200):
        who = rnd.choice([ann, bob])
        ids = rnd.choice([who, who | TABLET, TABLET])
        kind = rnd.choice([EventType.PAGE_VIEW, EventType.PURCHASE, EventType.SUPPORT_CONTACT, EventType.SURVEY])
        channel = Channel.PHONE if kind is EventType.SUPPORT_CONTACT else Channel.WEB
        extra: dict = {}
        if kind is EventType.PURCHASE:
            extra = {"amount": rnd.randint(1, 90), "currency": "GBP"}
        elif kind is EventType.SUPPORT_CONTACT:
            extra = {"issue_id": f"CASE-{rnd.randint(0, 3)}", "resolved": rnd.choice([True, None])}
        elif kind is EventType.SURVEY:
            extra = {"survey": SurveyAnswers(nps=rnd.randint(0, 10))}
        out.append(event(n * 22, channel, kind, ids, **extra))  # every 22 hours: ~6 months
    return out


def test_a_split_of_a_customer_with_months_of_history_equals_the_oracle(database_url: str) -> None:
    events = months_on_a_tablet()
    settings, engine, processor = worker(database_url)
    feed(processor, records(events), size=7)
    assert customers(engine) == 1
    split_customer(settings, ANN, [BOB], actor="test", wait_s=0)
    processor.tick()
    assert customers(engine) == 2
    expected = expected_results(events, settings, rules(settings))
    got = comparable(order_free(engine))
    want = comparable(expected)
    for table in want:
        assert got[table] == want[table], table


ZED = "phone:+447700900999"


def test_a_split_does_not_bring_back_an_erased_persons_identifier(database_url: str) -> None:
    """Zed's phone number was kept apart from Ann's by a rule, so an event carrying both went to Ann and its touchpoint
    records both keys (``identifier_keys``, migration 0018). Zed is erased (suppress_with_delete): his rows, his
    suppression entry, the rules naming him. Splitting Bob off Ann's customer re-applies that event with its
    recorded keys: Zed's key, now no one's and under no rule, is linked to Ann as a new key - an erased person's
    identifier is back in Ann's state (``customers.state``, the profile, the worker's cache), with no identity row.
    (And before any split, his raw number stays in Ann's touchpoint row, which the erasure does not scrub.)"""
    from streams.domain.suppression import suppression_hash
    from streams.identity_rules import keep_apart
    from streams.policies import suppression_salt

    ann = {IdentifierType.EMAIL: "ann@example.org"}
    bob = {IdentifierType.EMAIL: "bob@example.org"}
    zed = {IdentifierType.PHONE: "+447700900999"}
    events = [
        event(1, Channel.WEB, EventType.PAGE_VIEW, ann | TABLET),
        event(2, Channel.WEB, EventType.PAGE_VIEW, zed),
        event(3, Channel.PHONE, EventType.SUPPORT_CONTACT, ann | zed, issue_id="CASE-1"),
        event(4, Channel.WEB, EventType.PAGE_VIEW, bob | TABLET),
    ]
    settings, engine, processor = worker(database_url)
    keep_apart(settings, ANN, ZED, actor="test")
    feed(processor, records(events), size=1)
    assert customers(engine) == 2
    salt = suppression_salt(settings)
    erased = erase_customer(
        engine, customer_of(engine, ZED), suppress=lambda keys: [suppression_hash(k, salt) for k in keys],
        erasure_id="e-1", at=datetime.now(UTC), actor="test", reason="", options={},
    )  # fmt: skip
    assert erased is not None
    split_customer(settings, ANN, [BOB], actor="test", wait_s=0)
    processor.tick()
    assert customers(engine) == 2, "Ann and Bob"
    with engine.connect() as conn:
        keys = set(conn.execute(select(t.identities.c.identifier)).scalars())
        states = [str(state) for (state,) in conn.execute(select(t.customers.c.state)).all()]
        recorded = [k for (k,) in conn.execute(select(t.touchpoints.c.identifier_keys)).all() if k and ZED in k]
    assert ZED not in keys, "the erased person's phone number is an identity row again"
    assert not [s for s in states if "+447700900999" in s], "the erased person's number is in a customer's state"
    assert not recorded, f"the erased person's number stays in touchpoints.identifier_keys: {recorded}"


def test_a_split_applied_with_a_batch_of_redeliveries_and_new_events_of_both_sides_equals_the_oracle(
    database_url: str,
) -> None:
    events = household()
    settings, engine, processor = worker(database_url)
    ends: dict[str, int] = {}
    feed(processor, records(events, ends))
    split_customer(settings, ANN, [BOB], actor="test", wait_s=0)
    ann = {IdentifierType.EMAIL: "ann@example.org"}
    bob = {IdentifierType.EMAIL: "bob@example.org"}
    new = [
        event(20, Channel.WEB, EventType.PURCHASE, bob | TABLET, amount=5, currency="GBP"),
        event(21, Channel.PHONE, EventType.SUPPORT_CONTACT, bob, issue_id="CASE-1"),
        event(22, Channel.WEB, EventType.PAGE_VIEW, ann | TABLET),
        event(0, Channel.WEB, EventType.PAGE_VIEW, bob),  # late, before everything
    ]
    batch = [*events[3:6], *new]  # Bob's events redelivered, then new ones, in one batch with the split
    processor.process(records(batch, ends))
    assert customers(engine) == 2
    expected = expected_results([*events, *new], settings, rules(settings))
    got, want = comparable(order_free(engine)), comparable(expected)
    for table in want:
        assert got[table] == want[table], table


def test_a_split_applied_with_a_pending_merge_made_by_hand_equals_the_oracle(database_url: str) -> None:
    from streams.domain.stitching import ManualLink
    from streams.identity_rules import merge_customers

    carol = {IdentifierType.EMAIL: "carol@example.org"}
    events = [*household(), event(9, Channel.WEB, EventType.PURCHASE, carol, amount=3, currency="GBP")]
    settings, engine, processor = worker(database_url)
    feed(processor, records(events))
    assert customers(engine) == 2
    merge = merge_customers(settings, BOB, CAROL, actor="test", wait_s=0)
    split_customer(settings, ANN, [BOB], actor="test", wait_s=0)
    processor.tick()
    with engine.connect() as conn:
        a, b, at = conn.execute(
            select(t.manual_merges.c.key_a, t.manual_merges.c.key_b, t.manual_merges.c.created_at)
        ).one()
    from sinks.sql import as_utc

    links = [ManualLink(merge.merge_id, (a, b), as_utc(at))]  # as stored: the customers' strongest keys
    expected = expected_results(events, settings, rules(settings), links)
    got, want = comparable(order_free(engine)), comparable(expected)
    # The merge named Bob but was stored as the customers' strongest keys (Ann's): Carol stays with Ann's side.
    for table in want:
        assert got[table] == want[table], table


def test_a_split_after_a_priority_change_leaves_every_merge_row_on_a_live_customer(database_url: str) -> None:
    """Found while fixing merge chains: the split's old id is removed (no side keeps it) but the ``identity_merges``
    rows naming it as survivor stayed, pointing at no customer (the read API's merges and an erasure missed them),
    and the row of the customer the split formed again said it was merged. The first now lives on the kept side;
    the second goes; the removed id gets a row of its own (found by review: an erasure of the kept side left the
    profile published under the removed id on the compacted topic)."""
    from config.settings import load_settings
    from sinks.sql import SqlSink
    from streams.pipeline import BatchProcessor

    phone = {IdentifierType.PHONE: "+447700900001"}
    ann = {IdentifierType.EMAIL: "ann@example.org"}
    events = [
        *household(),
        event(12, Channel.PHONE, EventType.SUPPORT_CONTACT, phone, issue_id="CASE-2"),
        event(13, Channel.PHONE, EventType.SUPPORT_CONTACT, ann | phone),
        # Ann is unhappy three times over: an alert on her customer, which the split must not leave on a dead id.
        *(event(14 + n, Channel.PHONE, EventType.SURVEY, ann, survey=SurveyAnswers(nps=0)) for n in range(3)),
    ]
    _, engine, processor = worker(database_url)
    feed(processor, records(events))
    with engine.connect() as conn:
        before = merge_records(conn)
        alerted = sorted(set(conn.execute(select(t.alerts.c.customer_id)).scalars()))
    old = customer_of(engine, ANN)
    assert len(before) == 2 and set(before.values()) == {old}, (
        "the tablet's and the phone's customers merged into Ann's"
    )
    later = load_settings(database_url=database_url, identifier_priority=["web_anonymous_id"])
    split_customer(later, ANN, [BOB], actor="test", wait_s=0)
    BatchProcessor(later, SqlSink(engine)).tick()
    kept = customer_of(engine, ANN)
    assert kept != old, "the kept side is named by the tablet now"
    with engine.connect() as conn:
        live = set(conn.execute(select(t.customers.c.customer_id)).scalars())
        after = merge_records(conn)
        alerts_after = sorted(set(conn.execute(select(t.alerts.c.customer_id)).scalars()))
    phone_customer = next(merged for merged in before if merged != kept)
    # The phone's customer lives on the kept side, and so does the removed id (an erasure of the kept side then
    # tombstones its profile too); the tablet's customer, formed again as the kept side, has no row.
    assert after == {phone_customer: kept, old: kept}, f"before {before}, after {after}, customers {sorted(live)}"
    assert alerted == [old] and alerts_after == [kept], "Ann's alert moves with her identifiers"
    with engine.connect() as conn:
        left = cells_of(conn, old)
    erased = erase(engine, kept, "e-1")
    assert old in erased.merged_ids, "erasing the kept side tombstones the removed id too"
    assert left and sum(cell.key == old for cell in erased.cells) == left, "and its per-customer cells"


def test_a_merge_of_the_side_split_off_in_the_same_batch_keeps_its_merge_row(database_url: str) -> None:
    """Found by review: the batch that applies a split also links Bob, now a customer again, with a CRM customer.
    The split's clean-up of Bob's old merge rows ran after the batch's merge rows were written, and took the new
    one with them; applied in two batches, the row stays."""
    from config.settings import load_settings

    crm = {IdentifierType.CRM_ID: "CRM-7"}
    ends: dict[str, int] = {}
    _, engine, processor = worker(database_url)
    feed(processor, records([*household(), event(20, Channel.PHONE, EventType.PAGE_VIEW, crm)], ends))
    crm_customer = customer_of(engine, "crm_id:CRM-7")
    split_customer(load_settings(database_url=database_url), ANN, [BOB], actor="test", wait_s=0)
    bob_and_crm = event(21, Channel.PHONE, EventType.SUPPORT_CONTACT, {IdentifierType.EMAIL: "bob@example.org"} | crm)
    processor.process(records([bob_and_crm], ends))  # the split and the link, in one batch
    assert customer_of(engine, BOB) == crm_customer
    with engine.connect() as conn:
        merged = merge_records(conn)
    assert crm_customer in merged.values(), f"Bob's customer merged into the CRM customer has its row: {merged}"


def test_a_merge_of_the_side_kept_in_the_same_batch_as_its_split_counts_every_event_once(database_url: str) -> None:
    """Found by review: the batch that applies a split (Ann's side keeps the shared customer's id) also links Ann
    with a CRM customer, which survives. The merge moved the shared customer's cells, Bob's events and all, into
    the CRM customer's, but the split's re-emitted entries were withdrawn from the old id's cells: the CRM
    customer counted 15 touchpoints where 7 are right, and the old id's cell came back, empty, after the merge
    deleted it."""
    crm = {IdentifierType.CRM_ID: "CRM-7"}
    ends: dict[str, int] = {}
    settings, engine, processor = worker(database_url)
    events = [*household(), event(20, Channel.PHONE, EventType.PAGE_VIEW, crm)]
    feed(processor, records(events, ends))
    shared, crm_customer = customer_of(engine, ANN), customer_of(engine, "crm_id:CRM-7")
    split_customer(settings, ANN, [BOB], actor="test", wait_s=0)
    ann_and_crm = event(21, Channel.PHONE, EventType.SUPPORT_CONTACT, {IdentifierType.EMAIL: "ann@example.org"} | crm)
    processor.process(records([ann_and_crm], ends))  # the split and the merge, in one batch
    assert customer_of(engine, ANN) == crm_customer and customer_of(engine, BOB) not in (shared, crm_customer)
    with engine.connect() as conn:
        assert cells_of(conn, shared) == 0, "the merged id has no cells left"
    expected = expected_results([*events, ann_and_crm], settings, rules(settings))
    got, want = comparable(order_free(engine)), comparable(expected)
    for table in want:
        assert got[table] == want[table], table


def test_a_customer_merged_in_before_a_split_follows_its_identifiers_to_the_side_split_off(database_url: str) -> None:
    """Found by review: Bob's app (a customer of its own at first) was merged into the shared customer; splitting Bob
    off with the app's id re-forms it on Bob's side, but its ``identity_merges`` row still named Ann's customer, with
    Bob's identifiers as evidence, so an erasure of Bob left them behind and Ann's merges listed them."""
    settings, engine, processor = worker(database_url)
    feed(processor, records(bobs_app(0)))
    app_customer = customer_id_for(APP)
    with engine.connect() as conn:
        before = merge_records(conn)
    assert before.get(app_customer) == customer_of(engine, ANN), (
        f"the app's customer merged into the shared one: {before}"
    )
    split_customer(settings, ANN, [BOB, APP], actor="test", wait_s=0)
    processor.tick()
    bobs = customer_of(engine, BOB)
    assert bobs != customer_of(engine, ANN)
    with engine.connect() as conn:
        after = merge_records(conn)
    assert after.get(app_customer) == bobs, f"the app's merge row follows Bob: {after}"
    erased = erase(engine, bobs, "e-2")
    assert app_customer in erased.merged_ids, "erasing Bob takes the app's merge row"


def test_erasing_one_side_of_a_split_leaves_the_other_sides_rows(database_url: str) -> None:
    """Found by review: Bob was a customer of his own before the tablet merged him into Ann's. Splitting Ann off
    (her e-mail moves, so her side keeps the id) left Bob's side, formed again under his old id, with its merge row
    saying it was merged into Ann's; an erasure of Ann then took Bob's per-customer cells and tombstoned his
    profile."""
    bob = {IdentifierType.EMAIL: "bob@example.org"}
    events = [event(0, Channel.PHONE, EventType.SUPPORT_CONTACT, bob, issue_id="CASE-0"), *household()]
    settings, engine, processor = worker(database_url)
    feed(processor, records(events))
    bobs_first = customer_id_for(BOB)
    with engine.connect() as conn:
        before = merge_records(conn)
    assert bobs_first in before, f"Bob's customer was merged into the shared one: {before}"
    split_customer(settings, ANN, [ANN], actor="test", wait_s=0)
    processor.tick()
    anns, bobs = customer_of(engine, ANN), customer_of(engine, BOB)
    assert bobs == bobs_first != anns, "Bob's side lives under his old id again"
    with engine.connect() as conn:
        live = set(conn.execute(select(t.customers.c.customer_id)).scalars())
        merged = set(conn.execute(select(t.identity_merges.c.merged_id)).scalars())
        cells = cells_of(conn, bobs)
    assert not merged & live, f"no live customer is recorded as merged: {sorted(merged & live)}"
    # The tablet's customer, merged into Ann's by her e-mail before, now merged into Bob's by his: its record says
    # so, with Bob's evidence, not Ann's e-mail.
    assert evidence(engine) and "ann@example.org" not in evidence(engine)
    erased = erase(engine, anns, "e-3")
    assert bobs not in erased.merged_ids and all(c.key != bobs for c in erased.cells)
    with engine.connect() as conn:
        kept = cells_of(conn, bobs)
    assert cells and kept == cells, "Bob's cells stay"


#: Bob's phone app, a customer of its own until an identify call of Bob's links it.
APP = "web_anonymous_id:bobs-phone-app"


def bobs_app(first: int) -> list:
    """The household, and Bob's app: first seen at hour ``first`` and sent first, identified by Bob at hour 20."""
    app = {IdentifierType.WEB_ANONYMOUS_ID: "bobs-phone-app"}
    return [
        event(first, Channel.WEB, EventType.PAGE_VIEW, app),
        *household(),
        event(20, Channel.WEB, EventType.IDENTIFY, {IdentifierType.EMAIL: "bob@example.org"} | app),
    ]


def merge_records(conn: Connection) -> dict[str, str]:
    """``identity_merges`` as merged id -> survivor id."""
    return dict(conn.execute(select(t.identity_merges.c.merged_id, t.identity_merges.c.survivor_id)).all())


def cells_of(conn: Connection, customer_id: str) -> int:
    """How many metric cells are keyed by ``customer_id``."""
    return int(conn.scalar(select(func.count()).select_from(t.metric_cells).where(t.metric_cells.c.key == customer_id)))


def erase(engine: Engine, customer_id: str, erasure_id: str) -> ErasedRows:
    """Erase a customer's rows (no suppression entries), as ``cxstream erase`` does before publishing."""
    erased = erase_customer(
        engine,
        customer_id,
        suppress=None,
        erasure_id=erasure_id,
        at=datetime.now(UTC),
        actor="test",
        reason="",
        options={},
    )
    assert erased is not None
    return erased


def evidence(engine: Engine) -> str:
    """Every ``identity_merges`` row's identifiers, as one text to search."""
    with engine.connect() as conn:
        return str(conn.execute(select(t.identity_merges.c.identifiers)).scalars().all())


def test_erasing_a_person_split_off_takes_their_identifiers_out_of_the_merge_records_left_behind(
    database_url: str,
) -> None:
    """Found by review: Bob's app arrived first and was a customer of its own until a later-arriving but earlier
    call merged it into the shared customer, with Bob's e-mail as evidence. The split re-applies events in
    event-time order, so the app's customer is never formed again and its record stays on Ann's side; erasing Bob
    left his identifiers there."""
    settings, engine, processor = worker(database_url)
    feed(processor, records(bobs_app(21)))
    assert "bob@example.org" in evidence(engine), "the app's record holds Bob's e-mail"
    split_customer(settings, ANN, [BOB, APP], actor="test", wait_s=0)
    processor.tick()
    bobs = customer_of(engine, BOB)
    erased = erase(engine, bobs, "e-4")
    left = evidence(engine)
    assert "bob@example.org" not in left and "bobs-phone-app" not in left, left
    assert erased.evidence >= 1, "and the erasure counts the records it changed"
