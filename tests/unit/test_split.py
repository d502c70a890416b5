"""Unit tests of splits made by hand (``Stitcher.apply(splits=)``): two people sharing a device, merged into one
customer, split apart again; checked against the oracle's replay under the never-link rules the split stores."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from schemas.outputs import IdentityChange
from schemas.touchpoint import Channel, EventType, IdentifierType, SourceRef, TouchpointEvent, derive_event_id
from streams.domain.customer import EVENT_ID
from streams.domain.identity import KeptApart, customer_id_for
from streams.domain.oracle import OracleResult, final_entries, replay
from streams.domain.stitching import BatchResult, ManualLink, Split, StateView, Stitcher
from tests.property.test_split_properties import Sink, cells_of, kept_apart_pairs, population, stored_events
from tests.property.test_stitching_properties import DEFAULTS, T0

ANN, BOB, TAB = "email:ann@example.org", "email:bob@example.org", "web_anonymous_id:family-tablet"
CRM = "crm_id:crm-7"
C_ANN, C_BOB, C_CRM = customer_id_for(ANN), customer_id_for(BOB), customer_id_for(CRM)


def ev(name: str, minute: int, ids: dict, kind: EventType = EventType.PAGE_VIEW, **fields: object) -> TouchpointEvent:
    at = T0 + timedelta(minutes=minute)
    return TouchpointEvent(
        event_id=derive_event_id(Channel.WEB, name),
        channel=Channel.WEB,
        type=kind,
        occurred_at=at,
        received_at=at,
        identifiers=ids,
        source=SourceRef(system="unit", id=name),
        **fields,
    )


ann = {IdentifierType.EMAIL: "ann@example.org"}
bob = {IdentifierType.EMAIL: "bob@example.org"}
tab = {IdentifierType.WEB_ANONYMOUS_ID: "family-tablet"}
#: Ann and Bob on the family tablet: one customer. Bob's purchase comes before Ann's (a split changes the gap of
#: Ann's), and the tablet's support contact and Bob's are one issue (a split renumbers Bob's).
EVENTS = [
    ev("a", 1, ann | tab),
    ev("b", 2, bob | tab),
    ev("c", 3, bob, EventType.PURCHASE, amount=10, currency="GBP"),
    ev("d", 4, tab, EventType.SUPPORT_CONTACT, issue_id="case-1"),
    ev("e", 5, ann, EventType.PURCHASE, amount=20, currency="GBP"),
    ev("f", 6, bob, EventType.SUPPORT_CONTACT, issue_id="case-1", resolved=True),
]
ID = {event.source.id: event.event_id for event in EVENTS}


class Run:
    """One stitcher over a full view, with what the sinks hold."""

    def __init__(self) -> None:
        self.stitcher = Stitcher(DEFAULTS)
        self.view = StateView()
        self.sink = Sink(DEFAULTS.metrics)
        self.results: list[BatchResult] = []
        self.applied: dict[str, TouchpointEvent] = {}
        self.pairs: list[tuple[str, str]] = []

    def apply(self, events: Sequence[TouchpointEvent] = (), **kwargs: object) -> BatchResult:
        result = self.stitcher.apply(events, self.view, **kwargs)  # type: ignore[arg-type]
        self.stitcher.close(self.view, result)
        self.sink.write(result)
        self.results.append(result)
        for event in events:
            self.applied.setdefault(event.event_id, event)
        return result

    def split(
        self, customer_id: str, moved: Sequence[str], links: Sequence[ManualLink] = (), **kwargs: object
    ) -> Split:
        """The split the worker builds: moved x kept stored as never-link rules first, then every touchpoint."""
        keys = sorted(key for key, owner in self.view.identities.items() if owner == customer_id)
        self.pairs += kept_apart_pairs(keys, moved)
        self.stitcher.apart = KeptApart(self.pairs)
        mine = [e for e in self.applied.values() if self.sink.entries[e.event_id].customer_id == customer_id]
        return Split("split-1", customer_id, tuple(moved), T0, stored_events(self.stitcher, mine), links)

    def assert_like(self, oracle: OracleResult) -> None:
        assert self.view.identities == oracle.identities
        assert {c: s.to_dict() for c, s in self.view.customers.items()} == {
            c: s.to_dict() for c, s in oracle.customers.items()
        }
        assert self.sink.entries == oracle.entries
        # Original entries aggregated, then the split's replaced versions retracted and its entries added: the
        # cells of the oracle's population (customer, channel and overall scopes).
        assert population(self.sink.cells) == cells_of(oracle.entries.values(), DEFAULTS.metrics)


def test_two_people_sharing_a_device_split_apart_end_where_the_oracle_does() -> None:
    run = Run()
    before = run.apply(EVENTS)
    assert set(run.view.customers) == {C_ANN}
    split = run.split(C_ANN, [BOB])
    assert sorted(run.pairs) == [(BOB, ANN), (BOB, TAB)]
    result = run.apply(splits=[split])

    oracle = replay(EVENTS, DEFAULTS, KeptApart(run.pairs))
    run.assert_like(oracle)
    assert set(run.view.customers) == {C_ANN, C_BOB}
    assert oracle.timelines[C_BOB] == [ID["b"], ID["c"], ID["f"]]
    assert final_entries([before, result]) == oracle.entries

    # One split record, for the customer split off, with the moved identifier it holds as evidence.
    assert result.splits == [
        IdentityChange(
            kind="split",
            survivor_id=C_ANN,
            merged_id=C_BOB,
            event_id="split-1",
            identifiers={"email": "bob@example.org"},
            occurred_at=T0,
        )
    ]
    # The re-stitching's links are no news: no merge, no refusal, no never-link report.
    assert result.merges == [] and result.refused == {} and result.kept_apart == {}
    assert result.created == {C_BOB} and result.removed == {} and result.changed == [C_ANN, C_BOB]
    assert result.identities == {ANN: C_ANN, TAB: C_ANN, BOB: C_BOB}
    assert result.forgotten == []

    # Bob's entries move, Ann's purchase loses its gap to Bob's; each carries the version it replaces.
    emitted = {entry.event_id: entry for entry in result.entries}
    assert set(emitted) == {ID["b"], ID["c"], ID["e"], ID["f"]} == set(result.replaced)
    first = {entry.event_id: entry for entry in before.entries}
    for event_id, old in result.replaced.items():
        assert old == first[event_id] and old.customer_id == C_ANN
    assert emitted[ID["e"]].time_since_last_purchase_s is None
    assert first[ID["f"]].contact_number == 2 and emitted[ID["f"]].contact_number == 1


def test_a_redelivery_in_the_batch_of_the_split_is_a_duplicate() -> None:
    run = Run()
    run.apply(EVENTS)
    split = run.split(C_ANN, [BOB])
    again = [EVENTS[1], EVENTS[2], EVENTS[4]]
    result = run.apply(again, splits=[split])
    assert result.duplicates == 3 and result.conflicts == []
    assert len(result.entries) == len({entry.event_id for entry in result.entries})
    run.assert_like(replay(EVENTS, DEFAULTS, KeptApart(run.pairs)))
    # And once more in a later batch: still the same customers' events.
    assert run.apply(again).duplicates == 3


def test_a_split_of_a_customer_not_in_the_view_does_nothing() -> None:
    run = Run()
    run.apply(EVENTS)
    split = run.split(C_ANN, [BOB])._replace(customer_id=customer_id_for("email:gone@example.org"))
    states = {c: s.to_dict() for c, s in run.view.customers.items()}
    identities, applied = dict(run.view.identities), dict(run.view.applied)
    result = run.apply(splits=[split])
    assert result == BatchResult()
    assert run.view.identities == identities and run.view.applied == applied
    assert {c: s.to_dict() for c, s in run.view.customers.items()} == states


def test_a_merge_made_by_hand_among_the_kept_keys_is_made_again() -> None:
    # Ann's CRM id was only ever linked to her e-mail by hand.
    events = [*EVENTS, ev("g", 7, {IdentifierType.CRM_ID: "crm-7"}, EventType.PURCHASE, amount=5, currency="GBP")]
    link = ManualLink("merge-1", (CRM, ANN), T0)
    run = Run()
    run.apply(events, links=[link])
    assert set(run.view.customers) == {C_CRM}
    split = run.split(C_CRM, [BOB], links=[link])
    result = run.apply(splits=[split])
    run.assert_like(replay(events, DEFAULTS, KeptApart(run.pairs), links=[link]))
    assert set(run.view.customers) == {C_CRM, C_BOB}
    assert run.view.identities[ANN] == run.view.identities[CRM] == C_CRM
    assert [(s.survivor_id, s.merged_id) for s in result.splits] == [(C_CRM, C_BOB)]
    # Its re-making is no news either.
    assert result.merges == []
    # Without the merge, the split would have left Ann's e-mail apart from her CRM id.
    lost = Run()
    lost.apply(events, links=[link])
    lost.apply(splits=[lost.split(C_CRM, [BOB])])
    assert set(lost.view.customers) == {C_CRM, C_ANN, C_BOB}


def test_events_stored_without_their_keys_stay_with_the_strongest_keys_customer() -> None:
    # Touchpoints stored before their keys were (migration 0018): Bob's purchase has no stored keys.
    run = Run()
    run.apply(EVENTS)
    split = run.split(C_ANN, [BOB])
    events = [s._replace(keys=()) if s.row[EVENT_ID] == ID["c"] else s for s in split.events]
    result = run.apply(splits=[split._replace(events=events)])
    assert run.sink.entries[ID["c"]].customer_id == C_ANN
    assert ID["c"] not in result.replaced  # its customer did not change, nor its fields
    assert run.view.customers[C_BOB].events == 2 and run.view.customers[C_ANN].events == 4


def test_a_key_only_seen_beside_a_moved_key_is_forgotten() -> None:
    # The tablet was only ever used with Bob's e-mail: moved away from it, no customer holds it (its event's
    # strongest key is Bob's e-mail, which the rule keeps apart from it), so its identity row must be deleted.
    events = [ev("y", 1, bob | tab), ev("z", 2, bob)]
    run = Run()
    run.apply(events)
    result = run.apply(splits=[run.split(C_BOB, [BOB])])
    run.assert_like(replay(events, DEFAULTS, KeptApart(run.pairs)))
    assert result.forgotten == [TAB] and TAB not in run.view.identities
    assert result.splits == [] and set(run.view.customers) == {C_BOB}


def test_final_entries_over_a_split_that_re_creates_a_merged_customer() -> None:
    # Bob's events first: customer c(bob), merged into Ann's when her event links the tablet; the split re-creates it.
    run = Run()
    run.apply(EVENTS[1:3])
    merged = run.apply([EVENTS[0], *EVENTS[3:]])
    assert [(m.survivor_id, m.merged_id) for m in merged.merges] == [(C_ANN, C_BOB)]
    run.apply(splits=[run.split(C_ANN, [BOB])])
    oracle = replay(EVENTS, DEFAULTS, KeptApart(run.pairs))
    run.assert_like(oracle)  # the sinks, which re-point entries when merges are written, are right
    assert final_entries(run.results) == oracle.entries
