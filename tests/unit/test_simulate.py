"""The journey simulator: deterministic, realistic, well-formed, and its ground truth agrees with its records."""

from __future__ import annotations

import collections
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.settings import load_settings
from schemas.touchpoint import IdentifierType
from streams.domain.identifiers import identifier_key, normalise_identifier
from streams.sandbox.journeys import CHANNELS, PLACEHOLDER_EMAILS, SimRecord, ground_truth, simulate, write_files

START = datetime(2024, 3, 4, tzinfo=UTC)
WEB_EVENTS = {
    "Product Viewed",
    "Products Searched",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Order Refunded",
    "Survey Answered",
    "Support Ticket Created",
}
STATUSES = {"placed", "shipped", "delivered", "delivered_late", "returned", "cancelled"}


def _aware(value: Any) -> datetime:
    """Parse an ISO 8601 timestamp that must carry a UTC offset."""
    assert isinstance(value, str)
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def _decimal(value: Any) -> Decimal:
    assert isinstance(value, str)
    return Decimal(value)


def _items(items: Any) -> None:
    assert isinstance(items, list) and items
    for item in items:
        assert isinstance(item["sku"], str) and isinstance(item["qty"], int) and item["qty"] > 0
        _decimal(item["unit_price"])


def _check(channel: str, obj: dict[str, Any]) -> datetime:
    """Assert that obj has the required fields of its source format with the right types; return its time."""
    if channel == "store":
        assert isinstance(obj.get("receipt_id") or obj.get("visit_id"), str)
        assert isinstance(obj["store_id"], str)
        assert obj["kind"] in ("visit", "sale", "return")
        assert ("visit_id" in obj) == (obj["kind"] == "visit")
        if "total" in obj:
            _decimal(obj["total"])
            assert isinstance(obj["currency"], str) and len(obj["currency"]) == 3
            _items(obj["items"])
        if "feedback" in obj:
            assert 1 <= obj["feedback"]["csat"] <= 5
        assert any(k in obj for k in ("loyalty_id", "email", "phone"))
        return _aware(obj["occurred_at"])
    if channel == "phone":
        assert isinstance(obj["call_id"], str) and isinstance(obj["phone"], str)
        assert obj["direction"] in ("inbound", "outbound")
        assert isinstance(obj["queue"], str) and isinstance(obj["reason"], str)
        for field in ("wait_seconds", "duration_seconds", "transfers"):
            assert isinstance(obj[field], int) and obj[field] >= 0
        assert isinstance(obj["resolved"], bool)
        survey = obj.get("survey", {})
        assert 1 <= survey.get("csat", 1) <= 5 and 1 <= survey.get("ces", 1) <= 7 and 0 <= survey.get("nps", 0) <= 10
        return _aware(obj["occurred_at"])
    if channel == "web":
        assert obj["type"] in ("page", "track", "identify")
        assert isinstance(obj["messageId"], str) and isinstance(obj["anonymousId"], str)
        if obj["type"] == "identify":
            assert isinstance(obj["userId"], str) and "@" in obj["traits"]["email"]
        else:
            assert isinstance(obj["properties"], dict)
        if obj["type"] == "track":
            assert obj["event"] in WEB_EVENTS
            props = obj["properties"]
            if obj["event"] == "Order Completed":
                assert isinstance(props["order_id"], str) and props["revenue"] > 0 and props["products"]
            if obj["event"] == "Support Ticket Created":
                assert isinstance(props["issue_id"], str) and isinstance(props["reason"], str)
            if obj["event"] == "Survey Answered":
                assert any(k in props for k in ("nps", "csat", "ces"))
        return _aware(obj["timestamp"])
    assert channel == "ecommerce"
    for field in ("marketplace", "order_id", "buyer_id", "currency"):
        assert isinstance(obj[field], str)
    assert obj["status"] in STATUSES
    _decimal(obj["total"])
    _items(obj["items"])
    if "review" in obj:
        assert 1 <= obj["review"]["rating"] <= 5 and isinstance(obj["review"]["text"], str)
    return _aware(obj["occurred_at"])


def _is_valid(record: SimRecord) -> bool:
    try:
        obj = orjson.loads(record.raw)
        _check(record.channel, obj)
    except (orjson.JSONDecodeError, KeyError, TypeError, AssertionError, ValueError, InvalidOperation):
        return False
    return True


def _identifiers(channel: str, obj: dict[str, Any]) -> set[str]:
    """The normalised identifier keys a record carries, read the way an adapter would."""
    found: list[tuple[IdentifierType, str]] = []
    if channel == "store":
        for field, kind in (("loyalty_id", IdentifierType.LOYALTY_ID), ("email", IdentifierType.EMAIL)):
            if field in obj:
                found.append((kind, obj[field]))
        if "phone" in obj:
            found.append((IdentifierType.PHONE, obj["phone"]))
    elif channel == "phone":
        found.append((IdentifierType.PHONE, obj["phone"]))
        if "crm_id" in obj:
            found.append((IdentifierType.CRM_ID, obj["crm_id"]))
    elif channel == "web":
        found.append((IdentifierType.WEB_ANONYMOUS_ID, obj["anonymousId"]))
        if "userId" in obj:
            found.append((IdentifierType.WEB_USER_ID, obj["userId"]))
        if "traits" in obj:
            found.append((IdentifierType.EMAIL, obj["traits"]["email"]))
    else:
        found.append((IdentifierType.MARKETPLACE_BUYER_ID, f"{obj['marketplace']}:{obj['buyer_id']}"))
        if "buyer_email" in obj:
            found.append((IdentifierType.EMAIL, obj["buyer_email"]))
    return {identifier_key(kind, normalise_identifier(kind, value)) for kind, value in found}


@pytest.fixture(scope="module")
def records() -> list[SimRecord]:
    return list(
        simulate(customers=1500, days=20, seed=3, start=START, duplicate_rate=0.05, late_rate=0.05, malformed_rate=0.03)
    )


def test_same_seed_gives_the_same_bytes() -> None:
    first = list(simulate(customers=200, days=10, seed=7, malformed_rate=0.02))
    again = list(simulate(customers=200, days=10, seed=7, malformed_rate=0.02))
    other = list(simulate(customers=200, days=10, seed=8, malformed_rate=0.02))
    assert first == again
    assert [r.raw for r in first] != [r.raw for r in other]


def test_rates_add_lines_but_never_change_the_journeys() -> None:
    plain = list(simulate(customers=200, days=10, seed=5))
    garbled = list(simulate(customers=200, days=10, seed=5, malformed_rate=0.05))
    assert [r for r in garbled if r.kind != "malformed"] == plain
    noisy = simulate(customers=200, days=10, seed=5, duplicate_rate=0.2, late_rate=0.2)
    assert sorted(r.raw for r in noisy if r.kind != "duplicate") == sorted(
        r.raw for r in plain if r.kind != "duplicate"
    )


def test_records_come_in_arrival_order_from_every_channel(records: list[SimRecord]) -> None:
    arrivals = [r.arrival_ts for r in records]
    assert arrivals == sorted(arrivals)
    assert all(ts.tzinfo is not None for ts in arrivals)
    assert {r.channel for r in records} == set(CHANNELS)
    assert all(b"\n" not in r.raw for r in records)


def test_rates_of_duplicates_late_and_malformed_are_as_configured(records: list[SimRecord]) -> None:
    kinds = collections.Counter(r.kind for r in records)
    good = kinds["ok"] + kinds["late"]
    assert good > 10_000
    assert kinds["late"] / good == pytest.approx(0.05, abs=0.01)
    assert kinds["duplicate"] / good == pytest.approx(0.05, abs=0.01)
    assert kinds["malformed"] / good == pytest.approx(0.03, abs=0.01)
    default = collections.Counter(r.kind for r in simulate(customers=300, days=10, seed=3))
    assert default["malformed"] == 0 and default["duplicate"] > 0 and default["late"] > 0


def test_good_records_are_well_formed_with_offsets(records: list[SimRecord]) -> None:
    for record in records:
        if record.kind == "malformed":
            continue
        assert record.person_id is not None
        occurred = _check(record.channel, orjson.loads(record.raw))
        lag = record.arrival_ts - occurred
        assert lag > timedelta(0)
        if record.kind == "late":
            assert timedelta(hours=1) <= lag <= timedelta(hours=6)
        elif record.kind == "ok":
            assert lag < timedelta(hours=2)  # the longest: a call record written when a long call ends


def _source_id(channel: str, obj: dict[str, Any]) -> str:
    """The source's own id of a record, from which adapters derive the event id."""
    if channel == "store":
        return str(obj.get("receipt_id") or obj["visit_id"])
    if channel == "phone":
        return str(obj["call_id"])
    if channel == "web":
        return str(obj["messageId"])
    return f"{obj['marketplace']}:{obj['order_id']}:{obj['status']}"


def test_duplicates_resend_the_same_bytes_later(records: list[SimRecord]) -> None:
    first_seen: dict[bytes, datetime] = {}
    source_ids: set[tuple[str, str]] = set()
    for record in records:
        if record.kind in ("ok", "late"):
            source_id = (record.channel, _source_id(record.channel, orjson.loads(record.raw)))
            assert source_id not in source_ids, "good records have distinct source ids"
            source_ids.add(source_id)
            first_seen[record.raw] = record.arrival_ts
        elif record.kind == "duplicate":
            assert record.raw in first_seen and first_seen[record.raw] <= record.arrival_ts


def test_malformed_records_are_garbage_of_every_kind(records: list[SimRecord]) -> None:
    malformed = [r for r in records if r.kind == "malformed"]
    assert malformed and not any(_is_valid(r) for r in malformed)
    assert all(r.person_id is None for r in malformed)
    not_utf8 = not_json = naive = 0
    for record in malformed:
        try:
            obj = orjson.loads(record.raw)
        except orjson.JSONDecodeError:
            try:
                record.raw.decode()
            except UnicodeDecodeError:
                not_utf8 += 1
            else:
                not_json += 1
            continue
        stamp = obj.get("timestamp" if record.channel == "web" else "occurred_at")
        naive += isinstance(stamp, str) and datetime.fromisoformat(stamp).tzinfo is None
    assert not_utf8 and not_json and naive


def test_ground_truth_is_what_the_records_link(records: list[SimRecord]) -> None:
    """Each person's identifiers form one connected group through records carrying two of them; no sharing."""
    truth = ground_truth(customers=1500, days=20, seed=3, start=START)
    assert len(truth) == 1500 and all(truth.values())
    owner = {key: person for person, keys in truth.items() for key in keys}
    assert len(owner) == sum(len(keys) for keys in truth.values()), "no identifier belongs to two persons"
    blocked = {f"email:{email}" for email in PLACEHOLDER_EMAILS}
    assert blocked <= set(load_settings().blocked_identifiers), "placeholders must be blocked by default"

    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    shown: dict[str, set[str]] = collections.defaultdict(set)
    for record in records:
        if record.kind == "malformed":
            continue
        person = record.person_id
        assert person is not None
        keys = _identifiers(record.channel, orjson.loads(record.raw)) - blocked
        assert keys, "every good record identifies someone"
        assert keys <= truth[person]
        shown[person] |= keys
        first, *rest = sorted(keys)
        for key in rest:
            parent[find(key)] = find(first)
    assert shown == truth
    assert all(len({find(key) for key in group}) == 1 for group in truth.values())
    assert max(len(group) for group in truth.values()) >= 6  # omnichannel persons carry many identifiers


def test_journeys_have_the_moments_that_matter(records: list[SimRecord]) -> None:
    contacts: dict[str, list[str]] = collections.defaultdict(list)
    seen: collections.Counter[str] = collections.Counter()
    for record in records:
        if record.kind not in ("ok", "late"):
            continue
        obj = orjson.loads(record.raw)
        if record.channel == "phone":
            seen[f"call resolved={obj['resolved']}"] += 1
            seen["call survey"] += "survey" in obj
            if "issue_id" in obj:
                contacts[obj["issue_id"]].append("phone")
        elif record.channel == "web":
            seen[obj.get("event", obj["type"])] += 1
            if obj.get("event") == "Support Ticket Created":
                contacts[obj["properties"]["issue_id"]].append("web")
        elif record.channel == "store":
            seen[f"store {obj['kind']}"] += 1
        else:
            seen[obj["status"]] += 1
            seen["review"] += "review" in obj
    expected = {
        "call resolved=True",
        "call resolved=False",
        "call survey",
        "identify",
        "Order Completed",
        "Order Refunded",
        "Survey Answered",
        "Support Ticket Created",
        "store visit",
        "store sale",
        "store return",
        "delivered_late",
        "returned",
        "cancelled",
        "review",
    }
    assert expected <= {name for name, count in seen.items() if count}
    assert any(len(channels) > 1 for channels in contacts.values()), "repeat contacts"
    assert any(len(set(channels)) > 1 for channels in contacts.values()), "channel switches"


def test_write_files_keeps_each_channel_in_arrival_order(tmp_path: Path) -> None:
    recs = list(simulate(customers=100, days=5, seed=2, malformed_rate=0.05))
    paths = write_files(iter(recs), tmp_path / "out")
    assert set(paths) == set(CHANNELS)
    for channel, path in paths.items():
        assert path.name == f"{channel}.jsonl"
        assert path.read_bytes().split(b"\n")[:-1] == [r.raw for r in recs if r.channel == channel]


def test_generates_twenty_thousand_records_quickly() -> None:
    count = 0
    for count, _ in enumerate(simulate(customers=2000, days=30, seed=11), start=1):  # noqa: B007
        pass
    assert count >= 20_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": datetime(2024, 3, 4)},
        {"duplicate_rate": 1.5},
        {"late_rate": -0.1},
        {"customers": 0},
        {"days": 0},
        {"max_late": timedelta(0)},
    ],
)
def test_rejects_bad_arguments_at_once(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        simulate(**kwargs)
