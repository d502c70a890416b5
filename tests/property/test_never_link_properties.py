"""Property tests of never-link rules: no customer ever holds two keys a rule keeps apart, whatever the arrival
order; and in arrival order by event time, any batch split and redeliveries end where the oracle does."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.touchpoint import Channel, EventType, IdentifierType, SourceRef, TouchpointEvent, derive_event_id
from streams.domain.identifiers import identifier_key
from streams.domain.identity import KeptApart
from streams.domain.oracle import final_entries, replay
from streams.domain.stitching import ManualLink, StateView, Stitcher
from tests.property.test_stitching_properties import (
    DEFAULTS,
    T0,
    TIGHT,
    deliveries,
    histories,
    identifier_value,
    run_like_worker,
)

#: Each person's own identifiers; devices (anonymous ids) come from a small pool that people share.
OWN_TYPES = [IdentifierType.EMAIL, IdentifierType.PHONE, IdentifierType.LOYALTY_ID, IdentifierType.CRM_ID]
DEVICES = 3


@st.composite
def shared_devices(draw: st.DrawFn, max_people: int = 4, max_events: int = 40) -> tuple[list, KeptApart]:
    """Events of people who share devices, and never-link rules between some of their own identifiers."""
    people = draw(st.integers(2, max_people))
    owns = [draw(st.lists(st.sampled_from(OWN_TYPES), min_size=1, max_size=3, unique=True)) for _ in range(people)]
    events = []
    for n in range(draw(st.integers(2, max_events))):
        person = draw(st.integers(0, people - 1))
        ids = {k: identifier_value(k, person) for k in draw(st.lists(st.sampled_from(owns[person]), max_size=2))}
        if not ids or draw(st.booleans()):
            ids[IdentifierType.WEB_ANONYMOUS_ID] = f"device-{draw(st.integers(0, DEVICES - 1))}"
        kind = draw(st.sampled_from([EventType.PAGE_VIEW, EventType.PURCHASE, EventType.SUPPORT_CONTACT]))
        extra: dict = {"amount": 10, "currency": "GBP"} if kind is EventType.PURCHASE else {}
        occurred = T0 + timedelta(seconds=draw(st.integers(0, 20 * 86400)))
        events.append(
            TouchpointEvent(
                event_id=derive_event_id(Channel.WEB, f"{person}-{n}"),
                channel=Channel.WEB,
                type=kind,
                occurred_at=occurred,
                received_at=occurred,
                identifiers=ids,
                source=SourceRef(system="prop", id=f"{person}-{n}"),
                **extra,
            )
        )
    keys = sorted({identifier_key(k, identifier_value(k, p)) for p in range(people) for k in owns[p]})
    pairs = draw(st.lists(st.tuples(st.sampled_from(keys), st.sampled_from(keys)), min_size=1, max_size=4))
    return events, KeptApart([(a, b) for a, b in pairs if a != b])


def assert_no_customer_holds_keys_kept_apart(identities: dict[str, str], apart: KeptApart) -> None:
    for key, others in apart.partners.items():
        for other in others:
            if key in identities and other in identities:
                assert identities[key] != identities[other], (key, other)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=shared_devices(), tight=st.booleans(), seed=st.integers(0, 2**32))
def test_in_event_time_order_any_batch_split_ends_where_the_oracle_does(case: tuple, tight: bool, seed: int) -> None:
    events, apart = case
    rng = random.Random(seed)
    policies = TIGHT if tight else DEFAULTS
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.event_id))
    # Resends come after the first delivery: they are duplicates and link nothing.
    arrived = ordered + [e for e in ordered if rng.random() < 0.2]
    stitcher = Stitcher(policies)
    stitcher.apart = apart
    identities, states, results = run_like_worker(stitcher, arrived, rng)
    oracle = replay(events, policies, apart)
    assert identities == oracle.identities
    assert states == {cid: state.to_dict() for cid, state in oracle.customers.items()}
    assert final_entries(results) == oracle.entries
    assert sum(r.apart for r in results) == oracle.result.apart
    assert_no_customer_holds_keys_kept_apart(identities, apart)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=shared_devices(), tight=st.booleans(), seed=st.integers(0, 2**32))
def test_in_any_arrival_order_no_customer_holds_keys_kept_apart(case: tuple, tight: bool, seed: int) -> None:
    events, apart = case
    rng = random.Random(seed)
    arrived = list(events) + [e for e in events if rng.random() < 0.2]
    rng.shuffle(arrived)
    stitcher = Stitcher(TIGHT if tight else DEFAULTS)
    stitcher.apart = apart
    identities, states, results = run_like_worker(stitcher, arrived, rng)
    assert_no_customer_holds_keys_kept_apart(identities, apart)
    # Every event is on exactly one timeline (or none, when it carried no usable key), once.
    owners = {entry.event_id: entry.customer_id for entry in final_entries(results).values()}
    assert set(owners) == {e.event_id for e in events}
    assert sum(state["counts"]["events"] for state in states.values()) == len(events)


def test_a_device_two_people_share_stays_with_the_first_seen_on_it_and_the_people_stay_apart() -> None:
    ann, bob = "email:ann@example.org", "email:bob@example.org"

    def seen(name: str, minute: int, email: str) -> TouchpointEvent:
        at = T0 + timedelta(minutes=minute)
        return TouchpointEvent(
            event_id=derive_event_id(Channel.WEB, name),
            channel=Channel.WEB,
            type=EventType.PAGE_VIEW,
            occurred_at=at,
            received_at=at,
            identifiers={IdentifierType.EMAIL: email, IdentifierType.WEB_ANONYMOUS_ID: "family-tablet"},
            source=SourceRef(system="prop", id=name),
        )

    events = [seen("a", 1, "ann@example.org"), seen("b", 2, "bob@example.org")]
    for apart, customers in ((KeptApart(), 1), (KeptApart([(ann, bob)]), 2)):
        stitcher = Stitcher(DEFAULTS)
        stitcher.apart = apart
        view = StateView()
        result = stitcher.apply(events, view)
        assert len(view.customers) == customers
        if apart:
            assert view.identities["web_anonymous_id:family-tablet"] == view.identities[ann]
            assert result.kept_apart == {events[1].event_id: ["web_anonymous_id:family-tablet"]}
            assert result.apart == 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=histories(max_events=40, span_days=30.0),
    tight=st.booleans(),
    seed=st.integers(0, 2**32),
    picks=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)), max_size=4),
)
def test_merges_made_by_hand_at_any_point_of_any_arrival_order_end_where_the_oracle_does(
    events: list, tight: bool, seed: int, picks: list
) -> None:
    # Each person's identifiers are their own (no event links two people): merges by hand are what links them,
    # wherever in the stream they are applied, and the end is the oracle's. Without type limits: a merge by hand
    # may give a customer two CRM ids, after which a limit would refuse later links (first come, first served).
    rng = random.Random(seed)
    policies = replace(TIGHT if tight else DEFAULTS, identity=replace(DEFAULTS.identity, limits={}))
    keys = sorted({key for event in events for key in Stitcher(policies).keys_of([event])[0].keys})
    arrived = deliveries(events, rng)
    # A merge names two existing customers (the command finds them first): it comes after both keys arrived.
    first_seen: dict[str, int] = {}
    for position, event in enumerate(arrived):
        for key in Stitcher(policies).keys_of([event])[0].keys:
            first_seen.setdefault(key, position)
    links = []
    for n, (a, b, at) in enumerate(picks):
        pair = (keys[a % len(keys)], keys[b % len(keys)])
        at = max(at % (len(arrived) + 1), *(first_seen[key] for key in pair))
        links.append((at, ManualLink(f"m-{n}", pair, T0)))
    links = [(at, link) for at, link in links if link.keys[0] != link.keys[1]]
    stitcher = Stitcher(policies)
    identities, states, results = run_like_worker(stitcher, arrived, rng, links)
    # In the oracle, every merge comes after every event; a merge's time (T0) is before them all: equal either way.
    oracle = replay(events, policies, links=[link for _, link in links])
    assert identities == oracle.identities
    assert states == {cid: state.to_dict() for cid, state in oracle.customers.items()}
    assert final_entries(results) == oracle.entries
