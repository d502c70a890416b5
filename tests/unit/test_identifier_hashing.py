"""With hashing on, no raw e-mail or phone number leaves an adapter, and the worker stitches hashed and raw
events of one person under the same stored keys."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from config.settings import Settings
from schemas.touchpoint import Channel, IdentifierType, TouchpointEvent
from streams.adapters import partition_key
from streams.adapters.reader import Accepted, convert_one, read_records
from streams.domain.identifiers import IdentifierHashing, hash_identifier, normalise_phone, salt_fingerprint
from streams.domain.identity import IdentityRules
from streams.domain.oracle import replay
from streams.policies import Policies
from tests.support.samples import SAMPLE_FILES, SAMPLES

RECEIVED = datetime(2024, 6, 1, tzinfo=UTC)
SALT = "pepper-for-tests"
HASHING = IdentifierHashing(SALT)
SETTINGS = Settings(hash_identifiers=True, identifier_salt=SALT)
POLICIES = Policies.from_settings(SETTINGS)
EMAIL, PHONE = IdentifierType.EMAIL, IdentifierType.PHONE


def events_of(hashing: IdentifierHashing | None) -> list[TouchpointEvent]:
    """Every sample file's events, converted with ``hashing``."""
    events = []
    for name, channel, fmt in SAMPLE_FILES:
        data = (SAMPLES / name).read_bytes()
        for result in read_records(channel, data, source_file=name, fmt=fmt, received_at=RECEIVED, hashing=hashing):
            assert isinstance(result, Accepted), result
            events.append(result.event)
    return events


def spellings(events: list[TouchpointEvent]) -> set[str]:
    """Every way the raw e-mails and phone numbers of ``events`` could be written: as stored, and phone digits."""
    found = set()
    for event in events:
        for kind in (EMAIL, PHONE):
            value = event.identifiers.get(kind)
            if value is not None:
                found.add(value)
                if kind is PHONE:
                    found |= {value.lstrip("+"), "0" + value[3:]}  # 447700900123 and the national 07700900123
    return found


def test_with_hashing_the_sample_files_publish_no_raw_email_or_phone() -> None:
    raw = spellings(events_of(None))
    assert len(raw) > 10, "the samples carry e-mails and phones"
    for event in events_of(HASHING):
        published = event.model_dump_json() + partition_key(event).decode()
        digits = re.sub(r"\D", "", published)
        leaked = [value for value in raw if value in published or (value.isdigit() and value in digits)]
        assert not leaked, (event.source, leaked)
        assert not re.search(r"[\w.+-]+@[\w-]+\.\w+", published), published
        assert event.hashed_with == salt_fingerprint(SALT)


def test_hashed_and_raw_events_stitch_by_the_same_stored_keys() -> None:
    raw, hashed = events_of(None), events_of(HASHING)
    rules = IdentityRules(POLICIES.identity)
    assert [rules.keys_of(e) for e in hashed] == [rules.keys_of(e) for e in raw]
    # Hashed once, never twice: the stored key is the hash of the raw value.
    (event,) = [e for e in raw if e.identifiers.get(EMAIL) == "alice.smith@example.org"][:1]
    expected = "email:" + hash_identifier(EMAIL, "alice.smith@example.org", SALT)
    assert expected in rules.keys_of(event).keys
    assert expected in rules.keys_of(hashed[raw.index(event)]).keys

    # Raw events already on the topics and hashed ones of the same people, in any mix: the same customers.
    everyone_raw = replay(raw, POLICIES)
    mixed = replay([h if n % 2 else r for n, (r, h) in enumerate(zip(raw, hashed, strict=True))], POLICIES)
    assert mixed.identities == everyone_raw.identities
    assert {k: v.customer_id for k, v in mixed.entries.items()} == {
        k: v.customer_id for k, v in everyone_raw.entries.items()
    }


def test_placeholder_emails_hashed_by_the_adapter_are_still_blocked() -> None:
    record = {"visit_id": "V-1", "store_id": "S", "occurred_at": "2024-05-01T09:00:00Z", "kind": "visit"}
    event = convert_one(Channel.STORE, record | {"email": "Test@Example.com"}, received_at=RECEIVED, hashing=HASHING)
    assert isinstance(event, Accepted)
    assert IdentityRules(POLICIES.identity).keys_of(event.event).blocked == 1


@pytest.mark.parametrize(
    "worker", [Settings(hash_identifiers=True, identifier_salt="another salt"), Settings(hash_identifiers=False)]
)
def test_pii_hashed_with_a_salt_the_worker_does_not_hold_is_dropped_and_counted(worker: Settings) -> None:
    # Stored, such a key could never meet another event of the same person: the e-mail is left out, and counted.
    record = {"receipt_id": "R-1", "store_id": "S", "occurred_at": "2024-05-01T09:00:00Z", "kind": "sale",
              "total": "1", "currency": "GBP", "loyalty_id": "L-1", "email": "ann@example.org"}  # fmt: skip
    result = convert_one(Channel.STORE, record, received_at=RECEIVED, hashing=HASHING)
    assert isinstance(result, Accepted)
    keys = IdentityRules(Policies.from_settings(worker).identity).keys_of(result.event)
    assert keys.keys == ("loyalty_id:L-1",) and keys.blocked == 1


def test_a_hashed_marker_on_raw_values_is_refused() -> None:
    result = convert_one(Channel.PHONE, CALL, received_at=RECEIVED)
    assert isinstance(result, Accepted)
    with pytest.raises(ValidationError, match=r"identifiers\.phone: not a salted hash"):
        TouchpointEvent.model_validate(result.event.model_dump() | {"hashed_with": salt_fingerprint(SALT)})


def test_partition_keys_are_salted_with_hashing_and_unchanged_without() -> None:
    raw = convert_one(Channel.PHONE, CALL, received_at=RECEIVED)
    hashed = convert_one(Channel.PHONE, CALL, received_at=RECEIVED, hashing=HASHING)
    other = convert_one(Channel.PHONE, CALL, received_at=RECEIVED, hashing=IdentifierHashing("other"))
    assert isinstance(raw, Accepted) and isinstance(hashed, Accepted) and isinstance(other, Accepted)
    e164 = "+442079460321"
    # Without hashing, the key of before: an unsalted digest (kept so that partitions do not move).
    assert partition_key(raw.event) == f"phone:{hashlib.sha256(e164.encode()).hexdigest()[:32]}".encode()
    # With it, the stored key: the salted hash, which a list of phone numbers cannot reverse without the salt.
    assert partition_key(hashed.event) == f"phone:{hash_identifier(PHONE, e164, SALT)}".encode()
    assert partition_key(other.event) != partition_key(hashed.event)


CALL = {"call_id": "C-1", "occurred_at": "2024-05-01T08:59:10+01:00", "phone": "+44 20 7946 0321",
        "direction": "inbound", "duration_seconds": 412, "reason": "billing_query"}  # fmt: skip


def _hashed(channel: Channel, record: dict[str, Any]) -> TouchpointEvent:
    result = convert_one(channel, record, received_at=RECEIVED, hashing=HASHING)
    assert isinstance(result, Accepted), result
    return result.event


def key(kind: IdentifierType, value: str) -> str:
    return f"{kind}:{hash_identifier(kind, value, SALT)}"


def test_free_text_the_adapters_copy_is_hashed_and_ids_are_left_alone() -> None:
    web = _hashed(
        Channel.WEB,
        {"type": "track", "messageId": "m-1", "userId": "u-1", "timestamp": "2024-05-01T08:00:00Z",
         "event": "Contact Form Submitted", "traits": {"email": "Ann@Example.org"},
         "context": {"traits": {"email": "ann@example.org", "phone": "07700 900123"}},
         "properties": {"email": "Ann@Example.org", "message": "ring me on +44 20 7946 0321 after 6",
                        "contact": {"tel": "07700 900456"}, "order_id": "11-09876-54321", "ticket_id": "T-07700900123",
                        "reason": "call back 07700 900456", "placed": "2024-05-01T08:00:00Z", "total": "12.50"}},
    )  # fmt: skip
    props = web.attributes["properties"]
    assert props["email"] == key(EMAIL, "ann@example.org")
    assert props["message"] == f"ring me on {key(PHONE, '+442079460321')} after 6"
    assert props["contact"] == {"tel": key(PHONE, normalise_phone("07700 900456"))}
    assert web.reason == props["reason"] == f"call back {key(PHONE, '+447700900456')}"
    # Ids, dates and amounts are not phone numbers; an issue id is stored as sent (it is the touchpoint's issue_id).
    assert (props["order_id"], props["placed"], props["total"]) == ("11-09876-54321", "2024-05-01T08:00:00Z", "12.50")
    assert web.issue_id == props["ticket_id"] == "T-07700900123"
    # context and traits are read for the e-mail identifier, never copied.
    assert "context" not in json.dumps(web.attributes) and "traits" not in web.attributes

    order = _hashed(
        Channel.ECOMMERCE,
        {"marketplace": "ebay", "order_id": "O-1", "buyer_id": "B-1", "buyer_email": "Bob@Example.org",
         "occurred_at": "2024-05-01T12:00:00Z", "status": "reviewed", "total": "1", "currency": "GBP",
         "review": {"rating": 2, "text": "Late. Write to bob@example.org"}},
    )  # fmt: skip
    assert order.attributes["review"] == {"rating": 2, "text": f"Late. Write to {key(EMAIL, 'bob@example.org')}"}
    assert "bob" not in order.model_dump_json().lower().replace("b-1", "")  # buyer_email is no attribute

    call = _hashed(Channel.PHONE, CALL | {"reason": "wrong number, caller gave 020 7946 0999"})
    assert call.reason == f"wrong number, caller gave {key(PHONE, '+442079460999')}"


PATTERNS = {"email": "^(test|qa)[0-9]*@", "loyalty_id": "^L-TEST-"}


@pytest.mark.parametrize("hashed", [False, True])
def test_values_matching_a_blocked_pattern_are_not_stitched_whether_the_adapter_hashed_them_or_not(
    hashed: bool,
) -> None:
    settings = Settings(hash_identifiers=True, identifier_salt=SALT, blocked_identifier_patterns=PATTERNS)
    policies = Policies.from_settings(settings)
    adapter = IdentifierHashing(SALT, blocked=policies.identity.blocked_patterns)
    record = {"receipt_id": "R-1", "store_id": "S", "occurred_at": "2024-05-01T09:00:00Z", "kind": "sale",
              "total": "1", "currency": "GBP", "loyalty_id": "L-TEST-9"}  # fmt: skip
    rules = IdentityRules(policies.identity)
    for email, kept in (("QA7@shop.example", False), ("ann@example.org", True)):
        result = convert_one(
            Channel.STORE, record | {"email": email}, received_at=RECEIVED, hashing=adapter if hashed else None
        )
        assert isinstance(result, Accepted)
        keys = rules.keys_of(result.event)
        # The loyalty id (never hashed) is blocked by the worker either way; a blocked e-mail by the adapter that
        # hashes (it is not on the event at all) or by the worker (raw).
        assert not any(key.startswith("loyalty_id:") for key in keys.keys)
        assert any(key.startswith("email:") for key in keys.keys) is kept
        if hashed and not kept:
            assert EMAIL not in result.event.identifiers, "the adapter left the blocked e-mail out"


def test_a_blocked_pattern_that_is_no_regular_expression_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import SettingsError, load_settings

    monkeypatch.setenv("CXSTREAM_BLOCKED_IDENTIFIER_PATTERNS", '{"email": "^(test@"}')
    with pytest.raises(SettingsError, match=r"CXSTREAM_BLOCKED_IDENTIFIER_PATTERNS.*email: not a regular expression"):
        load_settings()
    monkeypatch.setenv("CXSTREAM_BLOCKED_IDENTIFIER_PATTERNS", '{"shoe_size": "^4"}')
    with pytest.raises(SettingsError, match="CXSTREAM_BLOCKED_IDENTIFIER_PATTERNS"):
        load_settings()


def test_an_identifier_priority_naming_a_type_twice_or_an_unknown_one_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from config.settings import SettingsError, load_settings

    monkeypatch.setenv("CXSTREAM_IDENTIFIER_PRIORITY", "email,phone,email")
    with pytest.raises(SettingsError, match=r"CXSTREAM_IDENTIFIER_PRIORITY.*\['email'\] more than once"):
        load_settings()
    monkeypatch.setenv("CXSTREAM_IDENTIFIER_PRIORITY", "email,shoe_size")
    with pytest.raises(SettingsError, match="CXSTREAM_IDENTIFIER_PRIORITY"):
        load_settings()
    monkeypatch.setenv("CXSTREAM_IDENTIFIER_PRIORITY", "phone")
    assert load_settings().identifier_priority[:2] == [PHONE, IdentifierType.CRM_ID]
