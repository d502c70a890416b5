"""Custom identifier types: declared in settings, carried by source records (an ``identifiers`` object; Segment's
``context.externalIds``), stitched like the built-in types by a worker that declares them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from config.settings import Settings, SettingsError, load_settings
from schemas.touchpoint import Channel, IdentifierType, TouchpointEvent
from streams.adapters import partition_key
from streams.adapters.reader import Accepted, Rejected, convert_one, read_records
from streams.domain.identifiers import BlockedPatterns, IdentifierHashing
from streams.domain.identity import customer_id_for
from streams.domain.oracle import replay
from streams.policies import Policies
from streams.references import stored_key

RECEIVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
SALE = {"receipt_id": "R-1", "store_id": "LON-1", "occurred_at": "2024-05-01T10:00:00Z", "kind": "sale",
        "total": "10", "currency": "GBP", "email": "ann@example.org", "identifiers": {"member_no": " M-1 "}}  # fmt: skip
PAGE = {"type": "page", "messageId": "m-1", "userId": "u-9", "timestamp": "2024-05-02T10:00:00Z",
        "context": {"externalIds": [{"id": "M-1", "type": "member_no", "collection": "users", "encoding": "none"},
                                    {"id": "b-77", "type": "Braze ID", "collection": "users", "encoding": "none"}]}}  # fmt: skip
DECLARED = Settings(custom_identifier_types=["member_no"])


def accept(channel: Channel, record: dict[str, Any]) -> TouchpointEvent:
    result = convert_one(channel, record, received_at=RECEIVED)
    assert isinstance(result, Accepted), result
    return result.event


def test_records_carry_custom_identifiers_and_segment_external_ids() -> None:
    sale = accept(Channel.STORE, SALE)
    assert sale.identifiers == {IdentifierType.EMAIL: "ann@example.org", "member_no": "M-1"}
    page = accept(Channel.WEB, PAGE)
    # An external id whose type cannot name an identifier type (a destination's own spelling) is not one.
    assert page.identifiers == {IdentifierType.WEB_USER_ID: "u-9", "member_no": "M-1"}
    # The event goes through the topic and back as it was.
    assert TouchpointEvent.model_validate_json(sale.model_dump_json()) == sale
    assert partition_key(sale).startswith(b"email:"), "Kafka keys keep the default order: built-in types first"


def test_a_built_in_name_in_identifiers_fills_the_records_empty_field_and_a_bad_name_is_dead_lettered() -> None:
    call = {"call_id": "C-1", "occurred_at": "2024-05-01T10:00:00Z", "phone": "+447700900123",
            "direction": "inbound", "duration_seconds": 30, "identifiers": {"crm_id": "CRM-4"}}  # fmt: skip
    assert accept(Channel.PHONE, call).identifiers[IdentifierType.CRM_ID] == "CRM-4"
    bad = convert_one(Channel.STORE, {**SALE, "identifiers": {"Member No": "M-1"}}, received_at=RECEIVED)
    assert isinstance(bad, Rejected) and "identifiers" in bad.dead_letter.detail
    wrong = convert_one(Channel.STORE, {**SALE, "email": None, "identifiers": {"email": "nope"}}, received_at=RECEIVED)
    assert isinstance(wrong, Rejected) and wrong.dead_letter.detail.startswith("identifiers.email:")


def test_a_declared_custom_type_links_channels_and_an_undeclared_one_is_not_stitched_by() -> None:
    events = [accept(Channel.STORE, SALE), accept(Channel.WEB, PAGE)]
    declared = replay(events, Policies.from_settings(DECLARED))
    assert len(declared.customers) == 1
    assert declared.identities["member_no:M-1"] == customer_id_for("email:ann@example.org")
    undeclared = replay(events, Policies.from_settings(Settings()))
    assert len(undeclared.customers) == 2 and "member_no:M-1" not in undeclared.identities
    assert undeclared.result.blocked == 2, "each event's undeclared identifier is counted"


def test_the_priority_may_put_a_custom_type_first_and_limits_and_blocked_values_may_name_it() -> None:
    settings = Settings(
        custom_identifier_types=["member_no"],
        identifier_priority=["member_no"],
        identifier_limits={"member_no": 1},
        blocked_identifiers=["member_no:M-TEST"],
    )
    oracle = replay([accept(Channel.STORE, SALE)], Policies.from_settings(settings))
    assert list(oracle.customers) == [customer_id_for("member_no:M-1")]
    test_sale = accept(Channel.STORE, {**SALE, "receipt_id": "R-2", "identifiers": {"member_no": "M-TEST"}})
    assert replay([test_sale], Policies.from_settings(settings)).result.blocked == 1
    assert stored_key("member_no:M-1", None, "GB") == "member_no:M-1"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CXSTREAM_CUSTOM_IDENTIFIER_TYPES", "member_no,Bad-Name", "names of lower-case letters"),
        ("CXSTREAM_CUSTOM_IDENTIFIER_TYPES", "email", "built-in type names"),
        ("CXSTREAM_IDENTIFIER_LIMITS", '{"member_no": 1}', "declare your own in CXSTREAM_CUSTOM_IDENTIFIER_TYPES"),
        ("CXSTREAM_IDENTIFIER_PRIORITY", "member_no", "unknown identifier types"),
        ("CXSTREAM_BLOCKED_IDENTIFIERS", "member_no:X", "expected type:value"),
    ],
)
def test_custom_types_are_checked_at_start_with_errors_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"{variable}: .*{message}"):
        load_settings()


def test_segment_external_ids_never_reject_a_message_whatever_their_shape() -> None:
    hostile: list[Any] = [
        {"id": "x" * 5000, "type": "ios.push_token"},  # a destination's type, a long token
        {"id": None, "type": "member_no"},
        {"id": {"nested": 1}, "type": "member_no"},
        {"id": True, "type": "member_no"},
        {"type": "member_no"},
        {"id": "no-type"},
        "not an object",
        {"id": "ACME", "type": "account_no", "collection": "accounts"},  # an account: names no one person
        {"id": 7, "type": " Member_No "},  # a whole number, the type trimmed and lower-cased: read
        *({"id": f"B-{n}", "type": "braze_id"} for n in range(30)),  # past the 20th: left out
    ]
    for external_ids in (hostile, "not a list", {"id": "M-1"}, None):
        page = accept(Channel.WEB, {**PAGE, "context": {"externalIds": external_ids}})
        assert page.identifiers[IdentifierType.WEB_USER_ID] == "u-9"
    read = accept(Channel.WEB, {**PAGE, "context": {"externalIds": hostile}}).identifiers
    assert read["member_no"] == "7" and read["braze_id"] == "B-0" and "account_no" not in read


def test_csv_carries_custom_identifiers_as_json_and_numbers_are_ids() -> None:
    rows = (
        b"receipt_id,store_id,occurred_at,kind,total,currency,identifiers\n"
        b'R-1,LON-1,2024-05-01T10:00:00Z,sale,10,GBP,"{""member_no"": 12}"\n'
    )
    (result,) = read_records(Channel.STORE, rows, source_file="s.csv", fmt="csv", received_at=RECEIVED)
    assert isinstance(result, Accepted) and result.event.identifiers == {"member_no": "12"}


def test_a_value_the_records_own_field_gave_is_never_replaced_by_its_identifiers_object() -> None:
    patterns = {"email": "^test@"}
    blocked = IdentifierHashing("salt", blocked=BlockedPatterns(patterns))
    record = {**SALE, "email": "test@shop.example", "identifiers": {"email": "other.person@example.org"}}
    hashed = convert_one(Channel.STORE, record, received_at=RECEIVED, hashing=blocked)
    assert isinstance(hashed, Accepted) and IdentifierType.EMAIL not in hashed.event.identifiers
    assert accept(Channel.STORE, record).identifiers[IdentifierType.EMAIL] == "test@shop.example"


def test_segments_names_of_the_web_types_cannot_be_custom_types() -> None:
    with pytest.raises(ValidationError, match="built-in type names"):
        Settings(custom_identifier_types=["user_id"])


#: A worker and adapters that also hash Segment's userId (often an e-mail in practice) and a membership number.
MORE_HASHED = Settings(
    custom_identifier_types=["member_no"],
    hash_identifiers=True,
    identifier_salt="pepper",
    hashed_identifier_types=["email", "phone", "web_user_id", "member_no"],
)


def test_hashed_identifier_types_may_add_segments_user_id_and_custom_types() -> None:
    from streams.domain.identity import IdentityRules
    from streams.policies import identifier_hashing

    hashing = identifier_hashing(MORE_HASHED)
    assert hashing is not None
    converted = []
    for channel, record in ((Channel.STORE, SALE), (Channel.WEB, PAGE)):
        result = convert_one(channel, record, received_at=RECEIVED, hashing=hashing)
        assert isinstance(result, Accepted), result
        converted.append(result.event)
    sale, page = converted
    published = sale.model_dump_json() + page.model_dump_json() + partition_key(page).decode()
    assert "M-1" not in published and '"u-9"' not in published, "no raw membership number or user id leaves"
    alias = {**PAGE, "type": "alias", "previousId": "u-8", "anonymousId": "a-1"}
    aliased = convert_one(Channel.WEB, alias, received_at=RECEIVED, hashing=hashing)
    assert isinstance(aliased, Accepted) and "u-8" not in aliased.event.model_dump_json(), "nor an earlier user id"
    assert (
        page.hashed_with
        == hashing.fingerprint
        != identifier_hashing(Settings(hash_identifiers=True, identifier_salt="pepper")).fingerprint
    )  # type: ignore[union-attr]

    # A worker of the same settings stitches the hashed events and raw ones of the same person under the same keys.
    policies = Policies.from_settings(MORE_HASHED)
    raw = [accept(Channel.STORE, SALE), accept(Channel.WEB, PAGE)]
    rules = IdentityRules(policies.identity)
    assert [rules.keys_of(e) for e in converted] == [rules.keys_of(e) for e in raw]
    assert stored_key("member_no:M-1", hashing, "GB") in rules.keys_of(raw[0]).keys
    assert len(replay(converted + raw, policies).customers) == 1

    # A worker hashing only e-mail and phone takes the hashed e-mail, and leaves out (and counts) the hashed
    # membership number: it stores membership numbers raw, so the hash could match nothing.
    default = Policies.from_settings(
        Settings(custom_identifier_types=["member_no"], hash_identifiers=True, identifier_salt="pepper")
    )
    default_keys = IdentityRules(default.identity).keys_of(sale)
    assert default_keys.blocked == 1 and default_keys.keys == IdentityRules(default.identity).keys_of(raw[0]).keys[:1]

    # Events hashed before the list grew (e-mail and phone only) still stitch: the worker hashes their raw userId.
    before = identifier_hashing(
        Settings(custom_identifier_types=["member_no"], hash_identifiers=True, identifier_salt="pepper")
    )
    old = convert_one(Channel.WEB, PAGE, received_at=RECEIVED, hashing=before)
    assert isinstance(old, Accepted) and old.event.hashed_with == before.fingerprint  # type: ignore[union-attr]
    assert rules.keys_of(old.event) == rules.keys_of(raw[1])

    # A raw value of an added type under the marker is not stored as if it were a hash.
    forged = page.model_copy(update={"identifiers": {**page.identifiers, "member_no": "M-1"}})
    assert rules.keys_of(forged).blocked == 1


def test_values_named_as_a_hashed_type_are_stored_as_its_keys_in_traits_and_properties() -> None:
    # A Segment identify carries the membership number as a trait too: hashed as the identifier is, or the raw
    # number would sit on the customer's profile. Known by its name only: in free text it is not recognised.
    from streams.policies import identifier_hashing

    hashing = identifier_hashing(MORE_HASHED)
    assert hashing is not None
    identify = {**PAGE, "type": "identify", "messageId": "m-2",
                "traits": {"member_no": " M-1 ", "web_user_id": "u-9", "email": "mailto:Ann@Example.org",
                           "phone": "n/a", "plan": "gold", "address": {"member_no": "M-1"}}}  # fmt: skip
    track = {**PAGE, "type": "track", "messageId": "m-3", "event": "Card Linked",
             "properties": {"member_no": 12345678, "note": "card M-2 linked", "member_nos": ["M-3"],
                            "cards": {"member_no": ["M-2", 87654321, None]}, "email": "ann@example.org"}}  # fmt: skip
    events = []
    for record in (identify, track):
        result = convert_one(Channel.WEB, record, received_at=RECEIVED, hashing=hashing)
        assert isinstance(result, Accepted), result
        events.append(result.event)
    traits, properties = events[0].attributes["traits"], events[1].attributes["properties"]

    def stored(ref: str) -> str | None:
        return stored_key(ref, hashing, "GB")

    assert traits == {
        "member_no": stored("member_no:M-1"),
        "web_user_id": stored("web_user_id:u-9"),
        "email": f"mailto:{stored('email:ann@example.org')}",  # found by its shape first: the person's key
        "phone": "n/a",  # not a phone number: free text, kept
        "plan": "gold",
        "address": {"member_no": stored("member_no:M-1")},
    }
    assert properties == {
        "member_no": stored("member_no:12345678"),  # a number as the identifier it names
        "note": "card M-2 linked",  # free text: a membership number has no shape to be found by
        "member_nos": ["M-3"],  # another name
        "cards": {"member_no": [stored("member_no:M-2"), stored("member_no:87654321"), None]},
        "email": stored("email:ann@example.org"),
    }
    assert "M-1" not in events[0].model_dump_json() and '"u-9"' not in events[0].model_dump_json()


@pytest.mark.parametrize("value", ["shoe_size", "", "web_user_id", "email,web_user_id"])
def test_hashed_identifier_types_name_known_types(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CXSTREAM_HASHED_IDENTIFIER_TYPES", value)
    with pytest.raises(SettingsError, match="CXSTREAM_HASHED_IDENTIFIER_TYPES"):
        load_settings()
