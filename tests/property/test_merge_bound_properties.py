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
from datetime import timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import Settings
from schemas.touchpoint import Channel, EventType, IdentifierType, SourceRef, TouchpointEvent, derive_event_id
from streams.domain.identity import EventKeys
from streams.domain.oracle import final_entries
from streams.domain.stitching import BatchResult, ManualLink, StateView, Stitcher, _may_be_kept
from streams.policies import Policies
from tests.property.test_split_properties import SplitWorker
from tests.property.test_stitching_properties import DAY, T0, deliveries, histories, run_like_worker

#: Identifiers several people's events carry: a till's house loyalty cards, a family tablet, a shared inbox, a
#: shared account and a kiosk's login.
SHARED = [
    {IdentifierType.LOYALTY_ID: "HOUSE-1"},
    {IdentifierType.LOYALTY_ID: "HOUSE-2"},
    {IdentifierType.WEB_ANONYMOUS_ID: "family-tablet"},
    {IdentifierType.EMAIL: "family@example.org"},
    # Of types limited to one a customer: links refused by a type limit next to those refused by the bound.
    {IdentifierType.CRM_ID: "shared-account"},
    {IdentifierType.WEB_USER_ID: "kiosk-login"},
]


def sharing(events: list, share: float, rng: random.Random) -> list:
    """The events, ``share`` of them also carrying one of the ``SHARED`` identifiers."""
    return [
        e.model_copy(update={"identifiers": e.identifiers | rng.choice(SHARED)}) if rng.random() < share else e
        for e in events
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
    arrived = deliveries(sharing(events, shared, rng), rng)
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


# --- cases a review found: each failed before the fix ---------------------------------------------------------------

_serial = iter(range(10**6))


def touch(day: float, ids: dict, kind: EventType = EventType.PURCHASE) -> TouchpointEvent:
    """A touchpoint ``day`` days after T0: a purchase unless ``kind`` says otherwise."""
    n = next(_serial)
    at = T0 + timedelta(days=day)
    extra: dict = {"amount": Decimal(10), "currency": "GBP"} if kind is EventType.PURCHASE else {}
    return TouchpointEvent(
        event_id=derive_event_id(Channel.PHONE, f"m{n}"),
        channel=Channel.PHONE,
        type=kind,
        occurred_at=at,
        received_at=at,
        identifiers=ids,
        source=SourceRef(system="test", id=f"m{n}"),
        **extra,
    )


class Batches:
    """Batch sizes for ``run_like_worker``: each history event alone, then the batch under test at once."""

    def __init__(self, history: int, batch: int) -> None:
        self.sizes = [1] * history + [batch]

    def randint(self, _low: int, _high: int) -> int:
        return self.sizes.pop(0)


def assert_reads_back_enough(policies: Policies, history: list, batch: list) -> None:
    """Apply ``history`` an event a batch, then ``batch`` at once: what was read back covers the batch's merges and
    events (``Audited``), and the entries equal those of reading every history back whole."""
    arrived = history + batch
    needed = run_like_worker(Audited(policies), arrived, Batches(len(history), len(batch)))  # type: ignore[arg-type]
    everything = run_like_worker(
        Stitcher(policies),
        arrived,
        Batches(len(history), len(batch)),  # type: ignore[arg-type]
        read_back_all=True,
    )
    assert final_entries(needed[2]) == final_entries(everything[2])


def test_keys_a_type_limit_keeps_from_a_customer_over_the_bound_may_link_other_customers() -> None:
    house = {IdentifierType.EMAIL: "house@example.org"}
    history = [touch(d, {IdentifierType.PHONE: "+441"}) for d in (0, 20)]
    history += [touch(d, {IdentifierType.LOYALTY_ID: "B"}) for d in (1, 21)]
    own = {IdentifierType.PHONE: "+440", IdentifierType.WEB_USER_ID: "wH", IdentifierType.MARKETPLACE_BUYER_ID: "mH"}
    history += [touch(d, house | own, EventType.SUPPORT_CONTACT) for d in range(0, 40, 5)]
    batch = [
        # x and y are refused by the house customer's limits, and then link two other customers.
        touch(41, house | {IdentifierType.WEB_USER_ID: "x"}, EventType.SUPPORT_CONTACT),
        touch(
            41.05, {IdentifierType.PHONE: "+440", IdentifierType.MARKETPLACE_BUYER_ID: "y"}, EventType.SUPPORT_CONTACT
        ),
        touch(41.1, {IdentifierType.PHONE: "+441", IdentifierType.WEB_USER_ID: "x"}, EventType.SUPPORT_CONTACT),
        touch(
            41.2, {IdentifierType.LOYALTY_ID: "B", IdentifierType.MARKETPLACE_BUYER_ID: "y"}, EventType.SUPPORT_CONTACT
        ),
        touch(
            41.3, {IdentifierType.WEB_USER_ID: "x", IdentifierType.MARKETPLACE_BUYER_ID: "y"}, EventType.SUPPORT_CONTACT
        ),
    ]
    limits = {"crm_id": 1, "web_user_id": 1, "marketplace_buyer_id": 1, "web_anonymous_id": 50}
    settings = Settings(merge_max_touchpoints=7, identifier_limits=limits, **TIGHT)  # type: ignore[arg-type]
    assert_reads_back_enough(Policies.from_settings(settings), history, batch)


def test_a_key_new_to_the_graph_that_a_customer_over_the_bound_takes_brings_later_events_to_it() -> None:
    history = [touch(d, {IdentifierType.CRM_ID: "ca", IdentifierType.EMAIL: "a@example.org"}) for d in (0, 30)]
    history += [touch(d, {IdentifierType.WEB_ANONYMOUS_ID: "kiosk"}) for d in range(0, 40, 5)]
    batch = [
        # A (the first owned key's customer) is refused by the crm_id limit: the kiosk's customer takes x.
        touch(
            40,
            {
                IdentifierType.CRM_ID: "x",
                IdentifierType.EMAIL: "a@example.org",
                IdentifierType.WEB_ANONYMOUS_ID: "kiosk",
            },
            EventType.PAGE_VIEW,
        ),
        touch(12, {IdentifierType.CRM_ID: "x"}),  # late: goes to the kiosk's customer
    ]
    settings = Settings(merge_max_touchpoints=5, **TIGHT)  # type: ignore[arg-type]
    assert_reads_back_enough(Policies.from_settings(settings), history, batch)


class ReadingBackAll(Stitcher):
    """A stitcher whose batches read back every loaded customer's whole history (the reference)."""

    def history_needs(self, events: object, keys: object, view: StateView, *_: object) -> dict[str, float]:  # type: ignore[override]
        return dict.fromkeys(view.customers, 0.0)


def split_then(stitcher: Stitcher, history: list, moved: str, batch: list, kept: str | None = None) -> SplitWorker:
    """Apply ``history`` an event a batch, then split ``moved`` off its customer (the one holding ``kept``, when
    given) in the batch of ``batch``."""
    worker = SplitWorker(Policies.from_settings(Settings()))
    worker.stitcher = stitcher
    for event in history:
        worker.run([event])
    worker.run(batch, splits=[worker.split_of("split-1", worker.identities[kept or moved], [moved])])
    return worker


def test_a_customer_over_the_merge_bound_that_the_batch_splits_may_merge_again() -> None:
    # The tablet's customer (Ann and Bob, 7 touchpoints) is over the bound of 5; Bob's piece (3) is not, and the
    # batch that splits him off links him to Carol (2).
    ann, bob = {IdentifierType.EMAIL: "ann@example.org"}, {IdentifierType.EMAIL: "bob@example.org"}
    tablet, carol = {IdentifierType.WEB_ANONYMOUS_ID: "tablet"}, {IdentifierType.PHONE: "+447700900001"}
    history = [
        touch(3, carol, EventType.SUPPORT_CONTACT),
        touch(30, carol),
        touch(0, ann | tablet),
        touch(1, bob | tablet),
        touch(3.5, bob, EventType.SUPPORT_CONTACT),
        touch(10, bob),
        touch(15, ann),
        touch(20, ann),
        touch(25, ann),
    ]
    link = [touch(41, bob | carol)]
    policies = Policies.from_settings(Settings(merge_max_touchpoints=5, **TIGHT))  # type: ignore[arg-type]
    needed = split_then(Stitcher(policies), history, "email:bob@example.org", link)
    everything = split_then(ReadingBackAll(policies), history, "email:bob@example.org", link)
    assert len(needed.results[-1].merges) == 1
    assert final_entries(needed.results) == final_entries(everything.results)


def test_a_split_applies_its_customers_merges_by_hand_again_whatever_the_bound() -> None:
    x, y, z = (
        {IdentifierType.EMAIL: "x@example.org"},
        {IdentifierType.PHONE: "+447700900002"},
        {IdentifierType.WEB_ANONYMOUS_ID: "z"},
    )
    worker = SplitWorker(Policies.from_settings(Settings(merge_max_touchpoints=5)))
    for event in [touch(1, x), touch(2, y), touch(3, y)]:
        worker.run([event])
    assert (
        len(worker.run([], links=[ManualLink("merge-1", ("email:x@example.org", "phone:+447700900002"), T0)]).merges)
        == 1
    )
    for event in [touch(4, x), touch(5, x), touch(6, x), touch(7, x | z)]:  # 8 touchpoints now, over the bound
        worker.run([event])
    customer = worker.identities["email:x@example.org"]
    result = worker.run([], splits=[worker.split_of("split-1", customer, ["web_anonymous_id:z"])])
    assert worker.identities["email:x@example.org"] == worker.identities["phone:+447700900002"], "still merged"
    assert not result.too_large


def test_a_split_does_not_apply_again_a_merge_by_hand_the_bound_refused() -> None:
    # X (3 touchpoints) and S (7) were asked to merge by hand: refused by the bound of 5, yet marked applied. A
    # split of X in a batch that loads S must not merge them now, unbounded.
    s = {IdentifierType.PHONE: "+447700900009"}
    x, x2 = {IdentifierType.EMAIL: "x@example.org"}, {IdentifierType.WEB_USER_ID: "x2"}
    history = [touch(d, s) for d in range(0, 70, 10)]
    history += [touch(3, x | x2, EventType.SUPPORT_CONTACT), touch(12, x), touch(41, x2)]
    link = ManualLink("merge-1", ("email:x@example.org", "phone:+447700900009"), T0)
    page = touch(75, s, EventType.PAGE_VIEW)  # loads S in the split's batch
    policies = Policies.from_settings(Settings(merge_max_touchpoints=5, **TIGHT))  # type: ignore[arg-type]

    def run(stitcher: Stitcher) -> SplitWorker:
        worker = SplitWorker(Policies.from_settings(Settings()))
        worker.stitcher = stitcher
        for event in history:
            worker.run([event])
        assert worker.run([], links=[link]).too_large == {"merge-1": ["phone:+447700900009"]}
        split = worker.split_of("split-1", worker.identities["email:x@example.org"], ["web_user_id:x2"])
        assert list(split.links) == [link], "the sink gives every applied merge naming one of the customer's keys"
        worker.run([page], splits=[split])
        return worker

    needed, everything = run(Stitcher(policies)), run(ReadingBackAll(policies))
    assert needed.identities["email:x@example.org"] != needed.identities["phone:+447700900009"]
    assert final_entries(needed.results) == final_entries(everything.results)


def test_a_key_a_split_frees_is_new_to_the_graph_for_the_batch() -> None:
    # X = {k, m, f}, f only ever seen beside m. Splitting m off frees f, which S (over the bound) then takes, and a
    # late purchase carrying f goes to S: S's history must be read back for it.
    s = {IdentifierType.LOYALTY_ID: "S"}
    k, m = {IdentifierType.EMAIL: "k@example.org"}, {IdentifierType.PHONE: "+447700900003"}
    f = {IdentifierType.WEB_ANONYMOUS_ID: "f"}
    history = [touch(d, s) for d in range(0, 70, 10)]
    history += [touch(1, k | m, EventType.PAGE_VIEW), touch(2, m | f, EventType.PAGE_VIEW)]
    batch = [touch(100, s | f, EventType.PAGE_VIEW), touch(33, f)]
    policies = Policies.from_settings(Settings(merge_max_touchpoints=5, **TIGHT))  # type: ignore[arg-type]
    needed = split_then(Stitcher(policies), history, "phone:+447700900003", batch, kept="email:k@example.org")
    everything = split_then(ReadingBackAll(policies), history, "phone:+447700900003", batch, kept="email:k@example.org")
    assert needed.identities["web_anonymous_id:f"] == needed.identities["loyalty_id:S"]
    assert final_entries(needed.results) == final_entries(everything.results)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=histories(max_people=5, max_events=50, span_days=90.0),
    shared=st.floats(0.0, 0.6),
    bound=st.integers(2, 15),
    seed=st.integers(0, 2**32),
)
def test_with_splits_and_merges_by_hand_in_the_batches_what_history_needs_reads_back_is_enough(
    events: list, shared: float, bound: int, seed: int
) -> None:
    # Splits of random customers and merges by hand of random pairs, in the batches of new events (as a worker
    # takes them): the batches read back only what history_needs names, or every loaded history, and end alike.
    rng = random.Random(seed)
    arrived = deliveries(sharing(events, shared, rng), rng)
    policies = Policies.from_settings(Settings(merge_max_touchpoints=bound, **TIGHT))  # type: ignore[arg-type]
    needed, everything = SplitWorker(policies), SplitWorker(policies)
    everything.stitcher = ReadingBackAll(policies)
    i = n = 0
    while i < len(arrived):
        batch = arrived[i : i + rng.randint(1, 10)]
        i += len(batch)
        splits: list[tuple[str, list[str]]] = []
        links: list[ManualLink] = []
        customers = sorted(set(everything.identities.values()))
        several = [cid for cid in customers if len(everything.keys_of(cid)) > 1]
        if several and rng.random() < 0.3:
            customer_id = rng.choice(several)
            keys = everything.keys_of(customer_id)
            splits.append((customer_id, rng.sample(keys, rng.randint(1, len(keys) - 1))))
        if len(customers) > 1 and rng.random() < 0.2:
            x, y = rng.sample(customers, 2)
            links.append(ManualLink(f"merge-{n}", (everything.keys_of(x)[0], everything.keys_of(y)[0]), T0))
        for worker in (needed, everything):
            worker.run(
                batch,
                links=links,
                splits=[worker.split_of(f"split-{n}", customer_id, moved) for customer_id, moved in splits],
            )
        n += 1
    assert needed.identities == everything.identities
    assert final_entries(needed.results) == final_entries(everything.results)
