"""The test oracle: the same input replayed in memory, in event-time order, with a full view.

``replay`` is a pure function of the events and the policies. The stitcher over any arrival order and
any batch split, with the history the worker restores from SQL, must end with the same customers, identity
map, entries and stages (as long as no identifier limit or merge bound bites, no age bound is set and no record reuses
another person's event id: whichever is applied first holds the id, see ``stitching``); integration tests compare
SQL contents with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from schemas.outputs import Stage
from schemas.touchpoint import TouchpointEvent
from streams.domain.customer import CustomerState
from streams.domain.engagement import EngagementPolicy, oldest_week, score, tally, week_of
from streams.domain.entry import Entry
from streams.domain.identity import NO_RULES, KeptApart, repoint
from streams.domain.profile import Profile
from streams.domain.stitching import BatchResult, ManualLink, StateView, Stitcher, StitchPolicies


@dataclass
class OracleResult:
    """What a full in-memory replay ends with."""

    #: Customer id -> final state.
    customers: dict[str, CustomerState]
    #: Identifier key -> customer id.
    identities: dict[str, str]
    #: Customer id -> its event ids, in event-time order.
    timelines: dict[str, list[str]]
    #: Customer id -> current stage.
    stages: dict[str, Stage]
    #: Customer id -> profile.
    profiles: dict[str, Profile]
    #: Event id -> final timeline entry.
    entries: dict[str, Entry]
    #: The replay's own batch result (counts of duplicates, blocked, refused, unattributed).
    result: BatchResult


def replay(
    events: Iterable[TouchpointEvent],
    policies: StitchPolicies,
    apart: KeptApart = NO_RULES,
    links: Sequence[ManualLink] = (),
) -> OracleResult:
    """Replay ``events`` sorted by (occurred_at, event_id) through one stitcher over a full view, with the
    never-link rules ``apart``, then the merges made by hand ``links``."""
    ordered = sorted(events, key=lambda event: (event.occurred_at, event.event_id))
    view = StateView()
    stitcher = Stitcher(policies)
    stitcher.apart = apart
    result = stitcher.apply(ordered, view, links=links)
    stitcher.close(view, result)
    entries = final_entries([result])
    timelines: dict[str, list[str]] = {}
    for entry in sorted(entries.values(), key=lambda e: (e.occurred_at, e.event_id)):
        if entry.customer_id is not None:
            timelines.setdefault(entry.customer_id, []).append(entry.event_id)
    # The engagement score from the final timelines in one pass, not from the states' week counts.
    engagement = engagement_scores(entries.values(), policies.customer.engagement)
    profiles = {
        profile.customer_id: replace(profile, engagement=engagement.get(profile.customer_id, 0.0))
        for profile in result.profiles
        if profile.merged_into is None
    }
    return OracleResult(
        customers=view.customers,
        identities=view.identities,
        timelines=timelines,
        stages={cid: state.stage(stitcher.policy) for cid, state in view.customers.items()},
        profiles=profiles,
        entries=entries,
        result=result,
    )


def engagement_scores(entries: Iterable[Entry], policy: EngagementPolicy) -> dict[str, float]:
    """Each customer's engagement score from all its timeline entries at once: every entry's tally summed per week
    over the horizon of the customer's latest entry, then scored."""
    weeks: dict[str, dict[int, list[int]]] = {}
    latest: dict[str, int] = {}
    for entry in entries:
        customer_id = entry.customer_id
        if customer_id is None:
            continue
        week = week_of(entry.occurred_at.timestamp())
        latest[customer_id] = max(latest.get(customer_id, week), week)
        survey = entry.survey
        answers = None if survey is None else [survey.nps, survey.csat, survey.ces]
        counts = tally(entry.type.value, answers, (m.value for m in entry.moments))
        if counts is not None:
            held = weeks.setdefault(customer_id, {}).setdefault(week, [0] * len(counts))
            for i, n in enumerate(counts):
                held[i] += n
    scores = {}
    for customer_id, last in latest.items():
        kept = weeks.get(customer_id, {})
        rows = [[week, *kept[week]] for week in sorted(kept) if week >= oldest_week(last, policy)]
        scores[customer_id] = score(rows, last, policy)
    return scores


def final_entries(results: Iterable[BatchResult]) -> dict[str, Entry]:
    """The latest version of every entry over successive batch results, re-pointed through their merges.

    This is what a sink that applies each batch's merges, then upserts its entries by event id, ends up holding: a
    merge re-points the entries stored before it, not those of a customer id a later split forms again.
    """
    latest: dict[str, Entry] = {}
    for result in results:
        if result.merges:
            moved = repoint([(change.merged_id, change.survivor_id) for change in result.merges]).moved
            for event_id, entry in latest.items():
                if entry.customer_id in moved:
                    latest[event_id] = replace(entry, customer_id=moved[entry.customer_id])
        for entry in result.entries:
            latest[entry.event_id] = entry
    return latest
