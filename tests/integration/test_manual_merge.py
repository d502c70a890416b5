"""Merges made by hand (``cxstream merge``) on SQLite and PostgreSQL, in-process against the real databases: a
worker's tick applies one with no input, past a per-type limit, re-deriving both timelines (a contact becomes a
repeat and contradicts the other side's resolution), and the tables equal the oracle's with the same merge; a
never-link rule refuses it; every merge is audited and published as a ``manual_merge`` identity record."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import Engine, select

from schemas.touchpoint import Channel, EventType, IdentifierType, TouchpointEvent
from sinks import tables as t
from sinks.erasure import erase_customer
from sinks.sql import as_utc
from streams.cli import main
from streams.domain.stitching import ManualLink
from streams.identity_rules import BadIdentifier, keep_apart, merge_customers
from streams.pipeline import BatchProcessor
from tests.integration.test_event_time import order_free
from tests.integration.test_never_link import audit, comparable, customer_of, customers, event, feed, records, worker
from tests.support.expected import expected_results
from tests.support.processes import wait_until
from tests.support.read_api import READ_KEY, read_api

EMAIL, PHONE, CRM = IdentifierType.EMAIL, IdentifierType.PHONE, IdentifierType.CRM_ID
ANN, ANN_PHONE = "email:ann@example.org", "phone:+447700900123"


def two_records_of_ann() -> list[TouchpointEvent]:
    """Ann on the web (e-mail, CRM-1) and on the phone (her number, CRM-2): nothing links the two."""
    web = {EMAIL: "ann@example.org", CRM: "CRM-1"}
    phone = {PHONE: "+447700900123", CRM: "CRM-2"}
    return [
        event(1, Channel.WEB, EventType.PURCHASE, web, amount=Decimal(30), currency="GBP"),
        event(2, Channel.PHONE, EventType.SUPPORT_CONTACT, phone, issue_id="CASE-7", resolved=True),
        event(5, Channel.WEB, EventType.SUPPORT_CONTACT, web, issue_id="CASE-7"),
    ]


def identity_records(processor: BatchProcessor) -> list[dict]:
    """The identity topic's records of the last tick's batch."""
    report = processor.tick()
    topic = processor.topics.identity
    return [orjson.loads(record[2]) for record in report.outputs.records if record[0] == topic]


def merge_row(engine: Engine) -> tuple[str, str | None]:
    with engine.connect() as conn:
        return conn.execute(select(t.manual_merges.c.merge_id, t.manual_merges.c.applied_at)).one()


def test_a_merge_made_by_hand_is_applied_by_the_next_tick_and_equals_the_oracle(database_url: str) -> None:
    events = two_records_of_ann()
    settings, engine, processor = worker(database_url)
    feed(processor, records(events))
    assert customers(engine) == 2, "nothing links them, and CRM-1/CRM-2 would exceed the crm_id limit anyway"

    report = merge_customers(settings, "ANN@example.org", "+44 7700 900123", actor="test", reason="TICKET-3", wait_s=0)
    assert report.survivor is None, "no worker ran meanwhile"
    merge_id, applied_at = merge_row(engine)
    assert merge_id == report.merge_id and applied_at is None

    published = identity_records(processor)  # an idle worker's tick applies it
    assert customers(engine) == 1 and customer_of(engine, ANN) == customer_of(engine, ANN_PHONE)
    assert [(r["kind"], r["event_id"]) for r in published] == [("manual_merge", merge_id)]
    assert merge_row(engine)[1] is not None
    assert not identity_records(processor), "applied once"
    with engine.connect() as conn:
        contacts = dict(
            conn.execute(
                select(t.touchpoints.c.event_id, t.touchpoints.c.resolution_contradicted).where(
                    t.touchpoints.c.type == "support_contact"
                )
            ).all()
        )
        created_at = conn.execute(select(t.manual_merges.c.created_at)).scalar_one()
    assert contacts == {events[1].event_id: True, events[2].event_id: None}, "the other side's contact contradicts"
    assert [(action, reason) for action, _, reason in audit(engine)] == [("manual_merge", "TICKET-3")]

    link = ManualLink(merge_id, merge_keys(engine), as_utc(created_at))
    expected = expected_results(events, settings, links=[link])
    assert comparable(order_free(engine)) == comparable(expected)


def merge_keys(engine: Engine) -> tuple[str, str]:
    with engine.connect() as conn:
        row = conn.execute(select(t.manual_merges.c.key_a, t.manual_merges.c.key_b)).one()
    return row[0], row[1]


def test_a_never_link_rule_refuses_a_merge_and_references_must_name_two_customers(database_url: str) -> None:
    settings, engine, processor = worker(database_url)
    feed(processor, records(two_records_of_ann()))
    keep_apart(settings, ANN, ANN_PHONE, actor="test")
    with pytest.raises(BadIdentifier, match=r"never-link rule .* keeps them apart"):
        merge_customers(settings, ANN, ANN_PHONE, actor="test", wait_s=0)
    with pytest.raises(BadIdentifier, match="one customer already"):
        merge_customers(settings, ANN, "crm_id:CRM-1", actor="test", wait_s=0)
    with pytest.raises(BadIdentifier, match=r"no customer 'email:nobody@example\.org'"):
        merge_customers(settings, ANN, "email:nobody@example.org", actor="test", wait_s=0)
    with engine.connect() as conn:
        assert conn.execute(select(t.manual_merges)).all() == []


def test_the_command_records_a_merge_for_the_next_worker(sqlite_url: str) -> None:
    *_, processor = worker(sqlite_url)
    feed(processor, records(two_records_of_ann()))
    env = {"CXSTREAM_DATABASE_URL": sqlite_url}
    queued = CliRunner().invoke(main, ["merge", ANN, ANN_PHONE, "--wait", "0"], env=env, catch_exceptions=False)
    assert queued.exit_code == 0 and "no worker applied it within 0s" in queued.output
    processor.tick()
    refused = CliRunner().invoke(main, ["merge", ANN, ANN_PHONE], env=env, catch_exceptions=False)
    assert refused.exit_code == 1 and "one customer already" in refused.output


def test_the_api_merges_behind_the_admin_keys_and_answers_with_the_survivor(sqlite_url: str, tmp_path: Path) -> None:
    *_, processor = worker(sqlite_url)
    feed(processor, records(two_records_of_ann()))
    with read_api(sqlite_url, tmp_path / "api.log", admin_keys="admin-key") as base:
        url, body = f"{base}/v1/merges", {"first": ANN, "second": ANN_PHONE, "reason": "ticket 9"}
        assert requests.post(url, json=body, auth=(READ_KEY, ""), timeout=10).status_code == 401
        assert requests.post(url, json={"first": ANN}, auth=("admin-key", ""), timeout=10).status_code == 400
        nobody = requests.post(url, json={**body, "second": "c-nobody"}, auth=("admin-key", ""), timeout=10)
        assert nobody.status_code == 409 and "no customer" in nobody.json()["error"]
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(requests.post, url, json=body, auth=("admin-key", ""), timeout=30)
            wait_until(lambda: bool(processor.tick().outputs.records), 20, "a tick to apply the merge")
            merged = answer.result()
        assert merged.status_code == 200, merged.text
        assert (
            merged.json()["survivor"]
            == customer_of(processor.sink.engine, ANN)
            == customer_of(processor.sink.engine, ANN_PHONE)
        )
        assert "/v1/merges" in requests.get(f"{base}/openapi.json", timeout=10).json()["paths"]


def test_an_erasure_takes_the_persons_merges_made_by_hand_with_it(database_url: str) -> None:
    settings, engine, processor = worker(database_url)
    feed(processor, records(two_records_of_ann()))
    merge_customers(settings, ANN, ANN_PHONE, actor="test", wait_s=0)
    processor.tick()
    erased = erase_customer(
        engine, customer_of(engine, ANN) or "", suppress=lambda keys: list(keys), erasure_id="e-1",
        at=datetime.now(UTC), actor="test", reason="", options={},
    )  # fmt: skip
    assert erased is not None
    with engine.connect() as conn:
        assert conn.execute(select(t.manual_merges)).all() == [], "its rows name the person's identifiers"


def test_merges_move_to_a_rebuilt_database_and_wait_there_for_their_identifiers(
    database_url: str, second_database_url: str
) -> None:
    events = two_records_of_ann()
    settings, old_db, old = worker(database_url)
    feed(old, records(events))
    merge_customers(settings, ANN, ANN_PHONE, actor="test", reason="TICKET-3", wait_s=0)
    old.tick()
    env = {"CXSTREAM_DATABASE_URL": database_url}
    exported = CliRunner().invoke(main, ["merge", "--list", "--json"], env=env, catch_exceptions=False).output
    (listed,) = orjson.loads(exported)
    assert listed["applied_at"] is not None and sorted(listed["keys"]) == sorted(merge_keys(old_db))

    # A fresh database gets the merge before it replays the topics: it waits, through ticks, for both identifiers.
    _, new_db, rebuild = worker(second_database_url)
    fresh_env = {"CXSTREAM_DATABASE_URL": second_database_url}
    imported = CliRunner().invoke(
        main, ["merge", "--import", "-", "--json"], env=fresh_env, input=exported, catch_exceptions=False
    )
    assert orjson.loads(imported.output) == {"added": 1, "already_there": 0, "erased": 0}
    again = CliRunner().invoke(main, ["merge", "--import", "-"], env=fresh_env, input=exported, catch_exceptions=False)
    assert "0 merges added, 1 already there" in again.output
    ends: dict[str, int] = {}
    feed(rebuild, records(events[:1], ends))
    assert rebuild.tick().outputs.records == [] and merge_row(new_db)[1] is None, "Ann's phone has not arrived"
    feed(rebuild, records(events[1:], ends))
    assert merge_row(new_db)[1] is not None and customers(new_db) == 1
    assert comparable(order_free(new_db)) == comparable(order_free(old_db))
    bad = CliRunner().invoke(main, ["merge", "--import", "-"], env=fresh_env, input=b'[{"keys": ["email:x"]}]')
    assert bad.exit_code == 1 and "entry 0: expected" in bad.output and "nothing was imported" in bad.output
