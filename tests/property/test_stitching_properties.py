"""Property tests: the stitcher over any arrival order and batch split ends where the oracle does."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import Settings
from schemas.outputs import TimelineEntry
from schemas.touchpoint import (
    Channel,
    EventType,
    IdentifierType,
    SourceRef,
    SurveyAnswers,
    TouchpointEvent,
    derive_event_id,
)
from streams.domain.customer import EVENT_ID, CustomerState, StoredEntry, is_kept, row_of
from streams.domain.identity import customer_id_for, one_by_one, repoint
from streams.domain.oracle import final_entries, replay
from streams.domain.stitching import NO_CUSTOMER, BatchResult, ManualLink, StateView, Stitcher
from streams.policies import Policies
from streams.result_rows import touchpoint_row

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
            extra["survey"] = SurveyAnswers(
                nps=draw(st.integers(0, 10)),
                csat=draw(st.none() | st.integers(1, 5)),
                ces=draw(st.none() | st.integers(1, 7)),
            )
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


def stored_of(entry: TimelineEntry) -> StoredEntry:
    """What the touchpoints table holds of an entry: the worker's row of it, its amount as the NUMERIC(18, 4)
    column gives it back."""
    row = touchpoint_row(entry, entry.received_at)._asdict()
    amount = row["amount"]
    row["amount"] = None if amount is None else amount.quantize(Decimal("0.0001"))
    return StoredEntry(**{name: row[name] for name in StoredEntry._fields})


def restore_history(needs: dict[str, float], view: StateView, table: dict[str, tuple[str | None, Any]]) -> None:
    """Read back, as the worker does from its touchpoints table (event id -> (customer id, stored entry)), the
    history ``Stitcher.history_needs`` asks for."""
    for cid, since in needs.items():
        until = view.customers[cid].complete_from
        mine = [stored for owner, stored in table.values() if owner == cid]
        rows = [row_of(s) for s in mine if since <= s.occurred_at.timestamp() < until]
        earlier = [
            (s.occurred_at.timestamp(), s.event_id)
            for s in mine
            if s.type == "purchase" and s.occurred_at.timestamp() < since
        ]
        view.customers[cid].restore([r for r in rows if is_kept(r)], max(earlier, default=None), since)


def run_like_worker(
    stitcher: Stitcher,
    arrived: list,
    rng: random.Random,
    links: Sequence[tuple[int, ManualLink]] = (),
    *,
    read_back_all: bool = False,
) -> tuple[dict, dict, list[BatchResult]]:
    """Apply ``arrived`` in random batches the way the worker does: load a partial view, read back the history
    its late events need from the touchpoints table, apply, close, write back. ``links``: merges made by hand, each
    applied by the batch that holds its position in ``arrived`` (after that batch's events). ``read_back_all``:
    read back every loaded customer's whole history instead of what ``Stitcher.history_needs`` asks for."""
    identities: dict[str, str] = {}
    states: dict[str, str] = {}
    table: dict[str, tuple[str | None, StoredEntry]] = {}  # the touchpoints table: event id -> (customer, row)
    results = []
    i = 0
    while i < len(arrived):
        size = rng.randint(1, 12)
        batch = arrived[i : i + size]
        linked = [link for at, link in links if i <= at < i + size or (at >= len(arrived) and i + size >= len(arrived))]
        i += size
        keys = stitcher.keys_of(batch)
        wanted = {k for ek in keys for k in ek.keys} | {k for link in linked for k in link.keys}
        view = StateView(identities={k: identities[k] for k in wanted if k in identities})
        view.customers = {
            cid: CustomerState.from_dict(json.loads(states[cid])) for cid in set(view.identities.values())
        }
        view.applied = {e.event_id: table[e.event_id][0] or NO_CUSTOMER for e in batch if e.event_id in table}
        if read_back_all:
            restore_history(dict.fromkeys(view.customers, 0.0), view, table)
        else:
            restore_history(stitcher.history_needs(batch, keys, view, linked), view, table)
        result = stitcher.apply(batch, view, keys, links=linked)
        stitcher.close(view, result)
        identities.update(result.identities)
        for removed in result.removed:
            del states[removed]
        for changed in result.changed:
            states[changed] = json.dumps(view.customers[changed].to_dict())
        # As the SQL write does: merges re-point the touchpoints, then the entries are upserted.
        survivors = {merge.merged_id: merge.survivor_id for merge in result.merges}
        for event_id, (owner, stored) in list(table.items()):
            if owner in survivors:
                owner = survivors[owner]
                while owner in survivors:
                    owner = survivors[owner]
                table[event_id] = (owner, stored)
        for entry in result.entries:
            table[entry.event_id] = (entry.customer_id, stored_of(entry))
        # The upserts already re-point every key of a merged customer: the worker's UPDATE is a no-op.
        assert not set(identities.values()) & set(result.removed)
        results.append(result)
    return identities, {cid: json.loads(row) for cid, row in states.items()}, results


def components(events: list, stitcher: Stitcher) -> dict[str, list[str]]:
    """Connected components over all events' keys (union-find): customer id -> sorted event ids."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for event in events:
        keys = stitcher.rules.keys_of(event).keys
        root = find(keys[0])
        for key in keys[1:]:
            parent[find(key)] = root
    members: dict[str, list[str]] = {}
    for key in list(parent):
        members.setdefault(find(key), []).append(key)
    id_of = {root: customer_id_for(min(keys, key=stitcher.rules.strength)) for root, keys in members.items()}
    timelines: dict[str, list] = {}
    for event in events:
        cid = id_of[find(stitcher.rules.keys_of(event).keys[0])]
        timelines.setdefault(cid, []).append((event.occurred_at, event.event_id))
    return {cid: [eid for _, eid in sorted(items)] for cid, items in timelines.items()}


#: The defaults, and tight ones: short lookbacks, grace and history, so that retention and restoring happen often
#: (and an engagement horizon of three weeks, so that late events fall before it and week counts are pruned).
DEFAULTS = Policies.from_settings(Settings())
TIGHT = Policies.from_settings(
    Settings(
        window_grace_s=DAY,
        issue_memory_s=3 * DAY,
        repeat_contact_window_s=DAY,
        resolution_contradiction_window_s=2 * DAY,
        timeline_limit=4,
        engagement_horizon_weeks=3,
        engagement_half_life_days=5.0,
        engagement_scale=4.0,
    )
)


#: The identifier types in the reverse of the default order: the weakest by default is the strongest here.
REVERSED = Policies.from_settings(Settings(identifier_priority=list(reversed(IdentifierType))))


def impostors(events: list, rng: random.Random) -> list:
    """Records reusing an applied event id under identifiers of someone else (another person or a new one)."""
    people = {event.event_id: int(event.source.id.split("-")[0]) for event in events}
    copies = []
    for event in events:
        if event.identifiers and rng.random() < 0.1:
            other = rng.choice([p for p in [*people.values(), max(people.values()) + 1] if p != people[event.event_id]])
            ids = {kind: identifier_value(kind, other) for kind in event.identifiers}
            copies.append(event.model_copy(update={"identifiers": ids}))
    return copies


def assert_like_the_oracle(events: list, arrived: list, copies: list, policies: Policies, rng: random.Random) -> None:
    """Run ``arrived`` like the worker and compare everything with the oracle's replay of ``events``."""
    stitcher = Stitcher(policies)
    identities, states, results = run_like_worker(stitcher, arrived, rng)
    oracle = replay(events, policies)

    assert sorted(event.event_id for r in results for event, _ in r.conflicts) == sorted(e.event_id for e in copies)
    assert all(holder == oracle.entries[event.event_id].customer_id for r in results for event, holder in r.conflicts)

    assert identities == oracle.identities
    assert states == {cid: state.to_dict() for cid, state in oracle.customers.items()}
    assert {cid: entries for cid, entries in oracle.timelines.items()} == {
        cid: ids for cid, ids in components(events, stitcher).items() if cid in oracle.timelines
    }
    assert sum(r.duplicates for r in results) == len(arrived) - len(events) - len(copies)
    # Every entry's last published version is what the oracle says (revisions are complete), whatever the
    # arrival order, the batch split, and what each state had forgotten and read back meanwhile.
    assert final_entries(results) == oracle.entries
    profiles = {p.customer_id: p for r in results for p in r.profiles if p.merged_into is None}
    assert {cid: profiles[cid] for cid in states} == oracle.profiles
    # The oracle's engagement scores come from the final timelines in one pass (``oracle.engagement_scores``), the
    # stitcher's from the week counts each state kept over its batches.
    assert {cid: profiles[cid].engagement for cid in states} == {
        cid: p.engagement for cid, p in oracle.profiles.items()
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=histories(max_events=60, span_days=120.0),
    tight=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_any_arrival_order_lateness_and_batching_ends_where_the_oracle_does(
    events: list, tight: bool, seed: int
) -> None:
    rng = random.Random(seed)
    # Impostors arrive after the records whose ids they reuse: whichever arrives first holds the id.
    copies = impostors(events, rng)
    arrived = deliveries(events, rng) + copies
    assert_like_the_oracle(events, arrived, copies, TIGHT if tight else DEFAULTS, rng)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=histories(max_events=40, span_days=60.0), seed=st.integers(0, 2**32))
def test_with_another_identifier_priority_any_arrival_order_ends_where_the_oracle_does(events: list, seed: int) -> None:
    rng = random.Random(seed)
    assert_like_the_oracle(events, deliveries(events, rng), [], REVERSED, rng)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=histories(max_events=60, span_days=90.0),
    tight=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_channel_by_channel_history_ends_where_the_oracle_does(events: list, tight: bool, seed: int) -> None:
    # What a first load of history looks like: each source system's export in turn, each in its own order
    # (sorted by time or not), with resends.
    rng = random.Random(seed)
    by_channel: dict = {}
    for event in events:
        by_channel.setdefault(event.channel, []).append(event)
    arrived = []
    for channel in rng.sample(sorted(by_channel), len(by_channel)):
        part = sorted(by_channel[channel], key=lambda e: e.occurred_at) if rng.random() < 0.5 else by_channel[channel]
        arrived += deliveries(part, rng, shuffle=rng.random() < 0.5)
    assert_like_the_oracle(events, arrived, [], TIGHT if tight else DEFAULTS, rng)


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
    def event(name: str, seconds: int, ids: dict, kind: EventType = EventType.OTHER) -> TouchpointEvent:
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
    result = Stitcher(DEFAULTS).apply(events, view)
    (customer,) = view.customers.values()
    assert customer.customer_id == customer_id_for("email:ann@example.org")
    # ``other`` entries are kept (a purchase would change their stage); the identify is not.
    expected = sorted((e.occurred_at.timestamp(), e.event_id) for e in events if e.type is EventType.OTHER)
    assert [(row[0], row[EVENT_ID]) for row in customer.history] == expected
    assert customer.events == len(events)
    assert {m.merged_id for m in result.merges} <= {customer_id_for("web_anonymous_id:anon-1")}


def _repointed_one_by_one(merges: list[tuple[str, str]]) -> tuple[list[str], dict[str, str]]:
    """What a sink that re-points every row at each merge, in order, holds after ``merges``: where each merge's
    row says its merged customer lives, and where each id's rows stored before the batch ended."""
    owner = {x: x for pair in merges for x in pair}  # the rows stored before: one per id, on that id
    rows: list[list[str]] = []  # each merge's row: [survivor], re-pointed like the others
    for merged, survivor in merges:
        owner = {x: survivor if at == merged else at for x, at in owner.items()}
        for row in rows:
            if row[0] == merged:
                row[0] = survivor
        rows.append([survivor])
    return [row[0] for row in rows], {x: at for x, at in owner.items() if at != x}


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from("abcdef")), max_size=12))
def test_repoint_leaves_what_merges_applied_one_by_one_leave(merges: list[tuple[str, str]]) -> None:
    survivors, moved = _repointed_one_by_one(merges)
    assert repoint(merges) == (survivors, moved)


@given(st.dictionaries(st.sampled_from("abcdefg"), st.sampled_from("abcdefg")))
def test_one_by_one_moves_rows_as_all_at_once(moved: dict[str, str]) -> None:
    moved = {key: target for key, target in moved.items() if key != target}
    rows = {x: x for pair in moved.items() for x in pair}  # one stored row per id, on that id
    for source, target in one_by_one(moved):  # each pair an UPDATE ... WHERE customer_id = source
        rows = {row: target if at == source else at for row, at in rows.items()}
    assert rows == {row: moved.get(row, row) for row in rows}
