"""Property tests of the merge bound (``CXSTREAM_MERGE_MAX_TOUCHPOINTS``): with an identifier many people share
(a till's house loyalty card) and a bound that bites, the history ``Stitcher.history_needs`` asks for is enough.

When the bound bites, which links are refused depends on arrival order (as with per-type limits), so the result is
not the oracle's. What must hold, for the same arrival order and batches:

- every batch read back what its merges and events need: for customers merged into one, each from the younger
  side's first event on (minus the span); for an event, its customer from the event on (minus the span). Leaving a
  customer over the bound out of a merge's history is only right because the merge is refused;
- reading back only what ``history_needs`` names, as the worker does, ends exactly where reading back every
  loaded customer's whole history does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import Settings
from schemas.touchpoint import IdentifierType, TouchpointEvent
from streams.domain.identity import EventKeys
from streams.domain.oracle import final_entries
from streams.domain.stitching import BatchResult, ManualLink, StateView, Stitcher, _may_be_kept
from streams.policies import Policies
from tests.property.test_stitching_properties import DAY, deliveries, histories, run_like_worker

#: Identifiers several people's events carry: a till's house loyalty cards, a family tablet, a shared inbox.
SHARED = [
    {IdentifierType.LOYALTY_ID: "HOUSE-1"},
    {IdentifierType.LOYALTY_ID: "HOUSE-2"},
    {IdentifierType.WEB_ANONYMOUS_ID: "family-tablet"},
    {IdentifierType.EMAIL: "family@example.org"},
]
#: Short lookbacks, grace and history (as ``test_stitching_properties.TIGHT``): states forget early, so merges
#: need their history read back.
TIGHT = {
    "window_grace_s": DAY,
    "issue_memory_s": 3 * DAY,
    "repeat_contact_window_s": DAY,
    "resolution_contradiction_window_s": 2 * DAY,
    "timeline_limit": 4,
    "engagement_horizon_weeks": 3,
    "engagement_half_life_days": 5.0,
    "engagement_scale": 4.0,
}


class Audited(Stitcher):
    """A stitcher that checks, after each batch, that what ``history_needs`` asked for covers what the batch's
    merges and events needed (see the module docstring)."""

    def history_needs(
        self,
        events: Sequence[TouchpointEvent],
        keys: Sequence[EventKeys],
        view: StateView,
        links: Sequence[ManualLink] = (),
    ) -> dict[str, float]:
        self.asked = super().history_needs(events, keys, view, links)
        self.before = {cid: (state.first_seen, state.complete_from) for cid, state in view.customers.items()}
        self.new = [event for event in events if event.event_id not in view.applied]
        return self.asked

    def apply(self, events: Sequence[TouchpointEvent], view: StateView, *args: object, **kwargs: object) -> BatchResult:
        result = super().apply(events, view, *args, **kwargs)  # type: ignore[arg-type]
        span, before = self.policy.span_s, self.before
        sides: dict[str, set[str]] = {}  # final customer -> the customers of the batch's start that it holds
        for cid in before:
            sides.setdefault(result.removed.get(cid, cid), set()).add(cid)
        needed: dict[str, float] = {}
        for members in sides.values():
            if len(members) > 1:
                since = sorted(before[cid][0] for cid in members)[1] - span
                needed.update(dict.fromkeys(members, since))
        final = {entry.event_id: entry.customer_id for entry in result.entries}
        first_seen = {event.event_id: event for event in self.new}
        for event_id, event in first_seen.items():
            customer_id = final.get(event_id)
            if customer_id is not None and _may_be_kept(event):
                since = event.occurred_at.timestamp() - span
                for cid in sides.get(customer_id, ()):
                    needed[cid] = min(needed.get(cid, since), since)
        for cid, since in needed.items():
            if since < before[cid][1]:
                assert self.asked.get(cid, float("inf")) <= since, f"{cid} needed from {since}, asked {self.asked}"
        return result


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=histories(max_people=6, max_events=60, span_days=90.0),
    shared=st.floats(0.0, 0.6),
    bound=st.integers(1, 25),
    tight=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_what_history_needs_reads_back_is_enough_when_the_merge_bound_bites(
    events: list, shared: float, bound: int, tight: bool, seed: int
) -> None:
    rng = random.Random(seed)
    events = [
        e.model_copy(update={"identifiers": e.identifiers | rng.choice(SHARED)}) if rng.random() < shared else e
        for e in events
    ]
    arrived = deliveries(events, rng)
    policies = Policies.from_settings(Settings(merge_max_touchpoints=bound, **(TIGHT if tight else {})))  # type: ignore[arg-type]

    batches = rng.getrandbits(32)
    needed = run_like_worker(Audited(policies), arrived, random.Random(batches))
    everything = run_like_worker(Stitcher(policies), arrived, random.Random(batches), read_back_all=True)

    identities, states, results = needed
    assert identities == everything[0]
    assert final_entries(results) == final_entries(everything[2])
    assert states.keys() == everything[1].keys()
    profiles = [
        {p.customer_id: p for r in run[2] for p in r.profiles if p.merged_into is None} for run in (needed, everything)
    ]
    assert {cid: profiles[0][cid] for cid in states} == {cid: profiles[1][cid] for cid in states}
    assert sum(r.over_bound for r in results) == sum(r.over_bound for r in everything[2])
