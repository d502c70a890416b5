"""Composed ids are injective, and every id written before for unambiguous parts stays the same.

Event ids are idempotency keys held in databases, and ``marketplace:buyer_id`` is an identifier key: two
different records must never share one, and an id already stored must not move.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from config.settings import Settings
from schemas.touchpoint import Channel, IdentifierType, SourceRef, compose_id, derive_event_id
from streams.adapters.reader import Accepted, convert_one
from streams.domain.identity import ANONYMOUS_ATTRIBUTE, anonymous_key
from streams.domain.oracle import replay
from streams.policies import Policies

RECEIVED = datetime(2024, 6, 1, tzinfo=UTC)
MANY = settings(max_examples=300, deadline=None)

#: Parts drawn from a small alphabet heavy in the separator and the escape character, so that near misses
#: (``a:b`` + ``c`` against ``a`` + ``b:c``, a part ending in ``\``) come up all the time.
parts = st.text(alphabet="ab:\\", min_size=0, max_size=6)
#: Parts as ids written before could have them: no separator or escape character, except in the last part.
clean_parts = st.text(alphabet="aB7-_.", min_size=0, max_size=6)
#: Text made of tokens that source records use as whole parts (kinds, statuses), colons and escapes: split at
#: different colons, one text gives several records that the old ``a:b:c`` ids could not tell apart.
TOKENS = ["a", "B", "\\", "sale", "visit", "return", "placed", "shipped"]
words = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=3).map("".join)
joined_texts = st.lists(words, min_size=2, max_size=6).map(":".join)


def splits(text: str, n: int) -> list[tuple[str, ...]]:
    """Every way to cut ``text`` at n-1 of its colons into n non-empty parts: tuples that joined with ``:`` alike."""
    colons = [i for i, c in enumerate(text) if c == ":"]
    found = []
    for cut in itertools.combinations(colons, n - 1):
        bounds = [-1, *cut, len(text)]
        found.append(tuple(text[a + 1 : b] for a, b in itertools.pairwise(bounds)))
    return [t for t in found if all(t)]


def legacy_join(*values: str) -> str:
    """How composed ids were written before they were made injective."""
    return ":".join(values)


@MANY
@given(st.integers(min_value=1, max_value=4).flatmap(lambda n: st.lists(st.tuples(*[parts] * n), unique=True)))
def test_distinct_parts_give_distinct_ids(tuples: list[tuple[str, ...]]) -> None:
    ids = [compose_id(*t) for t in tuples]
    assert len(set(ids)) == len(ids), sorted(zip(ids, tuples, strict=True))


@MANY
@given(st.lists(clean_parts, min_size=0, max_size=3), parts)
def test_parts_without_separator_give_the_ids_of_before(leading: list[str], last: str) -> None:
    # The last part may hold anything: ids of receipts numbered "2024:0001" stay where they are too.
    assert compose_id(*leading, last) == legacy_join(*leading, last)


def test_event_ids_written_before_are_unchanged() -> None:
    # Literal ids computed by the code before composed ids were escaped: databases hold these.
    assert derive_event_id(Channel.STORE, compose_id("LON-OXF", "sale", "R-88412")) == "store-18950f671facf26a18a6c22f"
    assert (
        derive_event_id(Channel.ECOMMERCE, compose_id("ebay", "11-09876-54321", "placed"))
        == "ecommerce-045749aeab06e9bd2cfbfa8a"
    )


# --- through the adapters -----------------------------------------------------------------------


def _event(channel: Channel, record: dict[str, object]):  # type: ignore[no-untyped-def]
    result = convert_one(channel, record, received_at=RECEIVED)
    assert isinstance(result, Accepted), result
    return result.event


def _store(store_id: str, kind: str, number: str) -> dict[str, object]:
    record: dict[str, object] = {"store_id": store_id, "occurred_at": "2024-05-01T09:00:00Z", "kind": kind}
    record["visit_id" if kind == "visit" else "receipt_id"] = number
    if kind != "visit":
        record |= {"total": "1.00", "currency": "GBP"}
    return record


def _order(marketplace: str, order_id: str, status: str, buyer_id: str = "b") -> dict[str, object]:
    return {
        "marketplace": marketplace,
        "order_id": order_id,
        "buyer_id": buyer_id,
        "occurred_at": "2024-05-01T09:00:00Z",
        "status": status,
        "total": "1.00",
        "currency": "GBP",
    }


@MANY
@given(joined_texts, st.integers(min_value=2, max_value=4))
def test_parts_that_joined_alike_get_distinct_ids(text: str, n: int) -> None:
    tuples = splits(text, n)
    ids = [compose_id(*t) for t in tuples]
    assert len(set(ids)) == len(ids), sorted(zip(ids, tuples, strict=True))


@MANY
@given(joined_texts)
def test_distinct_store_records_get_distinct_event_ids(text: str) -> None:
    records = [t for t in splits(text, 3) if t[1] in ("visit", "sale", "return")]
    events = [_event(Channel.STORE, _store(*r)) for r in records]
    assert len({e.event_id for e in events}) == len(events), [e.source.id for e in events]
    for (store_id, kind, number), event in zip(records, events, strict=True):
        if ":" not in store_id and "\\" not in store_id:
            assert event.event_id == derive_event_id(Channel.STORE, legacy_join(store_id, kind, number))


@MANY
@given(joined_texts)
def test_distinct_orders_get_distinct_event_ids(text: str) -> None:
    records = [t for t in splits(text.lower(), 3) if t[2] in ("placed", "shipped") and len(t[0]) <= 64]
    events = [_event(Channel.ECOMMERCE, _order(*r)) for r in records]
    assert len({e.event_id for e in events}) == len(events), [e.source.id for e in events]
    for (marketplace, order_id, status), event in zip(records, events, strict=True):
        if not any(c in marketplace + order_id for c in ":\\"):
            assert event.event_id == derive_event_id(Channel.ECOMMERCE, legacy_join(marketplace, order_id, status))


@MANY
@given(joined_texts)
def test_distinct_buyers_get_distinct_identifier_keys(text: str) -> None:
    buyers = [t for t in splits(text.lower(), 2) if len(t[0]) <= 64]  # the longest marketplace name
    keys = [
        _event(Channel.ECOMMERCE, _order(m, "o", "placed", buyer_id=b)).identifiers[IdentifierType.MARKETPLACE_BUYER_ID]
        for m, b in buyers
    ]
    assert len(set(keys)) == len(keys), keys
    for (marketplace, buyer_id), key in zip(buyers, keys, strict=True):
        if not any(c in marketplace for c in ":\\"):
            assert key == legacy_join(marketplace, buyer_id)


def test_two_buyers_whose_parts_share_a_colon_stay_two_customers() -> None:
    # Before: "shop:eu" + "anna" and "shop" + "eu:anna" were both "shop:eu:anna", one customer.
    events = [
        _event(Channel.ECOMMERCE, _order("shop:eu", "o-1", "placed", buyer_id="anna")),
        _event(Channel.ECOMMERCE, _order("shop", "eu:o-1", "placed", buyer_id="eu:anna")),
    ]
    assert events[0].event_id != events[1].event_id
    result = replay(events, Policies.from_settings(Settings()))
    assert len(result.profiles) == 2
    assert len({entry.customer_id for entry in result.entries.values()}) == 2


@MANY
@given(joined_texts)
def test_distinct_anonymous_source_identities_get_distinct_keys(text: str) -> None:
    events = [
        _event(Channel.STORE, _store(system, "visit", "v-1")).model_copy(
            update={"source": SourceRef(system=system, id="x"), "attributes": {ANONYMOUS_ATTRIBUTE: anonymous}}
        )
        for system, anonymous in splits(text, 2)
    ]
    keys = [anonymous_key(event) for event in events]
    assert len(set(keys)) == len(keys), keys
