"""Unit tests of identity stitching, per-customer state and timelines (streams.domain)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count

import pytest

from config.settings import Settings
from schemas.outputs import Moment, Stage
from schemas.touchpoint import (
    Channel,
    EventType,
    IdentifierType,
    SourceRef,
    SurveyAnswers,
    TouchpointEvent,
    derive_event_id,
)
from streams.domain.customer import EVENT_ID, MAX_TRAITS, CustomerState, StoredEntry, issue_key, make_row, row_of
from streams.domain.entry import Entry
from streams.domain.identifiers import hash_identifier
from streams.domain.identity import LinkPlan, MergeBound, customer_id_for, plan_link
from streams.domain.metrics import contributions, merge, value_of
from streams.domain.moments import event_moments, is_complaint, nps_moment
from streams.domain.oracle import replay
from streams.domain.stages import customer_stage, stage_of
from streams.domain.stitching import BatchResult, StateView, Stitcher
from streams.policies import Policies

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
HOUR = 3600.0
DAY = 86400.0
EMAIL = IdentifierType.EMAIL
ANON = IdentifierType.WEB_ANONYMOUS_ID
CRM = IdentifierType.CRM_ID
LOYALTY = IdentifierType.LOYALTY_ID
_serial = count()


def ev(
    kind: EventType = EventType.PAGE_VIEW,
    hours: float = 0.0,
    channel: Channel = Channel.WEB,
    source_id: str | None = None,
    **fields: object,
) -> TouchpointEvent:
    """A touchpoint ``hours`` after T0; identifiers default to Ann's e-mail."""
    source_id = source_id or f"rec-{next(_serial)}"
    fields.setdefault("identifiers", {EMAIL: "ann@example.org"})
    occurred = T0 + timedelta(hours=hours)
    return TouchpointEvent(
        event_id=derive_event_id(channel, source_id),
        channel=channel,
        type=kind,
        occurred_at=occurred,
        received_at=occurred + timedelta(seconds=2),
        source=SourceRef(system="test", id=source_id),
        **fields,  # type: ignore[arg-type]
    )


def contact(hours: float, channel: Channel = Channel.PHONE, **fields: object) -> TouchpointEvent:
    """A support contact."""
    return ev(EventType.SUPPORT_CONTACT, hours, channel, **fields)


def new_stitcher(**overrides: object) -> Stitcher:
    return Stitcher(Policies.from_settings(Settings(**overrides)))  # type: ignore[arg-type]


def run(stitcher: Stitcher, events: list[TouchpointEvent], view: StateView) -> BatchResult:
    """One batch as the worker applies it: apply, then close (prune, profiles)."""
    result = stitcher.apply(events, view)
    stitcher.close(view, result)
    return result


def entries_by_id(result) -> dict:
    return {entry.event_id: entry for entry in result.entries}


ANN = customer_id_for("email:ann@example.org")


# --- identity ------------------------------------------------------------------------------------


def test_customer_id_comes_from_the_strongest_key_whatever_the_order() -> None:
    events = [
        ev(identifiers={ANON: "a1"}),
        ev(hours=1, identifiers={ANON: "a1", EMAIL: "ann@example.org"}),
        ev(hours=2, identifiers={EMAIL: "ann@example.org", LOYALTY: "L-7"}),
    ]
    for order in (events, events[::-1], [events[1], events[0], events[2]]):
        view = StateView()
        run(new_stitcher(), order, view)
        assert list(view.customers) == [customer_id_for("loyalty_id:L-7")]
        assert set(view.identities.values()) == {customer_id_for("loyalty_id:L-7")}


def test_the_identifier_priority_setting_decides_which_key_names_the_customer() -> None:
    events = [
        ev(identifiers={ANON: "a1", EMAIL: "ann@example.org"}),
        ev(hours=2, identifiers={EMAIL: "ann@example.org", LOYALTY: "L-7"}),
    ]
    email_first = Policies.from_settings(Settings(identifier_priority=[IdentifierType.EMAIL]))
    assert email_first.identity.priority[:3] == (IdentifierType.EMAIL, IdentifierType.CRM_ID, IdentifierType.LOYALTY_ID)
    for order in (events, events[::-1]):
        view = StateView()
        run(Stitcher(email_first), order, view)
        assert list(view.customers) == [customer_id_for("email:ann@example.org")]


def test_linking_event_merges_two_customers_into_the_stronger_and_reports_it() -> None:
    view = StateView()
    stitcher = new_stitcher()
    first = run(stitcher, [ev(identifiers={ANON: "a1"}), ev(hours=1)], view)
    anon_id = customer_id_for("web_anonymous_id:a1")
    assert sorted(first.changed) == sorted([anon_id, ANN])
    link = ev(EventType.IDENTIFY, hours=2, identifiers={ANON: "a1", EMAIL: "ann@example.org"})
    result = run(stitcher, [link], view)
    assert list(view.customers) == [ANN]
    assert list(result.removed) == [anon_id]
    assert result.changed == [ANN]
    (merge,) = result.merges
    assert (merge.survivor_id, merge.merged_id, merge.event_id) == (ANN, anon_id, link.event_id)
    assert merge.identifiers == {ANON: "a1", EMAIL: "ann@example.org"}
    assert merge.occurred_at == link.occurred_at
    assert result.identities == {"web_anonymous_id:a1": ANN}
    tombstone = next(p for p in result.profiles if p.customer_id == anon_id)
    assert tombstone.merged_into == ANN
    assert view.customers[ANN].events == 3


def test_merge_repoints_every_key_of_the_merged_customer_even_ones_not_in_the_batch() -> None:
    stitcher = new_stitcher()
    view = StateView()
    run(stitcher, [ev(identifiers={ANON: "a1"}), ev(hours=1, identifiers={ANON: "a1", LOYALTY: "L-1"})], view)
    loyal = customer_id_for("loyalty_id:L-1")
    # The worker loads only the keys of the next batch: the loyalty key is not among them.
    partial = StateView(identities={"web_anonymous_id:a1": loyal}, customers={loyal: view.customers[loyal]})
    result = run(stitcher, [ev(hours=2, identifiers={ANON: "a1", CRM: "C-1"})], partial)
    crm = customer_id_for("crm_id:C-1")
    assert result.identities == {"web_anonymous_id:a1": crm, "loyalty_id:L-1": crm, "crm_id:C-1": crm}
    assert [(m.survivor_id, m.merged_id) for m in result.merges] == [(crm, loyal)]
    assert list(result.removed) == [loyal]
    assert list(partial.customers) == [crm]
    assert partial.customers[crm].identifiers == {"web_anonymous_id": ["a1"], "loyalty_id": ["L-1"], "crm_id": ["C-1"]}


def test_an_applied_id_is_a_duplicate_for_its_customer_and_a_conflict_for_others() -> None:
    stitcher = new_stitcher()
    view = StateView()
    original = ev(hours=0, source_id="R-1")
    run(stitcher, [original], view)
    # Only the durable record (the touchpoints table, in the worker) knows it: the state keeps no id set.
    assert view.applied == {original.event_id: ANN}
    impostor = original.model_copy(update={"identifiers": {EMAIL: "bob@example.org"}})
    result = run(stitcher, [original, impostor], view)
    assert result.duplicates == 1
    assert [(event, holder) for event, holder in result.conflicts] == [(impostor, ANN)]
    assert result.entries == [] and view.customers[ANN].events == 1
    assert customer_id_for("email:bob@example.org") not in view.customers


def test_an_applied_id_follows_its_customer_through_a_rename_in_the_same_batch() -> None:
    stitcher = new_stitcher()
    view = StateView()
    original = ev(hours=0, source_id="R-1")
    run(stitcher, [original], view)
    # A loyalty id joins Ann (renaming her customer), then her record is redelivered: still hers, a duplicate.
    joined = ev(hours=1, identifiers={EMAIL: "ann@example.org", LOYALTY: "L-9"})
    result = run(stitcher, [joined, original], view)
    assert [m.merged_id for m in result.merges] == [ANN]
    assert result.duplicates == 1 and result.conflicts == []


def test_a_stronger_identifier_joining_one_customer_renames_it_as_a_merge() -> None:
    stitcher = new_stitcher()
    view = StateView()
    run(stitcher, [ev(identifiers={ANON: "a1"})], view)
    result = run(stitcher, [ev(hours=1, identifiers={ANON: "a1", EMAIL: "ann@example.org"})], view)
    anon_id = customer_id_for("web_anonymous_id:a1")
    assert [(m.survivor_id, m.merged_id) for m in result.merges] == [(ANN, anon_id)]
    assert list(result.removed) == [anon_id]
    assert list(view.customers) == [ANN]
    assert view.customers[ANN].customer_id == ANN


def test_ids_created_and_merged_within_one_batch_are_not_reported_removed() -> None:
    result = run(
        new_stitcher(),
        [ev(identifiers={ANON: "a1"}), ev(hours=1, identifiers={ANON: "a1", EMAIL: "ann@example.org"})],
        StateView(),
    )
    assert list(result.removed) == []
    assert len(result.merges) == 1
    assert result.changed == [ANN]


def test_hashed_identifiers_never_store_the_raw_value() -> None:
    stitcher = new_stitcher(hash_identifiers=True, identifier_salt="pepper")
    view = StateView()
    run(stitcher, [ev(identifiers={EMAIL: "ann@example.org", ANON: "a1"})], view)
    hashed = "email:" + hash_identifier(EMAIL, "ann@example.org", "pepper")
    assert set(view.identities) == {hashed, "web_anonymous_id:a1"}
    (state,) = view.customers.values()
    assert "ann@example.org" not in json.dumps(state.to_dict())
    assert state.customer_id == customer_id_for(hashed)


def test_blocked_values_are_ignored_for_stitching_and_counted() -> None:
    placeholder = {EMAIL: "test@example.com"}
    result = run(
        new_stitcher(),
        [ev(identifiers={ANON: "a1"} | placeholder), ev(hours=1, identifiers={ANON: "a2"} | placeholder)],
        view := StateView(),
    )
    assert result.blocked == 2
    assert len(view.customers) == 2
    assert not any(key.startswith("email:") for key in view.identities)


def test_blocked_values_match_after_normalisation_and_hashing() -> None:
    stitcher = new_stitcher(hash_identifiers=True, identifier_salt="s", blocked_identifiers="email:Test@Example.com")
    result = run(stitcher, [ev(identifiers={EMAIL: "test@example.com", ANON: "a1"})], StateView())
    assert result.blocked == 1


def test_a_link_over_a_type_limit_is_refused_and_the_event_goes_to_its_strongest_key() -> None:
    stitcher = new_stitcher()
    view = StateView()
    run(stitcher, [ev(identifiers={CRM: "C-1", EMAIL: "ann@example.org"})], view)
    clash = ev(hours=1, identifiers={CRM: "C-2", EMAIL: "ann@example.org"})
    result = run(stitcher, [clash], view)
    assert result.refused == {clash.event_id: ["email:ann@example.org"]}
    assert result.over_limit == 1
    assert not result.merges
    c1, c2 = customer_id_for("crm_id:C-1"), customer_id_for("crm_id:C-2")
    assert view.identities == {"crm_id:C-1": c1, "email:ann@example.org": c1, "crm_id:C-2": c2}
    assert view.customers[c2].identifiers == {"crm_id": ["C-2"]}
    assert view.customers[c2].events == 1
    assert [(e.event_id, e.customer_id) for e in result.entries] == [(clash.event_id, c2)]


def test_anonymous_web_ids_are_bounded_per_customer() -> None:
    stitcher = new_stitcher(identifier_limits={ANON: 2})
    view = StateView()
    events = [ev(hours=n, identifiers={EMAIL: "ann@example.org", ANON: f"a{n}"}) for n in range(3)]
    result = run(stitcher, events, view)
    assert view.customers[ANN].identifiers["web_anonymous_id"] == ["a0", "a1"]
    assert result.refused == {events[2].event_id: ["web_anonymous_id:a2"]}
    assert view.customers[ANN].events == 3


@pytest.mark.parametrize("split", [False, True], ids=["one-batch", "batch-per-event"])
def test_two_users_logging_in_on_one_shared_browser_stay_apart_by_default(split: bool) -> None:
    """One anonymous id, two user ids (a family laptop): with the default limits the anonymous id stays with the
    first user, and the second user is a customer of their own, in any batching."""
    stitcher = new_stitcher()
    user = IdentifierType.WEB_USER_ID
    events = [
        ev(identifiers={ANON: "laptop"}),
        ev(EventType.IDENTIFY, hours=1, identifiers={ANON: "laptop", user: "ann"}),
        ev(hours=2, identifiers={ANON: "laptop", user: "ann"}),
        ev(EventType.IDENTIFY, hours=3, identifiers={ANON: "laptop", user: "bob"}),
        ev(hours=4, identifiers={ANON: "laptop", user: "bob"}),
    ]
    view = StateView()
    for batch in [[e] for e in events] if split else [events]:
        run(stitcher, batch, view)
    owners = {tuple(state.identifiers.get("web_user_id", [])): state for state in view.customers.values()}
    assert set(owners) == {("ann",), ("bob",)}, "two customers, never merged"
    assert owners[("ann",)].identifiers["web_anonymous_id"] == ["laptop"]
    assert "web_anonymous_id" not in owners[("bob",)].identifiers, "the anonymous id stays with the first user"
    assert owners[("ann",)].events == 3 and owners[("bob",)].events == 2


@pytest.mark.parametrize("order", ["event-time", "reversed", "one-by-one-reversed"])
def test_identify_traits_keep_the_latest_value_by_event_time_in_any_order(order: str) -> None:
    def identify(hours: float, **traits: object) -> TouchpointEvent:
        return ev(EventType.IDENTIFY, hours, attributes={"segment_type": "identify", "traits": traits})

    events = [identify(1, plan="silver", city="Leeds"), identify(3, plan="gold"), identify(2, plan="bronze", age=41)]
    ordered = sorted(events, key=lambda e: e.occurred_at)
    batches = {
        "event-time": [ordered],
        "reversed": [ordered[::-1]],
        "one-by-one-reversed": [[e] for e in ordered[::-1]],
    }[order]
    stitcher, view = new_stitcher(), StateView()
    result = None
    for batch in batches:
        result = run(stitcher, batch, view)
    assert result is not None
    (profile,) = result.profiles
    assert profile.traits == {"age": 41, "city": "Leeds", "plan": "gold"}


def test_traits_are_bounded_per_customer() -> None:
    stitcher, view = new_stitcher(), StateView()
    many = {f"t{n:03d}": n for n in range(MAX_TRAITS + 20)}
    run(stitcher, [ev(EventType.IDENTIFY, 1, attributes={"segment_type": "identify", "traits": many})], view)
    result = run(stitcher, [ev(EventType.IDENTIFY, 2, attributes={"traits": {"t000": "new", "extra": 1}})], view)
    (profile,) = result.profiles
    assert len(profile.traits) == MAX_TRAITS and profile.traits["t000"] == "new", "kept names still update"
    assert "extra" not in profile.traits


def test_a_merge_keeps_the_latest_trait_of_either_side_and_both_sides_groups() -> None:
    stitcher, view = new_stitcher(), StateView()
    traits = lambda **given: {"segment_type": "identify", "traits": given}  # noqa: E731
    run(
        stitcher,
        [
            ev(EventType.IDENTIFY, 1, identifiers={ANON: "a1"}, attributes=traits(plan="gold", city="York")),
            ev(EventType.IDENTIFY, 2, identifiers={LOYALTY: "L-9"}, attributes=traits(plan="silver")),
        ],
        view,
    )
    assert len(view.customers) == 2
    group = {"segment_type": "group", "group_id": "acct-2"}
    run(stitcher, [ev(EventType.IDENTIFY, 2.5, identifiers={LOYALTY: "L-9"}, attributes=group)], view)
    result = run(stitcher, [ev(hours=3, identifiers={ANON: "a1", LOYALTY: "L-9"})], view)
    (profile,) = [p for p in result.profiles if p.merged_into is None]
    assert profile.traits == {"city": "York", "plan": "silver"}
    assert profile.groups == ["acct-2"], "the account a group call named stays on the merged profile"


def test_limits_also_refuse_merging_two_customers_that_together_exceed_them() -> None:
    stitcher = new_stitcher(identifier_limits={ANON: 2})
    view = StateView()
    run(
        stitcher,
        [
            ev(identifiers={EMAIL: "ann@example.org", ANON: "a1"}),
            ev(identifiers={EMAIL: "ann@example.org", ANON: "a2"}),
            ev(identifiers={LOYALTY: "L-1", ANON: "a3"}),
        ],
        view,
    )
    result = run(stitcher, [ev(hours=1, identifiers={LOYALTY: "L-1", EMAIL: "ann@example.org"})], view)
    assert result.over_limit == 1
    assert len(view.customers) == 2


def test_events_without_identifiers_use_the_anonymous_source_identity_or_are_unattributed() -> None:
    stitcher = new_stitcher()
    view = StateView()
    kiosk = ev(channel=Channel.STORE, identifiers={}, attributes={"anonymous_id": "till-3-session-9"})
    again = ev(hours=1, channel=Channel.STORE, identifiers={}, attributes={"anonymous_id": "till-3-session-9"})
    nobody = ev(channel=Channel.STORE, identifiers={})
    result = run(stitcher, [kiosk, again, nobody], view)
    assert result.unattributed == [nobody]
    (state,) = view.customers.values()
    assert state.customer_id == customer_id_for("anonymous:store:test:till-3-session-9")
    assert state.events == 2
    (profile,) = result.profiles
    assert profile.identifiers == {}


def test_required_keys_are_the_keys_apply_looks_up() -> None:
    settings = Settings(hash_identifiers=True, identifier_salt="s")
    events = [
        ev(identifiers={EMAIL: "ann@example.org", ANON: "a1"}),
        ev(identifiers={EMAIL: "noreply@example.com"}, attributes={"anonymous_id": "x"}),
        ev(identifiers={}),
    ]
    assert Stitcher(Policies.from_settings(settings)).required_keys(events) == {
        "email:" + hash_identifier(EMAIL, "ann@example.org", "s"),
        "web_anonymous_id:a1",
        "anonymous:web:test:x",
    }


def test_an_identity_row_without_its_state_in_the_view_is_a_clear_error() -> None:
    view = StateView(identities={"email:ann@example.org": "c-missing"})
    with pytest.raises(KeyError, match="c-missing"):
        run(new_stitcher(), [ev()], view)


# --- merges, dedupe, lateness --------------------------------------------------------------------


def test_merges_move_history_in_event_time_order() -> None:
    stitcher = new_stitcher()
    view = StateView()
    ann = [ev(EventType.PURCHASE, hours=h, amount=Decimal("10.50")) for h in (1, 5)]
    anon = [ev(EventType.OTHER, hours=h, identifiers={ANON: "a1"}) for h in (2, 6)]
    run(stitcher, ann + anon, view)
    link = ev(EventType.IDENTIFY, hours=3, identifiers={ANON: "a1", EMAIL: "ann@example.org"})
    run(stitcher, [link], view)
    state = view.customers[ANN]
    # History keeps the entries later events can change (purchases, ``other``), not the identify.
    assert [row[EVENT_ID] for row in state.history] == [e.event_id for e in (ann[0], anon[0], ann[1], anon[1])]
    assert (state.events, state.purchases, state.revenue) == (5, 2, Decimal("21.00"))
    assert state.channels == {"web": 5}
    # The merged customer's applied ids came along: its events are duplicates now.
    again = run(stitcher, [anon[0]], view)
    assert again.duplicates == 1 and not again.entries


def test_duplicates_change_nothing_and_emit_nothing() -> None:
    stitcher = new_stitcher()
    view = StateView()
    event = ev(EventType.PURCHASE, amount=Decimal(5))
    first = run(stitcher, [event, event], view)
    assert first.duplicates == 1 and len(first.entries) == 1
    before = json.dumps(view.customers[ANN].to_dict(), sort_keys=True)
    second = run(stitcher, [event], view)
    assert second.duplicates == 1
    assert (second.entries, second.changed, second.profiles) == ([], [], [])
    assert json.dumps(view.customers[ANN].to_dict(), sort_keys=True) == before


def test_late_events_land_in_order_whatever_their_age() -> None:
    stitcher = new_stitcher()
    view = StateView()
    run(
        stitcher,
        [ev(EventType.PURCHASE, 24 * 400, amount=Decimal(1)), ev(EventType.PURCHASE, 24 * 401, amount=Decimal(1))],
        view,
    )
    late = ev(EventType.PURCHASE, 24 * 400.5, amount=Decimal(1))
    ancient = ev(hours=0)  # 400 days before the customer's latest: applied all the same
    result = run(stitcher, [late, ancient], view)
    assert result.too_late == []
    assert {e.event_id for e in result.entries} >= {late.event_id, ancient.event_id}
    state = view.customers[ANN]
    times = [row[0] for row in state.history]
    assert times == sorted(times) and len(times) == 3
    assert state.events == 4 and state.first_seen == T0.timestamp()


def test_an_age_bound_is_opt_in_and_rejects_only_older_events() -> None:
    stitcher = new_stitcher()
    view = StateView()
    run(stitcher, [ev(hours=10), ev(hours=12)], view)
    late, too_late = ev(hours=10.5), ev(hours=9.5)
    bound = (T0 + timedelta(hours=10)).timestamp()
    result = stitcher.apply([late, too_late], view, reject_before=bound)
    assert result.too_late == [too_late]
    assert [e.event_id for e in result.entries] == [late.event_id]


def test_a_redelivered_old_event_is_a_duplicate_not_too_late() -> None:
    stitcher = new_stitcher()
    view = StateView()
    old = ev(hours=0)
    run(stitcher, [old, ev(hours=5)], view)
    result = stitcher.apply([old], view, reject_before=(T0 + timedelta(hours=4)).timestamp())
    assert (result.duplicates, result.too_late) == (1, [])


def test_an_applied_id_is_a_duplicate_whatever_its_age() -> None:
    stitcher = new_stitcher()
    view = StateView()
    old = ev(EventType.PURCHASE, 0, amount=Decimal(1))
    run(stitcher, [old, ev(hours=24 * 365)], view)
    assert "seen" not in view.customers[ANN].to_dict()  # no id set in the state: the applied record decides
    assert run(stitcher, [old], view).duplicates == 1


def test_retention_keeps_the_previous_purchase_a_late_purchase_needs() -> None:
    stitcher = new_stitcher(window_grace_s=2 * DAY)
    keep = stitcher.policy.keep_s
    view = StateView()
    days = keep / DAY + 10
    old, recent = (ev(EventType.PURCHASE, 24 * day, amount=Decimal(1)) for day in (0, days))
    run(stitcher, [old, recent], view)
    # Older than the state keeps, but still the previous purchase of anything that may arrive.
    state = view.customers[ANN]
    assert [p[1] for p in state.purchase_times] == [old.event_id, recent.event_id]
    assert state.facts_from == recent.occurred_at.timestamp() - keep
    late = ev(EventType.PURCHASE, 24 * (days - 1), amount=Decimal(1))
    assert stitcher.history_needs([late], stitcher.keys_of([late]), view) == {}  # within the grace: from memory
    result = run(stitcher, [late], view)
    entries = entries_by_id(result)
    assert entries[late.event_id].time_since_last_purchase_s == (days - 1) * DAY
    assert entries[recent.event_id].time_since_last_purchase_s == DAY
    assert result.replaced[recent.event_id].time_since_last_purchase_s == days * DAY


def test_retention_keeps_the_contacts_a_late_contact_looks_back_to() -> None:
    stitcher = new_stitcher(window_grace_s=2 * DAY, repeat_contact_window_s=DAY)
    view = StateView()
    earlier = contact(24 * 7.5, reason="late")
    run(stitcher, [earlier, ev(hours=24 * 10)], view)
    assert "reason:late" in view.customers[ANN].issues
    late = contact(24 * 8.25, Channel.WEB, reason="late")
    entry = entries_by_id(run(stitcher, [late], view))[late.event_id]
    assert (entry.contact_number, entry.repeat_contact, entry.channel_switch) == (2, True, True)


def test_retention_forgets_what_only_older_events_than_the_grace_can_need() -> None:
    stitcher = new_stitcher(window_grace_s=DAY)
    keep = stitcher.policy.keep_s
    view = StateView()
    latest = 24 * (keep / DAY + 2)
    run(
        stitcher,
        [
            contact(0, reason="late"),
            *(ev(EventType.PURCHASE, h, amount=Decimal(1)) for h in (1, 2, 3)),
            ev(hours=latest),
        ],
        view,
    )
    state = view.customers[ANN]
    assert state.issues == {}
    assert [p[0] for p in state.purchase_times] == [(T0 + timedelta(hours=3)).timestamp()]
    assert state.history == []
    assert state.history_from == state.facts_from == (T0 + timedelta(hours=latest)).timestamp() - keep


def test_history_keeps_the_most_recent_entries_and_still_counts_older_ones() -> None:
    stitcher = new_stitcher(timeline_limit=3)
    view = StateView()
    events = [ev(EventType.PURCHASE, h, amount=Decimal(1)) for h in (5, 1, 4, 2, 3)] + [ev(hours=0.5)]
    run(stitcher, events, view)
    state = view.customers[ANN]
    assert [row[0] for row in state.history] == [(T0 + timedelta(hours=h)).timestamp() for h in (3, 4, 5)]
    assert state.history_from > (T0 + timedelta(hours=2)).timestamp()  # complete only from there on
    assert (state.events, state.purchases) == (6, 5)


def test_history_needs_name_the_customers_a_batch_must_read_back() -> None:
    stitcher = new_stitcher(window_grace_s=DAY)
    policy = stitcher.policy
    view = StateView()
    run(stitcher, [ev(EventType.PURCHASE, 0, amount=Decimal(1)), ev(hours=24 * 100)], view)
    run(stitcher, [ev(EventType.PURCHASE, 24 * 90, identifiers={EMAIL: "bob@example.org"}, amount=Decimal(1))], view)
    bob = customer_id_for("email:bob@example.org")

    def needs(*events: TouchpointEvent) -> dict[str, float]:
        return stitcher.history_needs(list(events), stitcher.keys_of(events), view)

    page = ev(hours=24 * 10)  # no entry of Ann's can change because of a page view, and no rule reads it
    call = contact(24 * 10, reason="late")
    assert needs(page) == {}
    assert needs(call) == {ANN: call.occurred_at.timestamp() - policy.span_s}
    assert needs(contact(24 * 99.5, reason="late")) == {}  # within the grace of Ann's latest
    # Linking Ann and Bob may change entries of Ann's from Bob's first event on.
    link = ev(EventType.IDENTIFY, 24 * 100, identifiers={EMAIL: "ann@example.org", LOYALTY: "L-1"})
    bobs = ev(EventType.IDENTIFY, 24 * 100, identifiers={EMAIL: "bob@example.org", LOYALTY: "L-1"})
    since = view.customers[bob].first_seen - policy.span_s
    # Bob's state keeps more than that (he is younger), Ann's not: only hers is read back.
    assert view.customers[bob].complete_from < since < view.customers[ANN].complete_from
    assert needs(link, bobs) == {ANN: since}


def test_restore_puts_back_what_retention_dropped_and_nothing_twice() -> None:
    stitcher = new_stitcher(window_grace_s=DAY)
    view = StateView()
    calls = [contact(24 * d, reason="late", resolved=False) for d in (0, 1)]
    run(stitcher, [*calls, ev(hours=24 * 100)], view)
    state = view.customers[ANN]
    assert state.issues == {}
    kept_from = state.complete_from
    rows = [make_row(c, c.occurred_at.timestamp()) for c in calls]
    state.restore(rows, None, 0.0)
    state.restore(rows, None, 0.0)
    assert [c[1] for c in state.issues["reason:late"]] == [c.event_id for c in calls]
    assert [row[EVENT_ID] for row in state.history] == [c.event_id for c in calls]
    assert state.complete_from == 0.0
    state.prune(stitcher.policy)
    assert (state.issues, state.history, state.complete_from) == ({}, [], kept_from)


def test_restoring_history_only_does_not_add_a_previous_purchase_the_facts_hold_already() -> None:
    # Found by test_never_link_properties (tight policies, resends): facts complete from earlier than history, and a
    # restore of history whose previous purchase lies in the facts added it a second time.
    state = CustomerState(ANN)
    state.purchase_times = [[100.0, "p-1"], [300.0, "p-2"]]
    state.facts_from, state.history_from = 50.0, 400.0
    state.restore([], (100.0, "p-1"), 150.0)
    assert state.purchase_times == [[100.0, "p-1"], [300.0, "p-2"]]
    assert (state.facts_from, state.history_from) == (50.0, 150.0)


def test_a_stored_entry_rebuilds_the_row_it_was_made_from() -> None:
    event = ev(
        EventType.SUPPORT_CONTACT,
        2,
        issue_id="case-1",
        resolved=False,
        transfers=2,
        amount=Decimal("12.50"),
        currency="GBP",
        survey=SurveyAnswers(nps=3, csat=None, ces=6),
        reason="parcel arrived broken",
    )
    row = make_row(event, event.occurred_at.timestamp())
    entry = run(new_stitcher(), [event], StateView()).entries[0]
    stored = StoredEntry(
        occurred_at=event.occurred_at,
        event_id=event.event_id,
        channel="web",
        type="support_contact",
        received_at=event.received_at,
        amount=Decimal("12.5000"),  # as a NUMERIC(18, 4) column gives it back
        currency="GBP",
        issue_key="case-1",
        resolved=False,
        transfers=2,
        nps=3,
        csat=None,
        ces=6,
        source_id=event.source.id,
        moments=",".join(m.value for m in entry.moments),
    )
    assert row_of(stored) == row
    assert row[5] == "12.5"


# --- stages ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "stage"),
    [
        (EventType.PAGE_VIEW, Stage.PRE_PURCHASE),
        (EventType.STORE_VISIT, Stage.PRE_PURCHASE),
        (EventType.ENQUIRY, Stage.PRE_PURCHASE),
        (EventType.CHECKOUT, Stage.PURCHASE),
        (EventType.PURCHASE, Stage.PURCHASE),
        (EventType.LATE_DELIVERY, Stage.POST_PURCHASE),
        (EventType.SUPPORT_CONTACT, Stage.POST_PURCHASE),
        (EventType.SURVEY, Stage.POST_PURCHASE),
        (EventType.USAGE, Stage.POST_PURCHASE),
    ],
)
def test_stage_of_a_touchpoint_follows_its_type(kind: EventType, stage: Stage) -> None:
    assert stage_of(kind) is stage


def test_other_events_are_pre_purchase_until_the_customer_has_purchased() -> None:
    assert stage_of(EventType.OTHER) is Stage.PRE_PURCHASE
    assert stage_of(EventType.OTHER, purchased_before=True) is Stage.POST_PURCHASE
    assert customer_stage(Stage.PRE_PURCHASE, has_open_issue=True) is Stage.POST_PURCHASE


def stage_after(*events: TouchpointEvent) -> Stage:
    view = StateView()
    result = run(new_stitcher(), list(events), view)
    (profile,) = result.profiles
    assert profile.stage is view.customers[ANN].stage(Policies.from_settings(Settings()).customer)
    return profile.stage


def test_customer_stage_is_the_latest_journey_touchpoint() -> None:
    assert stage_after(ev(EventType.PURCHASE, 1), ev(EventType.DELIVERY, 2)) is Stage.POST_PURCHASE
    assert stage_after(ev(EventType.PURCHASE, 1), ev(EventType.DELIVERY, 2), ev(EventType.SEARCH, 3)) is (
        Stage.PRE_PURCHASE
    )
    # Event time decides, not arrival.
    assert stage_after(ev(EventType.CHECKOUT, 5), ev(EventType.SEARCH, 3)) is Stage.PURCHASE


def test_surveys_reviews_and_other_events_do_not_move_the_customer() -> None:
    survey = ev(EventType.SURVEY, 3, survey=SurveyAnswers(nps=9))
    assert stage_after(ev(EventType.SEARCH, 1), survey, ev(EventType.OTHER, 4)) is Stage.PRE_PURCHASE
    assert stage_after(survey) is Stage.POST_PURCHASE


def test_an_open_issue_keeps_the_customer_post_purchase_until_resolved() -> None:
    opened = contact(1, issue_id="case-1", resolved=False)
    browse = ev(EventType.SEARCH, 2)
    assert stage_after(opened, browse) is Stage.POST_PURCHASE
    assert stage_after(opened, browse, contact(1.5, issue_id="case-1", resolved=True)) is Stage.PRE_PURCHASE


# --- moments ---------------------------------------------------------------------------------------


def test_intrinsic_moments() -> None:
    assert event_moments(contact(0, reason="Parcel arrived damaged", resolved=False)) == (
        Moment.COMPLAINT,
        Moment.SUPPORT_CONTACT,
        Moment.ISSUE_UNRESOLVED,
    )
    assert event_moments(contact(0, reason="change address", resolved=True)) == (
        Moment.SUPPORT_CONTACT,
        Moment.ISSUE_RESOLVED,
    )
    assert event_moments(ev(EventType.RETURN)) == (Moment.RETURN,)
    assert event_moments(ev(EventType.LATE_DELIVERY)) == (Moment.LATE_DELIVERY,)
    assert event_moments(ev(EventType.PAGE_VIEW)) == ()


def test_complaints_from_reviews_and_flags() -> None:
    assert is_complaint(ev(EventType.REVIEW, attributes={"rating": 2}))
    assert not is_complaint(ev(EventType.REVIEW, attributes={"rating": 4}))
    assert is_complaint(ev(EventType.REVIEW, survey=SurveyAnswers(csat=1)))
    assert is_complaint(contact(0, reason="question", attributes={"complaint": True}))
    assert not is_complaint(ev(EventType.PAGE_VIEW, reason="broken"))


@pytest.mark.parametrize(
    ("score", "moment"),
    [
        (10, Moment.PROMOTER),
        (9, Moment.PROMOTER),
        (8, Moment.PASSIVE),
        (7, Moment.PASSIVE),
        (6, Moment.DETRACTOR),
        (0, Moment.DETRACTOR),
    ],
)
def test_nps_answers_are_promoters_passives_or_detractors(score: int, moment: Moment) -> None:
    assert nps_moment(score) is moment
    assert event_moments(ev(EventType.SURVEY, survey=SurveyAnswers(nps=score))) == (moment,)


def test_first_purchase_moves_when_an_earlier_purchase_arrives_late() -> None:
    stitcher = new_stitcher()
    view = StateView()
    later = ev(EventType.PURCHASE, 10, amount=Decimal(20))
    browse = ev(EventType.OTHER, 8)
    first = run(stitcher, [later, browse], view)
    assert entries_by_id(first)[later.event_id].moments == (Moment.FIRST_PURCHASE,)
    assert entries_by_id(first)[browse.event_id].stage is Stage.PRE_PURCHASE
    earlier = ev(EventType.PURCHASE, 5, amount=Decimal(7))
    result = run(stitcher, [earlier], view)
    entries = entries_by_id(result)
    assert entries[earlier.event_id].moments == (Moment.FIRST_PURCHASE,)
    assert entries[earlier.event_id].time_since_last_purchase_s is None
    assert entries[later.event_id].moments == ()
    assert entries[later.event_id].time_since_last_purchase_s == 5 * HOUR
    assert entries[browse.event_id].stage is Stage.POST_PURCHASE
    assert result.replaced[later.event_id].moments == (Moment.FIRST_PURCHASE,)
    assert result.replaced[browse.event_id].stage is Stage.PRE_PURCHASE
    assert earlier.event_id not in result.replaced


# --- issue context ---------------------------------------------------------------------------------


def test_issue_context_over_a_multi_contact_issue() -> None:
    calls = [
        contact(0, Channel.PHONE, issue_id="case-1", resolved=False, transfers=2),
        contact(2, Channel.WEB, issue_id="case-1"),
        contact(5, Channel.WEB, issue_id="case-1", resolved=True),
    ]
    result = run(new_stitcher(), calls, StateView())
    one, two, three = (entries_by_id(result)[c.event_id] for c in calls)
    assert (one.is_contact, one.contact_number, one.repeat_contact, one.channel_switch) == (True, 1, False, False)
    assert (one.transfers, one.resolved, one.resolved_at_first_contact, one.issue_key) == (2, False, None, "case-1")
    assert (two.contact_number, two.repeat_contact, two.channel_switch, two.resolved) == (2, True, True, None)
    assert (three.contact_number, three.repeat_contact, three.channel_switch) == (3, True, False)
    assert (three.resolved, three.resolved_at_first_contact, three.time_to_resolution_s) == (True, False, 5 * HOUR)
    assert three.moments == (Moment.SUPPORT_CONTACT, Moment.ISSUE_RESOLVED)


def test_resolution_at_first_contact() -> None:
    call = contact(0, issue_id="case-9", resolved=True)
    (entry,) = run(new_stitcher(), [call], StateView()).entries
    assert (entry.contact_number, entry.resolved_at_first_contact, entry.time_to_resolution_s) == (1, True, 0.0)
    (page,) = run(new_stitcher(), [ev()], StateView()).entries
    assert (page.is_contact, page.contact_number, page.resolved_at_first_contact) == (False, 0, None)


def test_repeat_contact_needs_a_contact_within_the_repeat_window() -> None:
    stitcher = new_stitcher(repeat_contact_window_s=DAY, dedupe_horizon_s=30 * DAY)
    calls = [
        contact(0, issue_id="case-1"),
        contact(48, issue_id="case-1"),  # same case id, outside the repeat window: not a repeat
        contact(0, reason="Billing  Question"),
        contact(48, reason="billing question"),  # no case id: a new issue after the window
    ]
    entries = entries_by_id(run(stitcher, calls, StateView()))
    _, id_again, reason_first, reason_again = (entries[c.event_id] for c in calls)
    assert (id_again.contact_number, id_again.repeat_contact) == (2, False)
    assert (reason_again.contact_number, reason_again.repeat_contact) == (1, False)
    assert reason_first.issue_key == reason_again.issue_key == "reason:billing question"
    assert issue_key(contact(0)) == "reason:unspecified"


def test_a_late_contact_renumbers_the_issue_and_replaces_the_published_versions() -> None:
    stitcher = new_stitcher()
    view = StateView()
    second = contact(4, Channel.WEB, issue_id="case-1", resolved=True)
    first = run(stitcher, [second], view)
    assert entries_by_id(first)[second.event_id].resolved_at_first_contact is True
    earlier = contact(1, Channel.PHONE, issue_id="case-1", resolved=False)
    result = run(stitcher, [earlier], view)
    entry = entries_by_id(result)[second.event_id]
    assert (entry.contact_number, entry.repeat_contact, entry.channel_switch) == (2, True, True)
    assert (entry.resolved_at_first_contact, entry.time_to_resolution_s) == (False, 3 * HOUR)
    assert result.replaced[second.event_id].contact_number == 1
    assert {e.event_id for e in result.entries} == {earlier.event_id, second.event_id}


@pytest.mark.parametrize("link_at", [12.0, 24 * 200.0])
def test_a_merge_recomputes_the_entries_it_changes_whatever_their_age(link_at: float) -> None:
    stitcher = new_stitcher()
    view = StateView()
    mine = contact(10, reason="late", resolved=False)
    theirs = contact(11, Channel.WEB, reason="late", resolved=True, identifiers={ANON: "a1"})
    run(stitcher, [mine, theirs], view)
    link = ev(EventType.IDENTIFY, link_at, identifiers={ANON: "a1", EMAIL: "ann@example.org"})
    assert stitcher.history_needs([link], stitcher.keys_of([link]), view) == {}  # both states still hold these contacts
    result = run(stitcher, [link], view)
    entry = entries_by_id(result)[theirs.event_id]
    assert (entry.customer_id, entry.contact_number, entry.channel_switch) == (ANN, 2, True)
    assert (entry.resolved_at_first_contact, entry.time_to_resolution_s) == (False, HOUR)
    assert result.replaced[theirs.event_id].contact_number == 1
    assert result.replaced[theirs.event_id].customer_id == ANN


def test_time_since_last_purchase() -> None:
    buys = [ev(EventType.PURCHASE, h, amount=Decimal(1)) for h in (0, 30)]
    entries = entries_by_id(run(new_stitcher(), buys, StateView()))
    assert entries[buys[0].event_id].time_since_last_purchase_s is None
    assert entries[buys[1].event_id].time_since_last_purchase_s == 30 * HOUR
    assert entries[buys[1].event_id].moments == ()


def test_open_issues_and_their_abandonment() -> None:
    stitcher = new_stitcher(repeat_contact_window_s=DAY)
    policy = stitcher.policy
    view = StateView()
    stitcher.apply(
        [contact(0, Channel.PHONE, reason="late", resolved=False), contact(3, Channel.WEB, reason="late")],
        view,
    )
    (issue,) = view.customers[ANN].open_issues(policy)
    assert (issue.key, issue.contacts, issue.last_channel) == ("reason:late", 2, "web")
    assert issue.first_contact_at == T0.timestamp()
    stitcher.apply([ev(hours=40)], view)
    assert view.customers[ANN].open_issues(policy) == []


# --- storage and oracle ----------------------------------------------------------------------------


def test_state_round_trips_through_json() -> None:
    view = StateView()
    run(
        new_stitcher(),
        [
            ev(EventType.PURCHASE, 1, amount=Decimal("9.99"), currency="GBP"),
            contact(2, issue_id="case-1", resolved=False),
            ev(EventType.SURVEY, 3, survey=SurveyAnswers(nps=3, ces=2)),
        ],
        view,
    )
    state = view.customers[ANN]
    again = CustomerState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again.to_dict() == state.to_dict()
    policy = Policies.from_settings(Settings()).customer
    assert again.profile(policy) == state.profile(policy)
    assert [again.derive(row, policy) for row in again.history] == [state.derive(r, policy) for r in state.history]
    with pytest.raises(ValueError, match="layout"):
        CustomerState.from_dict(state.to_dict() | {"v": 0})


def test_a_layout_1_state_is_read_as_complete_only_from_its_latest_event() -> None:
    view = StateView()
    run(new_stitcher(), [ev(EventType.PURCHASE, 1, amount=Decimal(1)), ev(hours=2), contact(3, reason="late")], view)
    v2 = view.customers[ANN].to_dict()
    timeline = [
        *v2["history"][:1],
        [T0.timestamp() + 2 * HOUR, "page", "web", "page_view", 0, None, None, None, None, 0, None, "s", []],
        *v2["history"][1:],
    ]
    v1 = {k: v for k, v in v2.items() if k not in ("history", "history_from", "facts_from")}
    v1 |= {"v": 1, "timeline": timeline, "seen": {}}
    state = CustomerState.from_dict(v1)
    assert [row[EVENT_ID] for row in state.history] == [row[EVENT_ID] for row in v2["history"]]  # kept entries only
    assert state.history_from == state.facts_from == state.last_seen
    assert state.to_dict()["v"] == 2


def test_oracle_replays_in_event_time_order() -> None:
    events = [ev(hours=3), ev(EventType.PURCHASE, 1, amount=Decimal(2)), ev(hours=2, identifiers={ANON: "x"})]
    oracle = replay(events, Policies.from_settings(Settings()))
    assert oracle.timelines[ANN] == [events[1].event_id, events[0].event_id]
    assert oracle.stages[ANN] is Stage.PRE_PURCHASE
    assert oracle.identities == {
        "email:ann@example.org": ANN,
        "web_anonymous_id:x": customer_id_for("web_anonymous_id:x"),
    }
    assert oracle.entries[events[1].event_id].moments == (Moment.FIRST_PURCHASE,)
    assert oracle.profiles[ANN].purchases == 1


# --- the experience gap ------------------------------------------------------------------------------


def case_g2() -> list[TouchpointEvent]:
    """A call marked resolved on CASE-G2, a web ticket on CASE-G2 26 hours later, then NPS 2 / CSAT 1."""
    return [
        contact(0, issue_id="CASE-G2", resolved=True),
        contact(26, Channel.WEB, issue_id="CASE-G2"),
        ev(EventType.SURVEY, 30, survey=SurveyAnswers(nps=2, csat=1)),
    ]


POLICIES = Policies.from_settings(Settings())


def figure(metric: str, entries: Iterable[Entry]) -> float | None:
    counters: dict[str, float] = {}
    for entry in entries:
        merge(counters, contributions(entry))
    return value_of(metric, counters)[2]


def test_case_g2_a_recorded_resolution_the_customer_contradicted_is_a_gap_in_any_arrival_order() -> None:
    events = case_g2()
    for order in (events, events[::-1], [events[2], events[0], events[1]]):
        oracle = replay(order, POLICIES)
        call = oracle.entries[events[0].event_id]
        assert call.resolved is True and call.resolution_contradicted is True
        assert call.moments[-1] is Moment.RESOLUTION_CONTRADICTED
        entries = oracle.entries.values()
        assert figure("recorded_fcr", entries) == figure("fcr", entries) == 100.0
        assert figure("confirmed_fcr", entries) == 0.0
        assert figure("experience_gap", entries) == 100.0


@pytest.mark.parametrize(
    ("later", "contradicted"),
    [
        (contact(26, Channel.WEB, issue_id="CASE-G2"), True),  # the same issue again, on any channel
        (contact(26, Channel.WEB, issue_id="CASE-OTHER"), False),  # another issue
        (contact(24 * 8, Channel.WEB, issue_id="CASE-G2"), False),  # after the window (7 days)
        (ev(EventType.SURVEY, 5, survey=SurveyAnswers(csat=2)), True),
        (ev(EventType.SURVEY, 5, survey=SurveyAnswers(csat=3, nps=7, ces=4)), False),
        (ev(EventType.SURVEY, 5, survey=SurveyAnswers(ces=3)), True),  # CES: higher is easier
        (ev(EventType.SURVEY, -5, survey=SurveyAnswers(nps=0)), False),  # before the resolution
    ],
)
def test_what_contradicts_a_resolution(later: TouchpointEvent, contradicted: bool) -> None:
    call = contact(0, issue_id="CASE-G2", resolved=True)
    for order in ([call, later], [later, call]):
        assert replay(order, POLICIES).entries[call.event_id].resolution_contradicted is contradicted


def test_late_evidence_revises_the_resolution_entry_and_a_zero_window_turns_the_gap_off() -> None:
    events = case_g2()
    call, reopened, _ = events
    stitcher, view = new_stitcher(), StateView()
    first = entries_by_id(run(stitcher, [call], view))[call.event_id]
    assert first.resolution_contradicted is False
    result = run(stitcher, [reopened], view)
    revised = entries_by_id(result)[call.event_id]
    assert revised.resolution_contradicted is True and result.replaced[call.event_id] == first
    off = replay(events, Policies.from_settings(Settings(resolution_contradiction_window_s=0)))
    assert off.entries[call.event_id].resolution_contradicted is False
    assert [e.resolution_contradicted for e in off.entries.values() if e.event_id != call.event_id] == [None, None]


def test_a_resolving_calls_own_low_post_call_survey_contradicts_it() -> None:
    for survey, contradicted in ((SurveyAnswers(csat=1), True), (SurveyAnswers(csat=5, nps=9), False)):
        call = contact(0, issue_id="CASE-9", resolved=True, survey=survey)
        assert replay([call], POLICIES).entries[call.event_id].resolution_contradicted is contradicted


def test_plan_link_refuses_a_customer_that_would_take_the_merge_over_the_bound() -> None:
    identities = {"loyalty_id:HOUSE": "house", "email:ann@example.org": "ann", "email:bob@example.org": "bob"}
    sizes = {"house": 40, "ann": 6, "bob": 4}
    bound = MergeBound(10, sizes.__getitem__)

    def plan(*keys: str) -> LinkPlan:
        return plan_link(keys, identities, lambda cid: {}, {}, bound=bound)

    # The strongest key is always taken; a merge of 40 with 6 is not.
    assert plan("loyalty_id:HOUSE", "email:ann@example.org") == (["house"], [], [], [], ["email:ann@example.org"])
    # 6 + 4 is at the bound: merged; a new key joins whatever the sizes.
    assert plan("email:ann@example.org", "email:bob@example.org", "phone:+447900000001") == (
        ["ann", "bob"],
        ["phone:+447900000001"],
        [],
        [],
        [],
    )
    assert plan("phone:+447900000001", "loyalty_id:HOUSE") == (["house"], ["phone:+447900000001"], [], [], [])
    # Counted together: ann and bob fill the bound, so the house is refused after them.
    assert plan("email:ann@example.org", "email:bob@example.org", "loyalty_id:HOUSE").too_large == ["loyalty_id:HOUSE"]


def test_a_customer_over_the_merge_bound_is_merged_with_nobody_and_its_history_is_not_read_back() -> None:
    # A till's "house" loyalty card, scanned for anyone without a card of their own: it holds more touchpoints
    # than the bound, and a merge would read all those since the other customer's first event back into memory.
    stitcher = new_stitcher(window_grace_s=DAY, merge_max_touchpoints=6)
    unbounded = new_stitcher(window_grace_s=DAY)
    view = StateView()
    house_card = {LOYALTY: "HOUSE"}
    till = [contact(24 * d, Channel.STORE, identifiers=house_card, reason="receipt") for d in (0, 1, 2, 3, 4, 5, 100)]
    house = customer_id_for("loyalty_id:HOUSE")
    assert run(stitcher, till[:6], view).outgrown == [], "at the bound"
    assert run(stitcher, till[6:], view).outgrown == [house], "over it: the worker warns, once"
    assert run(stitcher, [ev(hours=24 * d) for d in (3, 4, 100)], view).outgrown == []
    assert view.customers[house].events == 7
    scan = ev(EventType.PURCHASE, 24 * 100.5, Channel.STORE, identifiers={LOYALTY: "HOUSE", EMAIL: "ann@example.org"})
    keys = stitcher.keys_of([scan])
    # Without the bound the merge would need the house's history from Ann's first event (minus the span) on.
    assert house in unbounded.history_needs([scan], keys, view)
    assert stitcher.history_needs([scan], keys, view) == {}

    result = run(stitcher, [scan], view)
    assert result.too_large == {scan.event_id: ["email:ann@example.org"]} and result.over_bound == 1
    assert result.outgrown == [], "it was over the bound before"
    assert not result.merges and not result.refused
    assert view.identities == {"loyalty_id:HOUSE": house, "email:ann@example.org": ANN}
    assert [(e.event_id, e.customer_id) for e in result.entries] == [(scan.event_id, house)]
    # A late contact on the house card still reads back what its own events need.
    late = contact(24 * 2.5, Channel.STORE, identifiers={LOYALTY: "HOUSE", EMAIL: "ann@example.org"}, reason="receipt")
    needs = stitcher.history_needs([late], stitcher.keys_of([late]), view)
    assert needs[house] == late.occurred_at.timestamp() - stitcher.policy.span_s
    # An identifier new to the graph that the batch gives to the house customer takes a later event there too.
    phone = {IdentifierType.PHONE: "+447700900123"}
    given = ev(hours=24 * 100.6, channel=Channel.STORE, identifiers={LOYALTY: "HOUSE"} | phone)
    later = contact(24 * 2.5, Channel.PHONE, identifiers=phone, reason="receipt")
    needs = stitcher.history_needs([given, later], stitcher.keys_of([given, later]), view)
    assert needs == {house: later.occurred_at.timestamp() - stitcher.policy.span_s}


def test_shoppers_who_scan_a_customer_over_the_bound_in_one_batch_are_not_read_back_for_each_other() -> None:
    stitcher = new_stitcher(window_grace_s=DAY, merge_max_touchpoints=6)
    view = StateView()
    run(stitcher, [contact(24 * d, Channel.STORE, identifiers={LOYALTY: "HOUSE"}, reason="r") for d in range(8)], view)
    for who, start in (("ann", 0), ("bob", 5)):
        run(
            stitcher,
            [contact(24 * d, identifiers={EMAIL: f"{who}@example.org"}, reason="r") for d in range(start, 60, 15)],
            view,
        )
    scans = [
        ev(EventType.PURCHASE, 24 * 60.5, Channel.STORE, identifiers={LOYALTY: "HOUSE", EMAIL: f"{who}@example.org"})
        for who in ("ann", "bob")
    ]
    # Neither can merge with the house card's customer, so the house card links nobody to anybody.
    assert stitcher.history_needs(scans, stitcher.keys_of(scans), view) == {}
    result = run(stitcher, scans, view)
    assert not result.merges and result.over_bound == 2
