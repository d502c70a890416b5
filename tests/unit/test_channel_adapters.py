"""Channel adapters: source records to canonical touchpoints, and the reader's dead letters."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from schemas.touchpoint import Channel, EventType, IdentifierType, TouchpointEvent, derive_event_id
from streams.adapters import partition_key
from streams.adapters.reader import Accepted, Reason, Rejected, convert_one, read_records
from tests.support.samples import SAMPLE_FILES, SAMPLES

RECEIVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def accept(channel: Channel, record: dict[str, Any]) -> TouchpointEvent:
    """Convert one record that must be accepted."""
    result = convert_one(channel, record, received_at=RECEIVED)
    assert isinstance(result, Accepted), result
    return result.event


def reject(channel: Channel, record: dict[str, Any] | bytes) -> Rejected:
    """Convert one record that must be rejected."""
    result = convert_one(channel, record, received_at=RECEIVED)
    assert isinstance(result, Rejected), result
    return result


def read(channel: Channel, data: bytes, fmt: str = "jsonl", **kwargs: Any) -> list[Accepted | Rejected]:
    return list(read_records(channel, data, source_file="in.test", fmt=fmt, received_at=RECEIVED, **kwargs))  # type: ignore[arg-type]


STORE_SALE = {
    "receipt_id": "R-1",
    "store_id": "LON-1",
    "occurred_at": "2024-05-01T09:31:05+01:00",
    "kind": "sale",
    "loyalty_id": " LOY-1 ",
    "email": "Alice@Example.org",
    "phone": "07700 900123",
    "total": "54.97",
    "currency": "gbp",
    "items": [{"sku": "A", "qty": 2, "unit_price": "19.99"}],
    "feedback": {"csat": 4},
}
CALL = {
    "call_id": "C-1",
    "occurred_at": "2024-05-01T08:59:10+01:00",
    "phone": "+44 20 7946 0321",
    "crm_id": "CRM-1",
    "direction": "inbound",
    "queue": "billing",
    "wait_seconds": 95,
    "duration_seconds": 412,
    "transfers": 2,
    "reason": "billing_query",
    "issue_id": "CASE-1",
    "resolved": False,
    "survey": {"csat": 2, "ces": 3, "nps": 4},
}
TRACK = {
    "type": "track",
    "messageId": "m-1",
    "anonymousId": "anon-1",
    "timestamp": "2024-05-01T08:00:00Z",
    "event": "Product Viewed",
    "properties": {"product_id": "P1"},
}
ORDER = {
    "marketplace": "Amazon-UK",
    "order_id": "O-1",
    "buyer_id": "B-1",
    "buyer_email": "Buyer@Example.org",
    "occurred_at": "2024-05-01T12:00:00Z",
    "status": "placed",
    "total": "89.97",
    "currency": "GBP",
    "items": [{"sku": "A", "qty": 1, "unit_price": "89.97"}],
}


# --- sample files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "channel", "fmt"), SAMPLE_FILES)
def test_every_sample_line_converts(name: str, channel: Channel, fmt: str) -> None:
    raw = (SAMPLES / name).read_bytes()
    results = list(read_records(channel, raw, source_file=name, fmt=fmt, received_at=RECEIVED))
    lines = [n for n, text in enumerate(raw.split(b"\n"), start=1) if text.strip()]
    data_lines = lines[1:] if fmt == "csv" else lines  # a CSV header gives no result
    assert [r.line for r in results] == data_lines
    assert all(isinstance(r, Accepted) for r in results), [r for r in results if isinstance(r, Rejected)]
    for result in results:
        assert isinstance(result, Accepted)
        event = result.event
        assert event.channel is channel
        assert event.source.file == name and event.source.line == result.line
        assert TouchpointEvent.model_validate_json(event.model_dump_json()) == event  # publishable as is


def sample_types(name: str, channel: Channel, fmt: str = "jsonl") -> set[EventType]:
    raw = (SAMPLES / name).read_bytes()
    return {r.event.type for r in read_records(channel, raw, source_file=name, fmt=fmt) if isinstance(r, Accepted)}  # type: ignore[arg-type]


def test_samples_cover_every_kind_status_and_type() -> None:
    store = {EventType.STORE_VISIT, EventType.PURCHASE, EventType.RETURN}
    assert sample_types("store.jsonl", Channel.STORE) == store
    assert sample_types("store.csv", Channel.STORE, "csv") == store
    phone = {EventType.SUPPORT_CONTACT, EventType.ENQUIRY}
    assert sample_types("phone.jsonl", Channel.PHONE) == phone
    assert sample_types("phone.csv", Channel.PHONE, "csv") == phone
    assert sample_types("ecommerce.jsonl", Channel.ECOMMERCE) == {
        EventType.PURCHASE,
        EventType.SHIPMENT,
        EventType.DELIVERY,
        EventType.LATE_DELIVERY,
        EventType.RETURN,
        EventType.CANCELLATION,
        EventType.REVIEW,
    }
    web = sample_types("web.jsonl", Channel.WEB)
    assert web >= {
        EventType.PAGE_VIEW,
        EventType.IDENTIFY,
        EventType.PRODUCT_VIEW,
        EventType.SEARCH,
        EventType.ADD_TO_CART,
        EventType.CHECKOUT,
        EventType.PURCHASE,
        EventType.RETURN,
        EventType.SURVEY,
        EventType.SUPPORT_CONTACT,
        EventType.OTHER,
    }


# --- store -----------------------------------------------------------------------------------------


def test_store_sale_maps_to_purchase_with_amount_identifiers_and_survey() -> None:
    event = accept(Channel.STORE, STORE_SALE)
    assert event.type is EventType.PURCHASE
    assert event.amount == Decimal("54.97") and event.currency == "GBP"
    assert event.identifiers == {
        IdentifierType.LOYALTY_ID: "LOY-1",
        IdentifierType.EMAIL: "alice@example.org",
        IdentifierType.PHONE: "+447700900123",
    }
    assert event.survey is not None and event.survey.csat == 4
    assert event.source.system == "LON-1" and event.source.id == "LON-1:sale:R-1"
    assert event.event_id == derive_event_id(Channel.STORE, "LON-1:sale:R-1")
    assert event.attributes["items"] == [{"sku": "A", "qty": "2", "unit_price": "19.99"}]
    assert event.occurred_at.isoformat() == "2024-05-01T09:31:05+01:00"  # the source's offset is kept
    assert event.received_at == RECEIVED


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"kind": "visit", "receipt_id": None, "visit_id": "V-1", "total": None}, EventType.STORE_VISIT),
        ({"kind": "sale"}, EventType.PURCHASE),
        ({"kind": "return"}, EventType.RETURN),
    ],
)
def test_store_kinds(changes: dict[str, Any], expected: EventType) -> None:
    record = {k: v for k, v in {**STORE_SALE, **changes}.items() if v is not None}
    assert accept(Channel.STORE, record).type is expected


def test_store_return_on_the_sales_receipt_is_a_separate_event() -> None:
    sale = accept(Channel.STORE, STORE_SALE)
    ret = accept(Channel.STORE, {**STORE_SALE, "kind": "return"})
    assert sale.event_id != ret.event_id


def test_store_anonymous_visit_has_no_identifiers_and_is_keyed_by_event_id() -> None:
    visit = {"visit_id": 7, "store_id": 12, "occurred_at": "2024-05-01T10:00:00Z", "kind": "visit"}
    event = accept(Channel.STORE, visit)
    assert event.identifiers == {} and event.source.id == "12:visit:7"
    assert partition_key(event) == event.event_id.encode()


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"occurred_at": "2024-05-01T09:31:05"}, "occurred_at: Input should have timezone info"),
        ({"occurred_at": 1714552265}, "occurred_at: Value error, expected an ISO 8601 date-time string"),
        ({"kind": "refund"}, "kind: Input should be 'visit', 'sale' or 'return'"),
        ({"total": "-1"}, "total: Input should be greater than or equal to 0"),
        ({"total": "NaN"}, "total: Input should be a finite number"),
        ({"total": "12.5abc"}, "total: Input should be a valid decimal"),
        ({"total": 0.1 + 0.2}, "total: Decimal input should have no more than 4 decimal places"),
        ({"currency": "pounds"}, "currency: String should match pattern"),
        ({"currency": None}, "record: Value error, currency is required when total is given"),
        ({"receipt_id": None}, "record: Value error, a sale needs a receipt_id"),
        ({"kind": "visit"}, "record: Value error, a visit carries no total"),
        ({"store_id": None}, "store_id: Field required"),
        ({"items": [{"sku": "A", "qty": 0}]}, "items.0.qty: Input should be greater than 0"),
        ({"feedback": {"csat": 6}}, "feedback.csat: Input should be less than or equal to 5"),
        ({"feedback": {"csat": "4"}}, "feedback.csat: Input should be a valid integer"),
    ],
)
def test_store_validation_errors_name_the_field(changes: dict[str, Any], detail: str) -> None:
    record = {k: v for k, v in {**STORE_SALE, **changes}.items() if v is not None}
    rejected = reject(Channel.STORE, record)
    assert rejected.reason == Reason.VALIDATION_ERROR
    assert detail in rejected.dead_letter.detail


@pytest.mark.parametrize(("field", "value"), [("email", "alice.example.org"), ("phone", "12"), ("loyalty_id", "   ")])
def test_store_invalid_identifier_names_the_field(field: str, value: str) -> None:
    rejected = reject(Channel.STORE, {**STORE_SALE, field: value})
    expected = Reason.VALIDATION_ERROR if field == "loyalty_id" else Reason.INVALID_IDENTIFIER
    assert rejected.reason == expected
    assert rejected.dead_letter.detail.startswith(f"{field}: ")


# --- phone -----------------------------------------------------------------------------------------


def test_phone_call_carries_issue_survey_and_call_attributes() -> None:
    event = accept(Channel.PHONE, CALL)
    assert event.type is EventType.SUPPORT_CONTACT
    assert event.identifiers == {IdentifierType.CRM_ID: "CRM-1", IdentifierType.PHONE: "+442079460321"}
    assert (event.issue_id, event.reason, event.resolved, event.transfers) == ("CASE-1", "billing_query", False, 2)
    assert event.survey is not None and (event.survey.csat, event.survey.ces, event.survey.nps) == (2, 3, 4)
    assert event.attributes == {"direction": "inbound", "queue": "billing", "wait_seconds": 95, "duration_seconds": 412}
    assert event.source.system == "billing" and event.source.id == "C-1"
    assert partition_key(event) == b"crm_id:CRM-1"


@pytest.mark.parametrize(
    ("direction", "reason", "expected"),
    [
        ("inbound", "product_enquiry", EventType.ENQUIRY),
        ("inbound", "Pre-Sales", EventType.ENQUIRY),
        ("inbound", "enquiry", EventType.ENQUIRY),
        ("inbound", "complaint", EventType.SUPPORT_CONTACT),
        ("inbound", None, EventType.SUPPORT_CONTACT),
        ("outbound", "enquiry", EventType.SUPPORT_CONTACT),
        ("outbound", "follow_up", EventType.SUPPORT_CONTACT),
    ],
)
def test_phone_event_type(direction: str, reason: str | None, expected: EventType) -> None:
    record = {k: v for k, v in {**CALL, "direction": direction, "reason": reason}.items() if v is not None}
    assert accept(Channel.PHONE, record).type is expected


def test_phone_minimal_call_defaults() -> None:
    minimal = {"call_id": 9, "occurred_at": "2024-05-01T08:00:00Z", "phone": "07700900123", "direction": "outbound"}
    event = accept(Channel.PHONE, {**minimal, "duration_seconds": 60})
    assert event.transfers == 0 and event.survey is None and event.resolved is None
    assert event.source.system == "call-centre" and event.source.id == "9"


@pytest.mark.parametrize(
    ("changes", "reason", "detail"),
    [
        ({"phone": "not a number"}, Reason.INVALID_IDENTIFIER, "phone: not a phone number"),
        ({"direction": "sideways"}, Reason.VALIDATION_ERROR, "direction: Input should be 'inbound' or 'outbound'"),
        ({"wait_seconds": -5}, Reason.VALIDATION_ERROR, "wait_seconds: Input should be greater than or equal to 0"),
        ({"transfers": 1.5}, Reason.VALIDATION_ERROR, "transfers: Input should be a valid integer"),
        ({"survey": {"nps": 11}}, Reason.VALIDATION_ERROR, "survey.nps: Input should be less than or equal to 10"),
        ({"survey": {"ces": 0}}, Reason.VALIDATION_ERROR, "survey.ces: Input should be greater than or equal to 1"),
        ({"resolved": "maybe"}, Reason.VALIDATION_ERROR, "resolved: Input should be a valid boolean"),
    ],
)
def test_phone_rejections(changes: dict[str, Any], reason: Reason, detail: str) -> None:
    rejected = reject(Channel.PHONE, {**CALL, **changes})
    assert rejected.reason == reason
    assert detail in rejected.dead_letter.detail


# --- web -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_name", "expected"),
    [
        ("Product Viewed", EventType.PRODUCT_VIEW),
        ("Products Searched", EventType.SEARCH),
        ("Product Added", EventType.ADD_TO_CART),
        ("Checkout Started", EventType.CHECKOUT),
        ("Order Completed", EventType.PURCHASE),
        ("order_completed", EventType.PURCHASE),
        ("Order Refunded", EventType.RETURN),
        ("Order Cancelled", EventType.CANCELLATION),
        ("Product Reviewed", EventType.REVIEW),
        ("Support Ticket Created", EventType.SUPPORT_CONTACT),
        ("Complaint Submitted", EventType.SUPPORT_CONTACT),
        ("Support Request Sent", EventType.SUPPORT_CONTACT),
        ("ticket_opened", EventType.SUPPORT_CONTACT),
        ("Support Article Viewed", EventType.OTHER),
        ("Product List Viewed", EventType.PAGE_VIEW),
        ("Promotion Clicked", EventType.OTHER),
        ("Wishlist Shared", EventType.OTHER),
    ],
)
def test_web_track_event_names(event_name: str, expected: EventType) -> None:
    event = accept(Channel.WEB, {**TRACK, "event": event_name})
    assert event.type is expected
    assert event.attributes["event"] == event_name


@pytest.mark.parametrize(("segment_type", "expected"), [("page", EventType.PAGE_VIEW), ("screen", EventType.PAGE_VIEW)])
def test_web_page_and_screen(segment_type: str, expected: EventType) -> None:
    event = accept(Channel.WEB, {**TRACK, "type": segment_type, "event": None, "name": "Home"})
    assert event.type is expected and event.attributes["name"] == "Home"


def test_web_identify_takes_email_from_traits() -> None:
    identify = {**TRACK, "type": "identify", "userId": "u-1", "traits": {"email": " Ann@Example.ORG ", "plan": "gold"}}
    event = accept(Channel.WEB, identify)
    assert event.type is EventType.IDENTIFY
    assert event.identifiers == {
        IdentifierType.WEB_ANONYMOUS_ID: "anon-1",
        IdentifierType.WEB_USER_ID: "u-1",
        IdentifierType.EMAIL: "ann@example.org",
    }
    key = partition_key(event)
    assert key.startswith(b"email:") and b"ann" not in key, "personal data is digested in Kafka keys"
    assert key == partition_key(accept(Channel.WEB, {**identify, "messageId": "other"})), "same person, same key"


def test_web_identify_keeps_its_traits_and_a_group_does_not() -> None:
    identify = {
        **TRACK,
        "type": "identify",
        "event": None,
        "userId": "u-1",
        "traits": {"email": "a@b.org", "plan": "gold"},
    }
    assert accept(Channel.WEB, identify).attributes["traits"] == {"email": "a@b.org", "plan": "gold"}
    group = {**identify, "type": "group", "groupId": "acct-1"}
    assert "traits" not in accept(Channel.WEB, group).attributes, "an account's traits are not the person's"


def test_web_alias_links_its_previous_id_to_the_user_id() -> None:
    alias = {**TRACK, "type": "alias", "event": None, "anonymousId": None, "previousId": "anon-7", "userId": "u-7"}
    event = accept(Channel.WEB, {k: v for k, v in alias.items() if v is not None})
    assert event.type is EventType.IDENTIFY
    assert event.identifiers == {IdentifierType.WEB_ANONYMOUS_ID: "anon-7", IdentifierType.WEB_USER_ID: "u-7"}
    assert event.attributes["segment_type"] == "alias"
    # From an earlier user id (previousId is not the anonymous id): no link, the alias kept as an attribute.
    renamed = accept(Channel.WEB, {**alias, "anonymousId": "anon-7", "previousId": "u-6"})
    assert renamed.identifiers == {IdentifierType.WEB_ANONYMOUS_ID: "anon-7", IdentifierType.WEB_USER_ID: "u-7"}
    assert renamed.attributes["previous_id"] == "u-6"


def test_web_group_keeps_the_account_on_the_touchpoint_not_as_an_identifier() -> None:
    group = {**TRACK, "type": "group", "event": None, "groupId": "acct-1", "traits": {"email": "billing@acme.example"}}
    event = accept(Channel.WEB, group)
    assert event.type is EventType.IDENTIFY
    assert event.attributes["group_id"] == "acct-1"
    assert event.identifiers == {IdentifierType.WEB_ANONYMOUS_ID: "anon-1"}, "the account's e-mail is not the user's"
    person = {**group, "context": {"traits": {"email": "ann@example.org"}}}
    assert accept(Channel.WEB, person).identifiers[IdentifierType.EMAIL] == "ann@example.org"


def test_web_track_takes_email_from_context_traits() -> None:
    event = accept(Channel.WEB, {**TRACK, "context": {"traits": {"email": "b@example.org"}, "ip": "203.0.113.1"}})
    assert event.identifiers[IdentifierType.EMAIL] == "b@example.org"


def test_web_bad_email_is_an_invalid_identifier_naming_its_path() -> None:
    rejected = reject(Channel.WEB, {**TRACK, "context": {"traits": {"email": "nobody"}}})
    assert rejected.reason == Reason.INVALID_IDENTIFIER
    assert rejected.dead_letter.detail.startswith("context.traits.email: ")


def test_web_order_amount_prefers_revenue_then_total() -> None:
    props = {"order_id": "W-1", "total": 74.97, "revenue": 69.98, "currency": "gbp"}
    order = accept(Channel.WEB, {**TRACK, "event": "Order Completed", "properties": props})
    assert (order.amount, order.currency) == (Decimal("69.98"), "GBP")
    refund = accept(Channel.WEB, {**TRACK, "event": "Order Refunded", "properties": {"total": "24.50"}})
    assert refund.amount == Decimal("24.50") and refund.currency is None
    viewed = accept(Channel.WEB, {**TRACK, "properties": {"total": 5}})
    assert viewed.amount is None  # only purchases and returns move money


def test_web_product_reviewed_lifts_its_rating() -> None:
    props = {"product_id": "P1", "rating": 1, "review_body": "broke"}
    event = accept(Channel.WEB, {**TRACK, "event": "Product Reviewed", "properties": props})
    assert event.type is EventType.REVIEW and event.attributes["rating"] == 1 and event.survey is None


def test_web_survey_answered() -> None:
    event = accept(Channel.WEB, {**TRACK, "event": "Survey Answered", "properties": {"nps": 10, "ces": 6}})
    assert event.type is EventType.SURVEY
    assert event.survey is not None and (event.survey.nps, event.survey.csat, event.survey.ces) == (10, None, 6)


def test_web_support_contact_carries_issue_and_complaint_flag() -> None:
    ticket = accept(Channel.WEB, {**TRACK, "event": "Support Ticket Created", "properties": {"ticket_id": "T-9"}})
    assert (ticket.issue_id, ticket.reason) == ("T-9", None)
    assert "complaint" not in ticket.attributes
    props = {"issue_id": "CASE-1", "resolved": False}
    complaint = accept(Channel.WEB, {**TRACK, "event": "Complaint Submitted", "properties": props})
    assert (complaint.issue_id, complaint.reason, complaint.resolved) == ("CASE-1", "complaint", False)
    assert complaint.attributes["complaint"] is True


def test_web_keeps_unknown_fields_and_numeric_user_id() -> None:
    record = {**TRACK, "userId": 42, "sentAt": "2024-05-01T08:00:01Z", "properties": {"product_id": "P1", "x": [1]}}
    event = accept(Channel.WEB, record)
    assert event.identifiers[IdentifierType.WEB_USER_ID] == "42"
    assert event.attributes["properties"] == {"product_id": "P1", "x": [1]}


def test_web_original_timestamp_is_the_fallback() -> None:
    record = {k: v for k, v in TRACK.items() if k != "timestamp"}
    event = accept(Channel.WEB, {**record, "originalTimestamp": "2024-05-01T10:00:00+02:00"})
    assert event.occurred_at == datetime(2024, 5, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"anonymousId": None}, "record: Value error, either anonymousId or userId is required"),
        ({"timestamp": None}, "record: Value error, timestamp (or originalTimestamp) is required"),
        ({"event": None}, "record: Value error, a track call needs an event name"),
        ({"type": "group"}, "record: Value error, a group call needs a groupId"),
        ({"type": "alias"}, "record: Value error, an alias call needs previousId and userId"),
        ({"type": "merge"}, "type: Input should be 'page', 'screen', 'track', 'identify', 'group' or 'alias'"),
        ({"messageId": None}, "messageId: Field required"),
        ({"event": "Survey Answered"}, "a Survey Answered event needs properties.nps, .csat or .ces"),
        ({"event": "Survey Answered", "properties": {"nps": 11}}, "properties.nps: Input should be less than or equal"),
        ({"event": "Order Completed", "properties": {"revenue": "ten"}}, "properties.revenue: Input should be a valid"),
        ({"timestamp": "2024-05-01 08:00"}, "timestamp: Input should have timezone info"),
    ],
)
def test_web_rejections(changes: dict[str, Any], detail: str) -> None:
    record = {k: v for k, v in {**TRACK, **changes}.items() if v is not None}
    rejected = reject(Channel.WEB, record)
    assert rejected.reason == Reason.VALIDATION_ERROR
    assert detail in rejected.dead_letter.detail


# --- e-commerce ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected", "has_amount"),
    [
        ("placed", EventType.PURCHASE, True),
        ("shipped", EventType.SHIPMENT, False),
        ("delivered", EventType.DELIVERY, False),
        ("delivered_late", EventType.LATE_DELIVERY, False),
        ("returned", EventType.RETURN, True),
        ("cancelled", EventType.CANCELLATION, False),
    ],
)
def test_ecommerce_statuses(status: str, expected: EventType, has_amount: bool) -> None:
    event = accept(Channel.ECOMMERCE, {**ORDER, "status": status})
    assert event.type is expected
    assert event.amount == (Decimal("89.97") if has_amount else None)
    assert event.attributes["order_total"] == "89.97" and event.currency == "GBP"
    assert event.source.id == f"amazon-uk:O-1:{status}"
    assert event.identifiers == {
        IdentifierType.MARKETPLACE_BUYER_ID: "amazon-uk:B-1",
        IdentifierType.EMAIL: "buyer@example.org",
    }


def test_ecommerce_review_rides_on_the_status_event() -> None:
    review = {"rating": 2, "text": "late"}
    event = accept(Channel.ECOMMERCE, {**ORDER, "status": "delivered_late", "review": review})
    assert event.type is EventType.LATE_DELIVERY
    assert event.survey is not None and event.survey.csat == 2
    assert event.attributes["review"] == review


def test_ecommerce_reviewed_status_is_a_review_event() -> None:
    event = accept(Channel.ECOMMERCE, {**ORDER, "status": "reviewed", "review": {"rating": 5}})
    assert event.type is EventType.REVIEW and event.survey is not None and event.survey.csat == 5
    rejected = reject(Channel.ECOMMERCE, {**ORDER, "status": "reviewed"})
    assert "status 'reviewed' needs a review" in rejected.dead_letter.detail


@pytest.mark.parametrize(
    ("changes", "reason", "detail"),
    [
        ({"status": "lost"}, Reason.VALIDATION_ERROR, "status: Input should be"),
        ({"review": {"rating": 0}}, Reason.VALIDATION_ERROR, "review.rating: Input should be greater than or equal"),
        ({"total": None}, Reason.VALIDATION_ERROR, "total: Field required"),
        ({"buyer_email": "x@"}, Reason.INVALID_IDENTIFIER, "buyer_email: not an e-mail address"),
    ],
)
def test_ecommerce_rejections(changes: dict[str, Any], reason: Reason, detail: str) -> None:
    record = {k: v for k, v in {**ORDER, **changes}.items() if v is not None}
    rejected = reject(Channel.ECOMMERCE, record)
    assert rejected.reason == reason
    assert detail in rejected.dead_letter.detail


# --- event ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "record"),
    [(Channel.STORE, STORE_SALE), (Channel.PHONE, CALL), (Channel.WEB, TRACK), (Channel.ECOMMERCE, ORDER)],
)
def test_event_id_is_deterministic_for_a_resent_record(channel: Channel, record: dict[str, Any]) -> None:
    first = accept(channel, record)
    reordered = json.dumps(dict(reversed(list(record.items())))).encode()
    later = convert_one(channel, reordered, received_at=datetime(2025, 1, 1, tzinfo=UTC))
    assert isinstance(later, Accepted)
    assert later.event.event_id == first.event_id
    assert later.event.model_copy(update={"received_at": RECEIVED}) == first


def test_event_id_differs_per_order_status() -> None:
    ids = {accept(Channel.ECOMMERCE, {**ORDER, "status": s}).event_id for s in ("placed", "shipped", "delivered")}
    assert len(ids) == 3


# --- the reader ------------------------------------------------------------------------------------


def test_reader_rejects_each_kind_of_bad_line_with_its_line_number() -> None:
    good = json.dumps(ORDER).encode()
    naive = json.dumps({**ORDER, "occurred_at": "2024-05-01T12:00:00"}).encode()
    lines = [
        good,  # 1
        b"",  # 2: blank, skipped
        b"{not json",  # 3
        b"[1, 2]",  # 4
        b'{"marketplace": "\xff"}',  # 5
        naive,  # 6
        json.dumps({**ORDER, "buyer_email": "nope"}).encode(),  # 7
        b"   \t",  # 8: blank, skipped
        b'{"pad": "' + b"x" * 500 + b'"}',  # 9
        b"null",  # 10
    ]
    results = read(Channel.ECOMMERCE, b"\n".join(lines) + b"\n", max_line_bytes=400)
    assert [(r.line, r.reason if isinstance(r, Rejected) else "ok") for r in results] == [
        (1, "ok"),
        (3, "invalid_json"),
        (4, "not_an_object"),
        (5, "invalid_utf8"),
        (6, "validation_error"),
        (7, "invalid_identifier"),
        (9, "line_too_long"),
        (10, "not_an_object"),
    ]
    by_line = {r.line: r for r in results}
    naive_dead = by_line[6].dead_letter  # type: ignore[union-attr]
    assert naive_dead.detail == "occurred_at: Input should have timezone info"
    assert naive_dead.original() == naive and naive_dead.source_file == "in.test"
    assert naive_dead.stage == "adapter" and naive_dead.channel == "ecommerce" and naive_dead.rejected_at == RECEIVED
    assert "line is 511 bytes, over the limit of 400" in by_line[9].dead_letter.detail  # type: ignore[union-attr]


def test_reader_keeps_a_prefix_of_a_huge_line_in_its_dead_letter() -> None:
    huge = b'{"x": "' + b"y" * 200_000 + b'"}'
    (result,) = read(Channel.WEB, huge, max_line_bytes=100_000)
    assert isinstance(result, Rejected) and result.reason == "line_too_long"
    assert result.raw == huge
    assert result.dead_letter.original() == huge[: 64 * 1024]


def test_reader_accepts_crlf_bom_and_iterables_of_lines() -> None:
    line = json.dumps(TRACK)
    data = b"\xef\xbb\xbf" + line.encode() + b"\r\n\r\n" + line.encode() + b"\r\n"
    results = read(Channel.WEB, data)
    assert [(r.line, type(r)) for r in results] == [(1, Accepted), (3, Accepted)]
    assert results[1].raw == line.encode()
    from_str = read(Channel.WEB, [line, "", line + "\n"])  # type: ignore[arg-type]
    from_bytes = read(Channel.WEB, [line.encode() + b"\n", b"\n", line.encode() + b"\n"])  # type: ignore[arg-type]
    assert [r.line for r in from_str] == [r.line for r in from_bytes] == [1, 3]


def test_reader_rejects_lone_surrogates_in_str_input() -> None:
    (result,) = read(Channel.WEB, ['{"type": "\ud800"}'])  # type: ignore[arg-type]
    assert isinstance(result, Rejected) and result.reason == "invalid_utf8"


def test_reader_rejects_nesting_too_deep_to_republish() -> None:
    deep = {**TRACK, "properties": {"x": json.loads("[" * 100 + "]" * 100)}}
    (result,) = read(Channel.WEB, json.dumps(deep).encode())
    assert isinstance(result, Rejected) and result.reason == "validation_error"
    assert "nested deeper than" in result.dead_letter.detail
    assert convert_one(Channel.WEB, deep).reason == "validation_error"  # type: ignore[union-attr]


def test_reader_refuses_bad_arguments_at_once() -> None:
    with pytest.raises(ValueError):
        read_records("fax", b"", source_file=None)
    with pytest.raises(ValueError):
        read_records(Channel.WEB, b"", source_file=None, fmt="csv")
    with pytest.raises(ValueError):
        read_records(Channel.STORE, b"", source_file=None, fmt="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        read_records(Channel.STORE, b"", source_file=None, received_at=datetime(2024, 1, 1))


def test_received_at_defaults_to_now() -> None:
    before = datetime.now(UTC)
    (result,) = read_records(Channel.WEB, json.dumps(TRACK).encode(), source_file=None)
    assert isinstance(result, Accepted) and result.event.received_at >= before


# --- CSV -------------------------------------------------------------------------------------------

CSV_HEADER = b"receipt_id,visit_id,store_id,occurred_at,kind,loyalty_id,total,currency,items,feedback"


def test_csv_row_maps_like_json() -> None:
    row = b'R-1,,LON-1,2024-05-01T09:31:05+01:00,sale,LOY-1,19.99,GBP,"[{""sku"": ""A"", ""qty"": 1}]","{""csat"": 4}"'
    (result,) = read(Channel.STORE, CSV_HEADER + b"\n" + row, fmt="csv")
    assert isinstance(result, Accepted) and result.line == 2 and result.raw == row
    event = result.event
    assert (event.type, event.amount, event.identifiers) == (
        EventType.PURCHASE,
        Decimal("19.99"),
        {IdentifierType.LOYALTY_ID: "LOY-1"},
    )
    assert event.survey is not None and event.survey.csat == 4
    assert event.attributes["items"] == [{"sku": "A", "qty": "1"}]


def test_csv_rejections() -> None:
    rows = [
        CSV_HEADER,  # 1
        b"R-1,,LON-1,2024-05-01T09:31:05+01:00,sale,,,,,",  # 2: ok
        b"R-2,,LON-1,2024-05-01T09:31:05+01:00,sale",  # 3: too few cells
        b"R-3,,LON-1,2024-05-01T09:31:05+01:00,sale,,,,[oops,",  # 4: items cell not JSON
        b'R-4,,LON-1,2024-05-01T09:31:05+01:00,sale,,,,"[1,',  # 5: unterminated quote
        b"R-5,,LON-1,2024-05-01T09:31:05,sale,,,,,",  # 6: naive time
        b"R-6,,LON-1,2024-05-01T09:31:05Z,sale,,\xff,,,",  # 7: not UTF-8
    ]
    results = read(Channel.STORE, b"\n".join(rows), fmt="csv")
    assert [(r.line, r.reason if isinstance(r, Rejected) else "ok") for r in results] == [
        (2, "ok"),
        (3, "invalid_csv"),
        (4, "validation_error"),
        (5, "invalid_csv"),
        (6, "validation_error"),
        (7, "invalid_utf8"),
    ]
    assert results[1].dead_letter.detail == "expected 10 cells as in the header, got 5"  # type: ignore[union-attr]
    assert results[2].dead_letter.detail.startswith("items: the cell is not valid JSON")  # type: ignore[union-attr]


def test_csv_with_an_unusable_header_rejects_every_row() -> None:
    data = b"receipt_id,store_id,receipt_id\nR-1,S,R-1\n\nR-2,S,R-2\n"
    results = read(Channel.STORE, data, fmt="csv")
    assert [(r.line, r.reason) for r in results] == [(1, "invalid_csv"), (2, "invalid_csv"), (4, "invalid_csv")]  # type: ignore[union-attr]
    assert "duplicate columns ['receipt_id']" in results[0].dead_letter.detail  # type: ignore[union-attr]
    assert results[1].dead_letter.detail.startswith("no usable header (line 1:")  # type: ignore[union-attr]


# --- convert_one -----------------------------------------------------------------------------------


def test_convert_one_accepts_bytes_and_objects_alike() -> None:
    from_dict = convert_one(Channel.WEB, TRACK, received_at=RECEIVED, source_file="collector")
    from_bytes = convert_one(Channel.WEB, json.dumps(TRACK).encode(), received_at=RECEIVED, source_file="collector")
    assert isinstance(from_dict, Accepted) and isinstance(from_bytes, Accepted)
    assert from_dict.event == from_bytes.event
    assert json.loads(from_dict.raw) == TRACK


@pytest.mark.parametrize(
    ("raw", "reason"), [(b"", "invalid_json"), (b"42", "not_an_object"), (b"\xc3", "invalid_utf8")]
)
def test_convert_one_rejects_bad_bytes(raw: bytes, reason: str) -> None:
    rejected = reject(Channel.WEB, raw)
    assert rejected.reason == reason and rejected.dead_letter.original() == raw and rejected.line is None


@pytest.mark.parametrize("value", [[TRACK], "text", 3, None])
def test_convert_one_rejects_parsed_values_that_are_not_objects(value: object) -> None:
    rejected = convert_one(Channel.WEB, value, received_at=RECEIVED)
    assert isinstance(rejected, Rejected) and rejected.reason == "not_an_object"
    assert json.loads(rejected.dead_letter.original()) == value


def test_reader_splits_a_whole_str_document_into_lines() -> None:
    document = json.dumps(TRACK) + "\n\n" + json.dumps(TRACK) + "\n"
    assert [r.line for r in read(Channel.WEB, document)] == [1, 3]  # type: ignore[arg-type]


# --- what PostgreSQL would refuse is rejected by the adapter, whatever the database ----------------


@pytest.mark.parametrize(
    ("channel", "line", "path"),
    [
        (Channel.STORE, b'{"store_id": "S\\u0000", "receipt_id": "R", "kind": "visit"}', "store_id"),
        (Channel.STORE, b'{"store_id": "S", "visit_id": "V", "kind": "visit", "note": "x\\u0000"}', "note"),
        (Channel.WEB, b'{"type": "page", "messageId": "m", "properties": {"a\\u0000b": 1}}', "properties.a\x00b"),
        (Channel.ECOMMERCE, b'{"items": [{"sku": "ok"}, {"sku": "\\u0000"}]}', "items[1].sku"),
    ],
)
def test_a_nul_character_anywhere_rejects_the_record(channel: Channel, line: bytes, path: str) -> None:
    # Unknown fields included: a record is rejected whole rather than stored on SQLite and refused by PostgreSQL.
    (result,) = read(channel, line)
    assert isinstance(result, Rejected) and result.reason == Reason.VALIDATION_ERROR
    assert result.dead_letter.detail.startswith(f"{path}: a NUL character")
    assert result.dead_letter.original() == line


def test_a_nul_character_in_a_csv_cell_rejects_the_row() -> None:
    row = b"R-1,,LON-1,2024-05-01T09:31:05+01:00,sale,LOY-\x001,,,,"
    (result,) = read(Channel.STORE, CSV_HEADER + b"\n" + row, fmt="csv")
    assert isinstance(result, Rejected) and result.dead_letter.detail.startswith("loyalty_id: a NUL character")


@pytest.mark.parametrize(
    ("channel", "record", "detail"),
    [
        (Channel.PHONE, CALL | {"issue_id": "I" * 129}, "issue_id: String should have at most 128 characters"),
        (Channel.WEB, TRACK | {"properties": {"ticket_id": "T" * 129}}, "properties.ticket_id: String should have"),
        (Channel.STORE, STORE_SALE | {"store_id": "S" * 200, "receipt_id": "R" * 60}, "record: the source id"),
        (Channel.ECOMMERCE, ORDER | {"marketplace": "m" * 60, "buyer_id": "b" * 200}, "marketplace_buyer_id: the"),
        (Channel.PHONE, CALL | {"issue_id": None, "reason": "r" * 154}, "reason: too long to name an issue"),
    ],
)
def test_values_longer_than_their_sql_column_are_rejected(
    channel: Channel, record: dict[str, Any], detail: str
) -> None:
    dead = reject(channel, {k: v for k, v in record.items() if v is not None}).dead_letter
    assert dead.reason == Reason.VALIDATION_ERROR and dead.detail.startswith(detail), dead.detail


def test_a_long_reason_is_fine_on_a_contact_that_names_its_issue() -> None:
    # The reason names the issue only when there is no issue id; otherwise it is not stored in a sized column.
    assert accept(Channel.PHONE, CALL | {"reason": "r" * 200}).issue_id == CALL["issue_id"]
