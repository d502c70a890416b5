"""Property tests: the engine over any arrival order and batch split ends where the oracle does."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import Settings
from schemas.touchpoint import (
    Channel,
    EventType,
    IdentifierType,
    SourceRef,
    SurveyAnswers,
    TouchpointEvent,
    derive_event_id,
)
from streams.domain.customer import EVENT_ID, CustomerState
from streams.domain.engine import BatchResult, StateView, StitchEngine
from streams.domain.identity import customer_id_for, key_strength
from streams.domain.oracle import final_entries, replay

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = 86400.0

#: Identifier types a synthetic person may use; values are unique per person, so limits never bite.
ID_TYPES = [
    IdentifierType.CRM_ID,
    IdentifierType.LOYALTY_ID,
    IdentifierType.EMAIL,
    IdentifierType.PHONE,
    IdentifierType.WEB_USER_ID,
    IdentifierType.MARKETPLACE_BUYER_ID,
    IdentifierType.WEB_ANONYMOUS_ID,
]
KINDS = [
    EventType.PAGE_VIEW,
    EventType.SEARCH,
    EventType.PURCHASE,
    EventType.PURCHASE,
    EventType.SUPPORT_CONTACT,
    EventType.SUPPORT_CONTACT,
    EventType.SUPPORT_CONTACT,
    EventType.SURVEY,
    EventType.REVIEW,
    EventType.RETURN,
    EventType.OTHER,
    EventType.OTHER,
    EventType.DELIVERY,
]
REASONS = ["parcel late", "billing question", None]


def identifier_value(kind: IdentifierType, person: int) -> str:
    """A normalised identifier value of one person."""
    if kind is IdentifierType.EMAIL:
        return f"p{person}@example.org"
    if kind is IdentifierType.PHONE:
        return f"+4479{person:08d}"
    return f"{kind}-{person}"


@st.composite
def histories(draw: st.DrawFn, max_people: int = 5, max_events: int = 40, span_days: float = 20.0) -> list:
    """Events of synthetic people, each using 1-4 identifiers across channels."""
    people = draw(st.integers(1, max_people))
    identities = [draw(st.lists(st.sampled_from(ID_TYPES), min_size=1, max_size=4, unique=True)) for _ in range(people)]
    events = []
    for n in range(draw(st.integers(1, max_events))):
        person = draw(st.integers(0, people - 1))
        kinds = draw(st.lists(st.sampled_from(identities[person]), min_size=1, max_size=3, unique=True))
        kind = draw(st.sampled_from(KINDS))
        channel = draw(st.sampled_from(list(Channel)))
        extra: dict = {}
        if kind is EventType.PURCHASE:
            extra["amount"] = Decimal(draw(st.integers(1, 500)))
            extra["currency"] = "GBP"
        elif kind is EventType.SUPPORT_CONTACT:
            if draw(st.booleans()):
                extra["issue_id"] = f"case-{person}-{draw(st.integers(0, 1))}"
            else:
                extra["reason"] = draw(st.sampled_from(REASONS))
            extra["resolved"] = draw(st.sampled_from([True, False, None]))
            extra["transfers"] = draw(st.integers(0, 2))
        elif kind is EventType.SURVEY:
            extra["survey"] = SurveyAnswers(nps=draw(st.integers(0, 10)))
        elif kind is EventType.REVIEW:
            extra["attributes"] = {"rating": draw(st.integers(1, 5))}
        occurred = T0 + timedelta(milliseconds=draw(st.integers(0, int(span_days * DAY * 1000))))
        events.append(
            TouchpointEvent(
                event_id=derive_event_id(channel, f"{person}-{n}"),
                channel=channel,
                type=kind,
                occurred_at=occurred,
                received_at=occurred + timedelta(seconds=5),
                identifiers={k: identifier_value(k, person) for k in kinds},
                source=SourceRef(system="prop", id=f"{person}-{n}"),
                **extra,
            )
        )
    return events


def deliveries(events: list, rng: random.Random, shuffle: bool = True) -> list:
    """The events in a random arrival order, some delivered twice."""
    arrived = list(events)
    arrived += [e for e in events if rng.random() < 0.2]
    if shuffle:
        rng.shuffle(arrived)
    return arrived


def run_like_worker(engine: StitchEngine, arrived: list, rng: random.Random) -> tuple[dict, dict, list[BatchResult]]:
    """Apply ``arrived`` in random batches the way the worker does: load a partial view, write back."""
    identities: dict[str, str] = {}
    states: dict[str, str] = {}
    applied: dict[str, str] = {}  # the touchpoints table: event id -> customer id
    results = []
    watermark = None
    i = 0
    while i < len(arrived):
        size = rng.randint(1, 12)
        batch = arrived[i : i + size]
        i += size
        keys = engine.required_keys(batch)
        view = StateView(identities={k: identities[k] for k in keys if k in identities})
        view.customers = {
            cid: CustomerState.from_dict(json.loads(states[cid])) for cid in set(view.identities.values())
        }
        view.applied = {e.event_id: applied[e.event_id] for e in batch if e.event_id in applied}
        result = engine.apply(batch, view, watermark)
        watermark = result.watermark
        assert not result.too_late
        identities.update(result.identities)
        for removed in result.removed:
            del states[removed]
        for changed in result.changed:
            states[changed] = json.dumps(view.customers[changed].to_dict())
        # As the SQL write does: merges re-point the touchpoints, then the entries are upserted.
        survivors = {merge.merged_id: merge.survivor_id for merge in result.merges}
        applied = {eid: survivors.get(cid, cid) for eid, cid in applied.items()}
        applied.update((entry.event_id, entry.customer_id) for entry in result.entries)
        # The upserts already re-point every key of a merged customer: the worker's UPDATE is a no-op.
        assert not set(identities.values()) & set(result.removed)
        results.append(result)
    return identities, {cid: json.loads(row) for cid, row in states.items()}, results


def components(events: list, engine: StitchEngine) -> dict[str, list[str]]:
    """Connected components over all events' keys (union-find): customer id -> sorted event ids."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for event in events:
        keys = engine.rules.keys_of(event).keys
        root = find(keys[0])
        for key in keys[1:]:
            parent[find(key)] = root
    members: dict[str, list[str]] = {}
    for key in list(parent):
        members.setdefault(find(key), []).append(key)
    id_of = {root: customer_id_for(min(keys, key=key_strength)) for root, keys in members.items()}
    timelines: dict[str, list] = {}
    for event in events:
        cid = id_of[find(engine.rules.keys_of(event).keys[0])]
        timelines.setdefault(cid, []).append((event.occurred_at, event.event_id))
    return {cid: [eid for _, eid in sorted(items)] for cid, items in timelines.items()}


LOOSE = Settings(allowed_lateness_s=400 * DAY, dedupe_horizon_s=500 * DAY, timeline_limit=1000)


def impostors(events: list, rng: random.Random) -> list:
    """Records reusing an applied event id under identifiers of someone else (another person or a new one)."""
    people = {event.event_id: int(event.source.id.split("-")[0]) for event in events}
    copies = []
    for event in events:
        if rng.random() < 0.1:
            other = rng.choice([p for p in [*people.values(), max(people.values()) + 1] if p != people[event.event_id]])
            ids = {kind: identifier_value(kind, other) for kind in event.identifiers}
            copies.append(event.model_copy(update={"identifiers": ids}))
    return copies


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=histories(), seed=st.integers(0, 2**32))
def test_any_arrival_order_and_batching_ends_where_the_oracle_does(events: list, seed: int) -> None:
    rng = random.Random(seed)
    engine = StitchEngine(LOOSE)
    # Impostors arrive after the records whose ids they reuse: whichever arrives first holds the id.
    copies = impostors(events, rng)
    arrived = deliveries(events, rng) + copies
    identities, states, results = run_like_worker(engine, arrived, rng)
    oracle = replay(events, LOOSE)

    assert sorted(event.event_id for r in results for event, _ in r.conflicts) == sorted(e.event_id for e in copies)
    assert all(holder == oracle.entries[event.event_id].customer_id for r in results for event, holder in r.conflicts)

    assert identities == oracle.identities
    assert states == {cid: state.to_dict() for cid, state in oracle.customers.items()}
    expected = components(events, engine)
    assert {cid: [row[EVENT_ID] for row in s["timeline"]] for cid, s in states.items()} == expected
    assert oracle.timelines == expected
    assert sum(r.duplicates for r in results) == len(arrived) - len(events) - len(copies)
    # Every entry's last published version is what the final state says (revisions are complete).
    assert final_entries(results) == oracle.entries
    profiles = {p.customer_id: p for r in results for p in r.profiles if p.merged_into is None}
    assert {cid: profiles[cid] for cid in states} == oracle.profiles


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=histories(max_events=60, span_days=40.0),
    timeline_limit=st.sampled_from([6, 1000]),
    seed=st.integers(0, 2**32),
)
def test_bounded_disorder_with_pruning_ends_where_the_oracle_does(events: list, timeline_limit: int, seed: int) -> None:
    # Short horizons make pruning happen, and a short timeline truncation; arrival disorder is bounded
    # by the allowed lateness, so nothing is too late and the final states must still match.
    tight = Settings(
        allowed_lateness_s=2 * DAY,
        dedupe_horizon_s=3 * DAY,
        repeat_contact_window_s=1 * DAY,
        timeline_limit=timeline_limit,
    )
    rng = random.Random(seed)
    jitter = {e.event_id: rng.uniform(0, tight.allowed_lateness_s) for e in events}
    arrived = sorted(
        deliveries(events, rng, shuffle=False), key=lambda e: e.occurred_at.timestamp() + jitter[e.event_id]
    )
    engine = StitchEngine(tight)
    identities, states, _ = run_like_worker(engine, arrived, rng)
    oracle = replay(events, tight)
    assert identities == oracle.identities
    assert states == {cid: state.to_dict() for cid, state in oracle.customers.items()}
    # Entries are not compared here: an entry older than a merge's event time minus the lateness is
    # final, and which merges came before it in processing order differs from the oracle's.


@settings(max_examples=60, deadline=None)
@given(
    first=st.lists(st.integers(0, 10 * 86400), min_size=1, max_size=15, unique=True),
    second=st.lists(st.integers(0, 10 * 86400), min_size=1, max_size=15, unique=True),
    link_at=st.integers(0, 10 * 86400),
    seed=st.integers(0, 2**32),
)
def test_a_merge_yields_one_timeline_with_both_histories_in_event_time_order(
    first: list[int], second: list[int], link_at: int, seed: int
) -> None:
    def event(name: str, seconds: int, ids: dict, kind: EventType = EventType.PAGE_VIEW) -> TouchpointEvent:
        return TouchpointEvent(
            event_id=derive_event_id(Channel.WEB, name),
            channel=Channel.WEB,
            type=kind,
            occurred_at=T0 + timedelta(seconds=seconds),
            received_at=T0 + timedelta(seconds=seconds),
            identifiers=ids,
            source=SourceRef(system="prop", id=name),
        )

    email = {IdentifierType.EMAIL: "ann@example.org"}
    anonymous = {IdentifierType.WEB_ANONYMOUS_ID: "anon-1"}
    events = [event(f"a{s}", s, email) for s in first] + [event(f"b{s}", s, anonymous) for s in second]
    events.append(event("link", link_at, email | anonymous, EventType.IDENTIFY))
    random.Random(seed).shuffle(events)
    view = StateView()
    result = StitchEngine(LOOSE).apply(events, view, None)
    (customer,) = view.customers.values()
    assert customer.customer_id == customer_id_for("email:ann@example.org")
    expected = sorted((e.occurred_at.timestamp(), e.event_id) for e in events)
    assert [(row[0], row[EVENT_ID]) for row in customer.timeline] == expected
    assert customer.events == len(events)
    assert {m.merged_id for m in result.merges} <= {customer_id_for("web_anonymous_id:anon-1")}
