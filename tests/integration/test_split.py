"""Splits made by hand (``cxstream split``) on SQLite and PostgreSQL, in-process against the real databases: Ann
and Bob share a family tablet and were merged into one customer; splitting Bob's e-mail off gives two customers
whose tables (identities, touchpoints, states, metric cells) equal the oracle's under the same never-link rules;
replays from offset 0, into the same database and into a fresh one holding the rules, keep them apart; later
events carrying Bob's e-mail and the tablet stay with Bob; the split is audited and published on cx.identity."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import Engine, select, update

from config.settings import Settings, load_settings
from schemas.touchpoint import Channel, EventType, IdentifierType, TouchpointEvent
from sinks import tables as t
from sinks.erasure import erase_customer
from sinks.identity_rules import add_manual_split
from sinks.sql import SqlSink
from streams.cli import main
from streams.domain.identity import KeptApart
from streams.identity_rules import BadIdentifier, SplitTooLarge, import_rules, rules_in_force, split_customer
from streams.pipeline import BatchProcessor
from tests.integration.test_event_time import order_free
from tests.integration.test_manual_merge import identity_records
from tests.integration.test_never_link import (
    ANN,
    BOB,
    audit,
    comparable,
    customer_of,
    customers,
    event,
    feed,
    household,
    records,
    worker,
)
from tests.support.expected import expected_results
from tests.support.processes import wait_until
from tests.support.read_api import READ_KEY, read_api

TABLET_KEY = "web_anonymous_id:family-tablet"


def rules(settings: Settings) -> KeptApart:
    return KeptApart([(rule.key_a, rule.key_b) for rule in rules_in_force(settings)])


def merges_of(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(t.identity_merges.c.merged_id, t.identity_merges.c.survivor_id)).all())


def test_a_split_moves_bob_and_his_events_off_the_shared_customer_and_a_replay_keeps_them_apart(
    database_url: str, second_database_url: str
) -> None:
    events = household()
    settings, engine, processor = worker(database_url)
    feed(processor, records(events))
    assert customers(engine) == 1, "without a rule the tablet merges Ann and Bob"
    both = customer_of(engine, ANN)

    report = split_customer(settings, "ANN@example.org", ["bob@example.org"], actor="test", reason="T-5", wait_s=0)
    assert (report.customer_id, report.moved, report.rules, report.moved_to) == (both, [BOB], 2, None)
    assert {(r.key_a, r.key_b) for r in rules_in_force(settings)} == {(ANN, BOB), (BOB, TABLET_KEY)}

    published = identity_records(processor)  # an idle worker's tick applies it
    assert customers(engine) == 2
    bob = customer_of(engine, BOB)
    assert customer_of(engine, ANN) == customer_of(engine, TABLET_KEY) == both != bob
    assert [(r["kind"], r["event_id"], r["survivor_id"], r["merged_id"], r["identifiers"]) for r in published] == [
        ("split", report.split_id, both, bob, {"email": "bob@example.org"})
    ]
    assert not identity_records(processor), "applied once"
    with engine.connect() as conn:
        owners = dict(conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all())
        applied_at = conn.execute(select(t.manual_splits.c.applied_at)).scalar_one()
    assert applied_at is not None
    # Bob's identify, purchase and call went with him; the tablet's own page views and Ann's events stayed.
    assert {e.event_id for e in events if owners[e.event_id] == bob} == {"web-4", "web-5", "phone-6"}
    assert audit(engine) == [("split", "test", "T-5"), ("split_applied", f"worker:{settings.worker_id}", "")]

    apart = rules(settings)
    expected = expected_results(events, settings, apart)
    assert comparable(order_free(engine)) == comparable(expected), "the oracle's tables under the split's rules"
    assert expected != expected_results(events, settings)

    # A replay from offset 0 into the same database: every event is a duplicate, nothing moves back.
    processor.sink.reset_offsets(settings.app_id)
    processor.reload()
    ends: dict[str, int] = {}
    feed(processor, records(events, ends))
    assert comparable(order_free(engine)) == comparable(expected)

    # ...and into a fresh database holding the rules (exported and imported as keys are stored).
    fresh = load_settings(database_url=second_database_url)
    _, rebuilt_db, rebuild = worker(second_database_url)
    exported = orjson.dumps([{"keys": [r.key_a, r.key_b]} for r in rules_in_force(settings)])
    assert import_rules(fresh, exported, actor="test") == (2, 0, 0)
    feed(rebuild, records(events))
    assert comparable(order_free(rebuilt_db)) == comparable(expected)

    # A later event carrying Bob's e-mail and the tablet stays with Bob: the tablet is kept apart.
    later = event(
        20, Channel.WEB, EventType.PAGE_VIEW, {IdentifierType.EMAIL: "bob@example.org"} | household()[0].identifiers
    )
    feed(processor, records([later], ends))
    assert customer_of(engine, BOB) == bob and customer_of(engine, TABLET_KEY) == both
    assert comparable(order_free(engine)) == comparable(expected_results([*events, later], settings, apart))


def test_a_split_re_forms_a_merged_customer_and_keeps_merges_made_by_hand_among_the_kept_keys(
    database_url: str,
) -> None:
    events = household()
    settings, engine, processor = worker(database_url)
    ends: dict[str, int] = {}
    feed(processor, records(events[:4], ends))  # up to Bob's identify on the tablet: Bob's customer merged in
    assert customers(engine) == 1
    both = customer_of(engine, ANN)
    assert merges_of(engine), "Bob's first customer was merged into Ann's"
    split_customer(settings, both, [BOB], actor="test", wait_s=0)
    processor.tick()
    feed(processor, records(events[4:], ends))
    bob = customer_of(engine, BOB)
    assert bob != both and all(merged != bob for merged, _ in merges_of(engine)), "no merge row for a split-off"
    assert comparable(order_free(engine)) == comparable(expected_results(events, settings, rules(settings)))


def test_a_split_refuses_what_the_customer_does_not_hold_and_leaving_nothing(database_url: str) -> None:
    settings, engine, processor = worker(database_url)
    feed(processor, records(household()))
    with pytest.raises(BadIdentifier, match="is not an identifier of customer"):
        split_customer(settings, ANN, ["email:carl@example.org"], actor="test", wait_s=0)
    with pytest.raises(BadIdentifier, match="no customer"):
        split_customer(settings, "email:carl@example.org", [ANN], actor="test", wait_s=0)
    with pytest.raises(BadIdentifier, match="nothing would be left"):
        split_customer(settings, ANN, [ANN, BOB, TABLET_KEY], actor="test", wait_s=0)
    with pytest.raises(BadIdentifier, match="at least one identifier"):
        split_customer(settings, ANN, [], actor="test", wait_s=0)
    # A customer's events are applied again in one batch: a bigger customer than the bound is refused up front.
    bounded = settings.model_copy(update={"split_max_touchpoints": 7})
    with pytest.raises(SplitTooLarge, match="more than 7 touchpoints \\(CXSTREAM_SPLIT_MAX_TOUCHPOINTS=7\\)"):
        split_customer(bounded, ANN, [BOB], actor="test", wait_s=0)
    with engine.connect() as conn:
        assert conn.execute(select(t.manual_splits)).all() == [] and conn.execute(select(t.never_link)).all() == []
        assert conn.execute(select(t.audit_log).where(t.audit_log.c.action.like("split%"))).all() == []
    # At the bound (the customer's 8 touchpoints), it goes through.
    exact = settings.model_copy(update={"split_max_touchpoints": 8})
    assert split_customer(exact, ANN, [BOB], actor="test", wait_s=0).customer_id == customer_of(engine, ANN)


def bounded_worker(database_url: str, split_max_touchpoints: int) -> tuple[Settings, Engine, BatchProcessor]:
    settings, engine, _ = worker(database_url)
    settings = settings.model_copy(update={"split_max_touchpoints": split_max_touchpoints})
    return settings, engine, BatchProcessor(settings, SqlSink(engine))


def two_households() -> list[TouchpointEvent]:
    """Ann and Bob (8 events, one customer), and Cleo and Dan on a tablet of their own (8 more, another)."""
    cleo_dan = [
        e.model_copy(
            update={
                "event_id": f"{e.event_id}-b",
                "identifiers": {
                    kind: {"ann@example.org": "cleo@example.org", "bob@example.org": "dan@example.org"}.get(
                        value, value + "-b"
                    )
                    for kind, value in e.identifiers.items()
                },
            }
        )
        for e in household()
    ]
    return household() + cleo_dan


def test_a_worker_takes_splits_while_their_customers_fit_its_bound_and_leaves_the_rest_to_its_next_batch(
    database_url: str,
) -> None:
    settings, engine, processor = bounded_worker(database_url, 10)
    carl, dave, tablet = (
        {IdentifierType.EMAIL: "carl@example.org"},
        {IdentifierType.EMAIL: "dave@example.org"},
        {IdentifierType.WEB_ANONYMOUS_ID: "tablet-c"},
    )
    small = [
        event(70, Channel.WEB, EventType.IDENTIFY, carl | tablet),
        event(71, Channel.WEB, EventType.IDENTIFY, dave | tablet),
    ]
    feed(processor, records(two_households() + small))
    assert customers(engine) == 3
    first = split_customer(settings, ANN, [BOB], actor="test", wait_s=0)
    second = split_customer(settings, "email:cleo@example.org", ["email:dan@example.org"], actor="test", wait_s=0)
    third = split_customer(settings, "email:carl@example.org", ["email:dave@example.org"], actor="test", wait_s=0)

    # 8 + 8 touchpoints are over 10 together: one split now, and the third (2 touchpoints, which would fit) waits
    # behind the second: oldest first.
    processor.tick()
    assert {split_id for split_id, at in _split_rows(engine) if at is not None} == {first.split_id}
    assert customers(engine) == 4
    processor.tick()
    assert {split_id for split_id, at in _split_rows(engine) if at is not None} == {
        first.split_id,
        second.split_id,
        third.split_id,
    }
    assert customers(engine) == 6


def test_a_worker_refuses_a_split_whose_customer_is_over_its_bound_and_goes_on(database_url: str) -> None:
    # The command's bound let it through (another process, another setting); the worker's does not.
    settings, engine, processor = bounded_worker(database_url, 7)
    ends: dict[str, int] = {}
    feed(processor, records(household(), ends))
    asking = settings.model_copy(update={"split_max_touchpoints": 8})
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(split_customer, asking, ANN, [BOB], actor="test", wait_s=30)
        wait_until(lambda: bool(_split_rows(engine)), 20, "the split to be recorded", 0.05)
        assert processor.tick().splits_refused == 1  # counted: cxstream_identity_splits_refused_total
        with pytest.raises(SplitTooLarge, match=r"a worker refused split .*: the customer has more than 7 touchpoints"):
            answer.result()

    assert customers(engine) == 1, "not split"
    [(split_id, applied_at)] = _split_rows(engine)
    assert applied_at is not None, "done with, not retried at every start"
    with engine.connect() as conn:
        refusal = conn.execute(
            select(t.audit_log.c.subject, t.audit_log.c.reason).where(t.audit_log.c.action == "split_refused")
        ).one()
    assert refusal.subject == split_id and "more than 7 touchpoints" in refusal.reason
    assert customer_of(engine, ANN) not in refusal.reason, "audit rows stay after an erasure: no customer id in them"
    # The worker goes on: events keep being applied.
    eve = event(50, Channel.WEB, EventType.PAGE_VIEW, {IdentifierType.EMAIL: "eve@example.org"})
    feed(processor, records([eve], ends))
    assert customers(engine) == 2


class _GrowsWhileUnlocked(SqlSink):
    """A sink whose first count of a customer's touchpoints (before the batch locks it) is the one it had when the
    split was asked: as if another worker's merge made it bigger between that count and the lock."""

    def __init__(self, engine: Engine, counted_before: int) -> None:
        super().__init__(engine)
        self.counted_before: int | None = counted_before

    def count_touchpoints(self, conn: Any, customer_id: str, up_to: int) -> int:
        if self.counted_before is not None:
            counted, self.counted_before = self.counted_before, None
            return counted
        return super().count_touchpoints(conn, customer_id, up_to)


def test_a_customer_that_grew_past_the_bound_before_its_lock_is_refused_under_it(database_url: str) -> None:
    settings, engine, _ = bounded_worker(database_url, 7)
    processor = BatchProcessor(settings, _GrowsWhileUnlocked(engine, counted_before=5))
    feed(processor, records(household()))
    split_customer(settings.model_copy(update={"split_max_touchpoints": 8}), ANN, [BOB], actor="test", wait_s=0)

    processor.tick()
    assert customers(engine) == 1, "not split: counted again under the lock, 8 touchpoints"
    with engine.connect() as conn:
        actions = conn.execute(select(t.audit_log.c.action).where(t.audit_log.c.action.like("split_%"))).scalars()
        assert list(actions) == ["split_refused"]


class _StaleKeys(SqlSink):
    """A sink whose first read of one customer's identifier keys is from before another worker's batch merged that
    customer away: as when the merge commits between the batch's read of its splits and its customers' locks."""

    def __init__(self, engine: Engine, customer_id: str, keys: list[str]) -> None:
        super().__init__(engine)
        self.stale: tuple[str, list[str]] | None = (customer_id, keys)

    def customer_keys(self, conn: Any, customer_id: str) -> list[str]:
        if self.stale is not None and self.stale[0] == customer_id:
            keys, self.stale = self.stale[1], None
            return keys
        return super().customer_keys(conn, customer_id)


def test_a_split_whose_customer_was_merged_away_before_its_lock_waits_and_then_follows_its_keys(
    database_url: str,
) -> None:
    settings, engine, processor = worker(database_url)
    ends: dict[str, int] = {}
    feed(processor, records(household(), ends))
    shared = customer_of(engine, ANN)
    with engine.connect() as conn:
        keys = SqlSink(engine).customer_keys(conn, shared)
    # A CRM id (stronger) joins the shared customer, which merges it into the customer of that id; the split was
    # asked before (its row names the shared customer), and the batch below read the keys before the merge.
    crm = {IdentifierType.CRM_ID: "crm-ann", IdentifierType.EMAIL: "ann@example.org"}
    feed(processor, records([event(60, Channel.STORE, EventType.PURCHASE, crm, amount=5, currency="GBP")], ends))
    holder = customer_of(engine, ANN)
    assert holder != shared and customer_of(engine, BOB) == holder, "merged away"
    add_manual_split(
        engine, shared, [BOB], [ANN, TABLET_KEY], split_id="split-1", at=datetime.now(UTC), actor="test", reason=""
    )

    late = BatchProcessor(settings, _StaleKeys(engine, shared, keys))
    late.tick()
    assert _split_rows(engine) == [("split-1", None)], "not marked done: nothing was split"
    late.tick()
    assert customer_of(engine, BOB) != customer_of(engine, ANN) == holder
    assert _split_rows(engine)[0][1] is not None


def _split_rows(engine: Engine) -> list[tuple[str, datetime | None]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(t.manual_splits.c.split_id, t.manual_splits.c.applied_at))]


def test_events_stored_before_their_keys_were_stay_with_the_strongest_identifier(sqlite_url: str) -> None:
    events = household()
    settings, engine, processor = worker(sqlite_url)
    feed(processor, records(events))
    with engine.begin() as conn:  # as a database upgraded from before migration 0018 holds them
        conn.execute(update(t.touchpoints).where(t.touchpoints.c.event_id == "web-5").values(identifier_keys=None))
    split_customer(settings, ANN, [BOB], actor="test", wait_s=0)
    processor.tick()
    with engine.connect() as conn:
        owner = conn.execute(select(t.touchpoints.c.customer_id).where(t.touchpoints.c.event_id == "web-5")).scalar()
    assert owner == customer_of(engine, ANN) != customer_of(engine, BOB)


def test_the_command_splits_and_reports_both_sides(sqlite_url: str) -> None:
    *_, processor = worker(sqlite_url)
    feed(processor, records(household()))
    env = {"CXSTREAM_DATABASE_URL": sqlite_url}
    too_large = CliRunner().invoke(
        main, ["split", ANN, "--identifier", BOB], env={**env, "CXSTREAM_SPLIT_MAX_TOUCHPOINTS": "7"}
    )
    assert too_large.exit_code == 1 and "(CXSTREAM_SPLIT_MAX_TOUCHPOINTS=7)" in too_large.output
    assert len(too_large.output.strip().splitlines()) == 1, too_large.output
    queued = CliRunner().invoke(
        main, ["split", ANN, "--identifier", BOB, "--wait", "0", "--json"], env=env, catch_exceptions=False
    )
    assert queued.exit_code == 0, queued.output
    answer = json.loads(queued.output)
    assert answer["moved"] == [BOB] and answer["moved_to"] is None and answer["never_link_rules"] == 2
    processor.tick()
    refused = CliRunner().invoke(main, ["split", ANN, "--identifier", BOB], env=env, catch_exceptions=False)
    assert refused.exit_code == 1 and "is not an identifier of customer" in refused.output


def test_the_api_splits_behind_the_admin_keys_and_answers_with_both_sides(sqlite_url: str, tmp_path: Path) -> None:
    *_, processor = worker(sqlite_url)
    feed(processor, records(household()))
    engine = processor.sink.engine
    with read_api(sqlite_url, tmp_path / "api.log", admin_keys="admin-key") as base:
        url, body = f"{base}/v1/splits", {"customer": ANN, "identifiers": [BOB], "reason": "ticket 9"}
        assert requests.post(url, json=body, auth=(READ_KEY, ""), timeout=10).status_code == 401
        empty = requests.post(url, json={**body, "identifiers": []}, auth=("admin-key", ""), timeout=10)
        assert empty.status_code == 400
        foreign = {**body, "identifiers": ["email:carl@example.org"]}
        refused = requests.post(url, json=foreign, auth=("admin-key", ""), timeout=10)
        assert refused.status_code == 409 and "is not an identifier of customer" in refused.json()["error"]
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(requests.post, url, json=body, auth=("admin-key", ""), timeout=30)
            wait_until(lambda: bool(processor.tick().outputs.records), 20, "a tick to apply the split")
            split = answer.result()
        assert split.status_code == 200, split.text
        assert (
            split.json()["moved_to"] == customer_of(engine, BOB) != split.json()["kept_by"] == customer_of(engine, ANN)
        )
        assert "/v1/splits" in requests.get(f"{base}/openapi.json", timeout=10).json()["paths"]
    with engine.connect() as conn:
        actor = conn.execute(select(t.audit_log.c.actor).where(t.audit_log.c.action == "split")).scalar_one()
    assert actor.startswith("api:") and "admin-key" not in actor


def test_an_erasure_takes_the_splits_naming_the_person_with_it(database_url: str) -> None:
    settings, engine, processor = worker(database_url)
    feed(processor, records(household()))
    split_customer(settings, ANN, [BOB], actor="test", wait_s=0)
    processor.tick()
    erased = erase_customer(
        engine, customer_of(engine, BOB), suppress=lambda keys: list(keys), erasure_id="e-1",
        at=datetime.now(UTC), actor="test", reason="", options={},
    )  # fmt: skip
    assert erased is not None
    with engine.connect() as conn:
        assert conn.execute(select(t.manual_splits)).all() == [], "its row names Bob's e-mail"


def test_an_identifier_only_ever_seen_beside_a_moved_one_is_left_with_no_customer(database_url: str) -> None:
    # The tablet was only used with Bob's e-mail: once kept apart from it, no event links it to anyone (each goes
    # with Bob's e-mail, its strongest identifier), as in the oracle's replay: its identity row goes.
    bob = {IdentifierType.EMAIL: "bob@example.org"}
    events = [
        event(1, Channel.WEB, EventType.PAGE_VIEW, bob | household()[0].identifiers),
        event(2, Channel.PHONE, EventType.SUPPORT_CONTACT, bob, issue_id="CASE-2", resolved=True),
    ]
    settings, engine, processor = worker(database_url)
    feed(processor, records(events))
    report = split_customer(settings, BOB, [BOB], actor="test", wait_s=0)
    processor.tick()
    with engine.connect() as conn:
        keys = set(conn.execute(select(t.identities.c.identifier)).scalars())
    assert keys == {BOB} and report.customer_id == customer_of(engine, BOB)
    assert comparable(order_free(engine)) == comparable(expected_results(events, settings, rules(settings)))
    feed(
        processor,
        records([event(3, Channel.WEB, EventType.PAGE_VIEW, household()[0].identifiers)], {"cx.touchpoints.web": 0}),
    )
    assert customer_of(engine, TABLET_KEY) != customer_of(engine, BOB), "a tablet-only event starts a customer"


def test_a_split_refuses_an_identifier_type_nobody_declared(sqlite_url: str) -> None:
    settings, _, processor = worker(sqlite_url)
    feed(processor, records(household()))
    with pytest.raises(BadIdentifier, match="not a built-in identifier type"):
        split_customer(settings, ANN, ["nope:1"], actor="test", wait_s=0)


def test_removing_a_splits_rules_by_its_id_lets_later_events_link_the_two_again(sqlite_url: str) -> None:
    events = household()
    settings, engine, processor = worker(sqlite_url)
    ends: dict[str, int] = {}
    feed(processor, records(events, ends))
    report = split_customer(settings, ANN, [BOB], actor="test", wait_s=0)
    processor.tick()
    env = {"CXSTREAM_DATABASE_URL": sqlite_url}

    def cli(*args: str) -> str:
        result = CliRunner().invoke(main, ["never-link", *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert json.loads(cli("--remove", "--rule", report.split_id, "--json")) == {"removed": 2}
    assert "removed 0 rules" in cli("--remove", "--rule", report.split_id)
    assert rules_in_force(settings) == []
    action, actor, _ = audit(engine)[-1]
    assert action == "never_link_removed" and actor.startswith("cli:") and len(audit(engine)) == 3
    assert customer_of(engine, BOB) != customer_of(engine, ANN), "customers kept apart stay apart"
    both = event(
        30, Channel.WEB, EventType.PAGE_VIEW, {IdentifierType.EMAIL: "bob@example.org"} | household()[0].identifiers
    )
    feed(processor, records([both], ends))
    assert customer_of(engine, BOB) == customer_of(engine, ANN), "a later event links them again"
    usage = CliRunner().invoke(main, ["never-link", "--rule", report.split_id], env=env)
    assert usage.exit_code == 2 and "--rule goes with --remove alone" in usage.output
