"""Never-link rules on SQLite and PostgreSQL, in-process against the real databases: two people sharing a tablet
are merged without a rule, kept apart with one (also when it is set while the worker runs), and a database
rebuilt from the input topics under the rule equals the oracle's with the same rule; every change is audited, and
so are the identity rule settings workers start with."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, func, select

from config.settings import Settings, load_settings
from schemas.touchpoint import Channel, EventType, IdentifierType, SourceRef, SurveyAnswers, TouchpointEvent
from sinks import tables as t
from sinks.database import make_engine, upgrade
from sinks.erasure import erase_customer
from sinks.sql import SqlSink
from streams.cli import main
from streams.domain.identity import KeptApart
from streams.domain.suppression import suppression_hash
from streams.identity_rules import (
    BadIdentifier,
    allow_link,
    import_rules,
    keep_apart,
    record_rules_at_start,
    rules_in_force,
)
from streams.pipeline import BatchProcessor, InRecord
from streams.policies import suppression_salt
from tests.integration.test_event_time import order_free
from tests.support.expected import expected_results

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
ANN, BOB = "email:ann@example.org", "email:bob@example.org"
TABLET = {IdentifierType.WEB_ANONYMOUS_ID: "family-tablet"}


def event(n: int, channel: Channel, kind: EventType, ids: dict, **extra: object) -> TouchpointEvent:
    at = T0 + timedelta(hours=n)
    return TouchpointEvent(
        event_id=f"{channel.value}-{n}",
        channel=channel,
        type=kind,
        occurred_at=at,
        received_at=at,
        identifiers=ids,
        source=SourceRef(system="test", id=str(n)),
        **extra,  # type: ignore[arg-type]
    )


def household() -> list[TouchpointEvent]:
    """Ann and Bob both browse and buy on the family tablet; each also calls the service desk once."""
    ann = {IdentifierType.EMAIL: "ann@example.org"}
    bob = {IdentifierType.EMAIL: "bob@example.org"}
    return [
        event(1, Channel.WEB, EventType.PAGE_VIEW, TABLET),
        event(2, Channel.WEB, EventType.IDENTIFY, ann | TABLET),
        event(3, Channel.WEB, EventType.PURCHASE, ann | TABLET, amount=40, currency="GBP"),
        event(4, Channel.WEB, EventType.IDENTIFY, bob | TABLET),
        event(5, Channel.WEB, EventType.PURCHASE, bob | TABLET, amount=15, currency="GBP"),
        event(6, Channel.PHONE, EventType.SUPPORT_CONTACT, bob, issue_id="CASE-1", resolved=True),
        event(7, Channel.PHONE, EventType.SURVEY, ann, survey=SurveyAnswers(nps=9, csat=5)),
        event(8, Channel.WEB, EventType.PAGE_VIEW, TABLET),
    ]


def records(events: list[TouchpointEvent], ends: dict[str, int] | None = None) -> list[InRecord]:
    """The events as partition 0 of their channel topics holds them, appended after ``ends`` (each topic's
    last offset, updated)."""
    ends = {} if ends is None else ends
    out = []
    for e in events:
        topic = f"cx.touchpoints.{e.channel.value}"
        offset = ends[topic] = ends.get(topic, -1) + 1
        out.append(InRecord(topic, 0, offset, e.model_dump_json().encode()))
    return out


def worker(database_url: str) -> tuple[Settings, Engine, BatchProcessor]:
    settings = load_settings(database_url=database_url)
    engine = make_engine(database_url, writer=True)
    upgrade(engine)
    return settings, engine, BatchProcessor(settings, SqlSink(engine))


def feed(processor: BatchProcessor, items: list[InRecord], size: int = 3) -> int:
    """Apply ``items`` in batches of ``size``; return how many links never-link rules refused."""
    apart = 0
    for start in range(0, len(items), size):
        report = processor.process(items[start : start + size])
        apart += report.result.apart if report.result else 0
    return apart


def customer_of(engine: Engine, key: str) -> str:
    with engine.connect() as conn:
        return conn.execute(select(t.identities.c.customer_id).where(t.identities.c.identifier == key)).scalar_one()


def customers(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(t.customers)) or 0


def audit(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(t.audit_log.c.action, t.audit_log.c.actor, t.audit_log.c.reason).order_by("id"))
        return [tuple(row) for row in rows]


def comparable(tables: dict) -> dict:
    """The oracle-decided tables, metric cells without their ``final`` flag (no partition goes idle in-process)."""
    return {
        name: [{k: v for k, v in row.items() if k != "final"} for row in rows]
        for name, rows in tables.items()
        if name != "metrics"
    }


def test_a_rule_keeps_a_shared_tablet_from_merging_two_people_and_a_rebuild_under_it_equals_the_oracle(
    database_url: str, second_database_url: str
) -> None:
    events = household()
    settings, merged_db, processor = worker(database_url)
    assert feed(processor, records(events)) == 0
    assert customers(merged_db) == 1, "without a rule the tablet merges Ann and Bob"

    change = keep_apart(settings, "ANN@example.org", "email:bob@example.org", actor="test", reason="two people")
    assert change.changed and change.holder == customer_of(merged_db, ANN), "the rule warns it splits nothing"
    assert customers(merged_db) == 1

    # The documented way to undo the merge: the rule set on a fresh database, rebuilt from the input topics.
    fresh = load_settings(database_url=second_database_url)
    _, rebuilt_db, rebuild = worker(second_database_url)
    assert keep_apart(fresh, ANN, BOB, actor="test").holder is None
    assert feed(rebuild, records(events)) >= 1
    assert customers(rebuilt_db) == 2
    assert customer_of(rebuilt_db, ANN) != customer_of(rebuilt_db, BOB)
    assert customer_of(rebuilt_db, "web_anonymous_id:family-tablet") == customer_of(rebuilt_db, ANN)
    expected = expected_results(events, fresh, KeptApart([(ANN, BOB)]))
    assert comparable(order_free(rebuilt_db)) == comparable(expected)
    assert expected != expected_results(events, fresh), "the rule changes what the oracle expects"
    assert audit(rebuilt_db) == [("never_link", "test", "")]


def test_a_rule_set_while_the_worker_runs_applies_from_its_next_batch_until_removed(database_url: str) -> None:
    events = household()
    settings, engine, processor = worker(database_url)
    ends: dict[str, int] = {}
    feed(processor, records(events[:3], ends))  # Ann on the tablet: the worker's cache holds her customer
    keep_apart(settings, ANN, BOB, actor="test", reason="two people")
    assert [(r.key_a, r.key_b) for r in rules_in_force(settings)] == [(ANN, BOB)]

    assert feed(processor, records(events[3:], ends)) >= 1
    assert customer_of(engine, ANN) != customer_of(engine, BOB)

    assert allow_link(settings, BOB, ANN, actor="test", reason="one person after all").changed
    assert not allow_link(settings, BOB, ANN, actor="test").changed, "removing it twice changes nothing"
    assert rules_in_force(settings) == []
    link = event(
        9, Channel.WEB, EventType.IDENTIFY, {IdentifierType.EMAIL: "ann@example.org"} | {IdentifierType.CRM_ID: "crm-7"}
    )
    both = event(
        10,
        Channel.STORE,
        EventType.PURCHASE,
        {IdentifierType.CRM_ID: "crm-7", IdentifierType.EMAIL: "bob@example.org"},
        amount=5,
        currency="GBP",
    )
    assert feed(processor, records([link, both], ends)) == 0
    assert customer_of(engine, ANN) == customer_of(engine, BOB), "without the rule a later event links them"
    assert audit(engine) == [
        ("never_link", "test", "two people"),
        ("never_link_removed", "test", "one person after all"),
    ]
    with engine.connect() as conn:
        detail = conn.execute(select(t.audit_log.c.detail, t.audit_log.c.subject)).all()
    assert all("example.org" not in str(row) for row in detail), "audit rows name no identifier"


def test_the_command_adds_lists_and_removes_a_rule_and_refuses_what_is_no_identifier(sqlite_url: str) -> None:
    _, engine, _ = worker(sqlite_url)
    env = {"CXSTREAM_DATABASE_URL": sqlite_url}

    def cli(*args: str) -> Result:
        return CliRunner().invoke(main, ["never-link", *args], env=env, catch_exceptions=False)

    added = cli("ann@example.org", "email:BOB@example.org", "--reason", "TICKET-9", "--json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["keys"] == [ANN, BOB] and json.loads(added.output)["changed"]
    assert "already there" in cli(BOB, ANN).output
    listed = cli("--list", "--json")
    assert [rule["keys"] for rule in json.loads(listed.output)] == [[ANN, BOB]]
    bad = cli(ANN, "nobody")
    assert bad.exit_code == 1 and "Error: 'nobody' is not an identifier" in bad.output
    assert cli(ANN).exit_code == 2, "one identifier is a usage error"
    assert "removed rule" in cli(ANN, BOB, "--remove").output
    assert "no such rule" in cli(ANN, BOB, "--remove").output
    assert [action for action, _, _ in audit(engine)] == ["never_link", "never_link_removed"]


def test_a_worker_records_the_identity_rule_settings_it_starts_with_once_per_change(database_url: str) -> None:
    settings, engine, _ = worker(database_url)
    secret = "email:someone.real@example.org"
    with_block = load_settings(database_url=database_url, blocked_identifiers=[secret])
    # Two workers starting together with the same settings add one row between them.
    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(lambda s: record_rules_at_start(s, engine), [settings, settings]))
    assert sorted(started) == [False, True]
    assert not record_rules_at_start(settings, engine), "the same settings again: no row"
    assert record_rules_at_start(with_block, engine)
    assert record_rules_at_start(settings, engine), "back to the first settings is a change too"
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.audit_log.c.action, t.audit_log.c.reason, t.audit_log.c.detail).order_by(t.audit_log.c.id)
        ).all()
    assert [(action, reason) for action, reason, _ in rows] == [
        ("identity_rules", "first start"),
        ("identity_rules", "the identity rule settings a worker started with changed"),
        ("identity_rules", "the identity rule settings a worker started with changed"),
    ]
    assert rows[0].detail["limits"] == {"crm_id": 1, "web_anonymous_id": 50, "web_user_id": 1}
    assert rows[1].detail["blocked_identifiers"]["count"] == 1
    assert "someone.real" not in str(rows), "blocked values are recorded as a count and a digest"


def test_rules_move_to_a_rebuilt_database_as_stored_hashed_values_included(tmp_path: Path) -> None:
    hashed = {"CXSTREAM_HASH_IDENTIFIERS": "1", "CXSTREAM_IDENTIFIER_SALT": "pepper"}
    old, new = (f"sqlite:///{tmp_path / name}.db" for name in ("old", "new"))
    for url in (old, new):
        worker(url)

    def cli(url: str, *args: str, stdin: bytes | None = None) -> Result:
        env = {**hashed, "CXSTREAM_DATABASE_URL": url}
        return CliRunner().invoke(main, ["never-link", *args], env=env, input=stdin, catch_exceptions=False)

    assert cli(old, "ann@example.org", "bob@example.org").exit_code == 0
    exported = cli(old, "--list", "--json").output
    ((key_a, key_b),) = [rule["keys"] for rule in json.loads(exported)]
    assert "example.org" not in exported and key_a.startswith("email:"), "keys as stored: hashed"
    imported = cli(new, "--import", "-", "--json", stdin=exported.encode())
    assert json.loads(imported.output) == {"added": 1, "already_there": 0, "erased": 0}
    assert json.loads(cli(new, "--import", "-", "--json", stdin=exported.encode()).output)["already_there"] == 1
    assert [rule["keys"] for rule in json.loads(cli(new, "--list", "--json").output)] == [[key_a, key_b]]
    bad = cli(new, "--import", "-", stdin=b'[{"keys": ["email:x"]}]')
    assert bad.exit_code == 1 and "entry 0: expected" in bad.output and "nothing was imported" in bad.output


def test_the_command_refuses_an_unknown_type_and_a_value_no_key_can_hold(database_url: str) -> None:
    settings, engine, _ = worker(database_url)
    with pytest.raises(BadIdentifier, match="not a built-in identifier type"):
        keep_apart(settings, ANN, "membr_no:M-1", actor="test")
    declared = load_settings(database_url=database_url, custom_identifier_types=["member_no"])
    with pytest.raises(BadIdentifier, match="is not an identifier"):
        keep_apart(declared, ANN, "member_no:" + "9" * 400, actor="test")
    assert keep_apart(declared, ANN, "member_no:M-1", actor="test").changed
    assert audit(engine) == [("never_link", "test", "")]


def test_an_import_leaves_out_the_rules_naming_an_erased_persons_identifier(sqlite_url: str) -> None:
    settings, engine, processor = worker(sqlite_url)
    feed(processor, records(household()))
    # Ann and Bob share the tablet: one customer, erased whole.
    exported = json.dumps(
        [{"keys": [ANN, "email:carl@example.org"]}, {"keys": ["email:carl@example.org", "email:dee@example.org"]}]
    ).encode()
    salt = suppression_salt(settings)
    erase_customer(
        engine, customer_of(engine, ANN), suppress=lambda keys: [suppression_hash(salt, k) for k in keys],
        erasure_id="e-1", at=datetime.now(UTC), actor="test", reason="", options={},
    )  # fmt: skip
    assert import_rules(settings, exported, actor="test") == (1, 0, 1)
    assert [(r.key_a, r.key_b) for r in rules_in_force(settings)] == [
        ("email:carl@example.org", "email:dee@example.org")
    ]
