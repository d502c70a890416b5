"""`cxstream metrics` and `cxstream timeline` over a real results database.

The database is filled by the batch processor from a simulated population, as a worker fills it (merges, alerts,
repeat contacts, survey answers); the commands run in this process through click's runner. The contact numbers
the timeline shows are checked against the oracle's, and both commands print the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from config.settings import load_settings
from schemas.touchpoint import IdentifierType
from sinks import tables as t
from sinks.database import make_engine
from streams.cli import main
from streams.domain.oracle import replay
from streams.policies import Policies
from tests.support.population import SALT, fill, raw_events
from tests.support.processes import free_port


def run(database_url: str, *args: str) -> Result:
    """Run a cxstream command in this process with CXSTREAM_DATABASE_URL as its only setting."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CXSTREAM_")}
    env["CXSTREAM_DATABASE_URL"] = database_url
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite results database holding the population, shared by the module (the commands only read it)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('filled') / 'cxstream.db'}"
    fill(url, hashing=False)
    return url


def story_customer(database_url: str) -> str:
    """The customer with the most alerts, merges and repeat contacts: the richest timeline."""
    a, m, tp, c = t.alerts.c, t.identity_merges.c, t.touchpoints.c, t.customers.c
    alerts = select(func.count()).where(a.customer_id == c.customer_id).scalar_subquery()
    merges = select(func.count()).where(m.survivor_id == c.customer_id).scalar_subquery()
    repeats = select(func.count()).where(tp.customer_id == c.customer_id, tp.repeat_contact).scalar_subquery()
    query = select(c.customer_id).where(alerts > 0, merges > 0, repeats > 0).order_by(c.customer_id)
    with make_engine(database_url).connect() as conn:
        found = conn.scalar(query)
    assert found, "the population has a customer with alerts, merges and a repeat contact"
    return str(found)


def test_metrics_prints_the_view_s_figures_filtered_and_limited(filled: str) -> None:
    m = t.metrics.c
    with make_engine(filled).connect() as conn:
        stored = (
            conn.execute(
                select(t.metrics)
                .where(m.scope == "channel", m.metric == "nps", m["window"] == "1d")
                .order_by(m.window_start, m.key)
            )
            .mappings()
            .all()
        )
    assert len(stored) >= 3
    args = ("metrics", "--scope", "channel", "--metric", "nps", "--window", "1d")
    figures = orjson.loads(run(filled, *args, "--json", "--limit", "1000").stdout)
    assert [
        (f["key"], datetime.fromisoformat(f["window_start"]), f["numerator"], f["denominator"], f["value"])
        for f in figures
    ] == [(r["key"], utc(r["window_start"]), r["numerator"], r["denominator"], r["value"]) for r in stored]
    assert [(f["status"], f["revision"]) for f in figures] == [(r["status"], r["revision"]) for r in stored]

    text = run(filled, *args, "--limit", "1000").stdout.splitlines()
    assert text[0].split() == [
        "scope",
        "key",
        "metric",
        "window",
        "window_start",
        "value",
        "basis",
        "status",
        "revision",
    ]
    assert len(text) == 2 + len(stored)
    for line, row in zip(text[2:], stored, strict=True):
        scope, key, metric, window, day, time, value, basis, status, revision = line.split()
        assert (scope, key, metric, window, status, int(revision)) == (
            "channel",
            row["key"],
            "nps",
            "1d",
            row["status"],
            row["revision"],
        )
        assert f"{day} {time}" == utc(row["window_start"]).strftime("%Y-%m-%d %H:%M:%SZ")
        numerator, denominator = basis.split("/")
        assert (float(numerator), float(denominator)) == (row["numerator"], row["denominator"])
        assert value == "-" if row["value"] is None else float(value) == pytest.approx(row["value"], abs=1e-4)

    # Window starts in [--from, --to): a bare date is midnight UTC.
    day = utc(stored[1]["window_start"])
    between = orjson.loads(
        run(
            filled,
            "metrics",
            "--from",
            day.date().isoformat(),
            "--to",
            "2099-01-01T00:00:00Z",
            "--json",
            "--limit",
            "100000",
        ).stdout
    )
    with make_engine(filled).connect() as conn:
        assert len(between) == conn.scalar(select(func.count()).select_from(t.metrics).where(m.window_start >= day))
    assert between and min(datetime.fromisoformat(f["window_start"]) for f in between) == day
    # The same instant in another zone: compared in UTC (SQLite stores the UTC wall clock and drops offsets).
    plus_two = day.astimezone(timezone(timedelta(hours=2))).isoformat()
    elsewhere = run(
        filled, "metrics", "--from", plus_two, "--to", "2099-01-01T02:00:00+02:00", "--json", "--limit", "100000"
    )
    assert orjson.loads(elsewhere.stdout) == between

    limited = run(filled, "metrics", "--limit", "2")
    assert len(limited.stdout.splitlines()) == 4 and "more figures match than --limit 2" in limited.stderr
    assert run(filled, "metrics", "--key", "nobody").stdout == "no figures match\n"
    unknown = run(filled, "metrics", "--metric", "happiness")
    assert unknown.exit_code == 2 and "unknown metric 'happiness'; one of" in unknown.stderr
    zoneless = run(filled, "metrics", "--from", "2024-03-05T10:00")
    assert zoneless.exit_code == 2 and "needs a time zone (Z or +hh:mm)" in zoneless.stderr


def test_timeline_shows_scores_issues_alerts_and_merges(filled: str) -> None:
    customer = story_customer(filled)
    data = orjson.loads(run(filled, "timeline", customer, "--json").stdout)
    engine = make_engine(filled)
    with engine.connect() as conn:
        alerts = conn.execute(select(t.alerts).where(t.alerts.c.customer_id == customer)).mappings().all()
        merges = (
            conn.execute(select(t.identity_merges).where(t.identity_merges.c.survivor_id == customer)).mappings().all()
        )
    assert sorted(a["alert_id"] for a in data["alerts"]) == sorted(a["alert_id"] for a in alerts)
    assert sorted(m["merged_id"] for m in data["merges"]) == sorted(m["merged_id"] for m in merges)

    text = run(filled, "timeline", customer).stdout
    lines = text.splitlines()
    assert lines[0].startswith(f"customer {customer}  stage=")
    story = lines[2 : lines.index(next(line for line in lines if line.startswith("── alerts")))]
    entries = [line for line in story if not line.startswith("──")]
    assert len(entries) == len(data["touchpoints"])
    for line, touchpoint in zip(entries, data["touchpoints"], strict=True):
        when = datetime.fromisoformat(touchpoint["occurred_at"]).strftime("%Y-%m-%d %H:%M")
        assert line.startswith(f"  {when}  {touchpoint['channel']:<9} {touchpoint['type']}")
        for name in ("nps", "csat", "ces"):
            if touchpoint[name] is not None:
                assert f"{name.upper()} {touchpoint[name]}" in line
        if touchpoint["issue_key"] and touchpoint["contact_number"]:
            issue = f"issue {touchpoint['issue_key']}, contact {touchpoint['contact_number']}"
            assert issue + (", repeat" if touchpoint["repeat_contact"] else "") in line
    assert any(", repeat" in line for line in lines)
    assert f"── alerts ({len(alerts)}) " in text and f"── merged in ({len(merges)}) " in text
    for alert in alerts:
        assert f"{alert['rule']}  {alert['message']}" in text
    for merge in merges:
        assert f"  {merge['merged_id']}  by event {merge['event_id']}: " in text


def test_contact_numbers_are_the_ones_the_worker_derived(filled: str) -> None:
    oracle = replay(raw_events(), Policies.from_settings(load_settings()))
    tp = t.touchpoints.c
    with make_engine(filled).connect() as conn:
        customers = conn.execute(select(tp.customer_id).where(tp.type == "support_contact").distinct()).scalars().all()
    assert len(customers) >= 10, "the population has customers who contacted support"
    seen = 0
    for customer in sorted(customers):
        for touchpoint in orjson.loads(run(filled, "timeline", customer, "--json").stdout)["touchpoints"]:
            expected = oracle.entries[touchpoint["event_id"]].contact_number
            assert touchpoint["contact_number"] == (expected or None), touchpoint["event_id"]
            seen += expected > 1
    assert seen >= 2, "second contacts about an issue were compared too"


def test_postgresql_prints_what_sqlite_prints(filled: str, postgres_url: str) -> None:
    fill(postgres_url, hashing=False)
    customer = story_customer(filled)
    for args in (("metrics", "--scope", "overall", "--window", "1d", "--limit", "40"), ("timeline", customer)):
        on_sqlite, on_postgres = run(filled, *args), run(postgres_url, *args)
        assert on_postgres.exit_code == 0, on_postgres.output
        assert on_postgres.stdout == on_sqlite.stdout, args


def test_no_database_or_an_unreachable_one_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    for args in (("metrics",), ("timeline", "ann@example.org")):
        result = run(f"sqlite:///{missing}", *args)
        assert result.exit_code == 1 and result.stderr.startswith(f"Error: no results database at {missing}")
        assert result.stderr.count("\n") == 1
        unreachable = f"postgresql+psycopg://cx@127.0.0.1:{free_port()}/cx"
        result = run(unreachable, *args)
        assert result.exit_code == 1 and result.stderr.startswith(
            f"Error: cannot read the results database {unreachable}: "
        )
        assert result.stderr.count("\n") == 1
    assert not missing.exists()


def test_the_timeline_finds_a_customer_by_e_mail_with_hashing_on(tmp_path: Path) -> None:
    """Identifiers are stored hashed: the command hashes what is typed (bare or as type:value) as the adapters do."""
    url = f"sqlite:///{tmp_path / 'hashed.db'}"
    fill(url, hashing=True)
    email = next(
        str(e.identifiers[IdentifierType.EMAIL]) for e in raw_events() if IdentifierType.EMAIL in e.identifiers
    )
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CXSTREAM_")}
    env.update(CXSTREAM_DATABASE_URL=url, CXSTREAM_HASH_IDENTIFIERS="true", CXSTREAM_IDENTIFIER_SALT=SALT)
    found = set()
    for typed in (email.upper(), f"email:{email}"):
        result = CliRunner().invoke(main, ["timeline", typed, "--json"], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        found.add(orjson.loads(result.output)["customer_id"])
    assert len(found) == 1
    unhashed = {k: v for k, v in env.items() if k != "CXSTREAM_HASH_IDENTIFIERS"}
    refused = CliRunner().invoke(main, ["timeline", email], env=unhashed, catch_exceptions=False)
    assert refused.exit_code == 1 and "no customer" in refused.output, "without the hashing the e-mail is not stored"
