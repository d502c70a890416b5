"""The SQL rows of what a batch produced (``sinks.contract``): one function per table, from the domain's results.

The expected-results oracle of the tests builds its rows with these same functions, so a run compares with the
worker's tables row for row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import orjson

from schemas.outputs import Alert, ExperienceDropAlert, IdentityChange
from schemas.touchpoint import TouchpointEvent
from sinks.contract import (
    AlertRow,
    CellKey,
    CellRow,
    CustomerRow,
    ExperienceAlertRow,
    IdentityRow,
    MergeRow,
    StoredIdentity,
    TouchpointRow,
)
from sinks.sql import as_utc
from streams.domain.customer import REASON_PREFIX, CustomerPolicy, CustomerState, identify_details
from streams.domain.entry import Entry
from streams.domain.identity import EventKeys
from streams.domain.profile import Profile
from streams.domain.stitching import BatchResult, Split


def overdue_at(state: CustomerState, policy: CustomerPolicy, issue_target_s: float) -> datetime | None:
    """When the customer's earliest open issue passes its target time (None without open issues)."""
    firsts = [issue.first_contact_at for issue in state.open_issues(policy)]
    if not firsts:
        return None
    return datetime.fromtimestamp(min(firsts) + issue_target_s, UTC)


def customer_row(profile: Profile, state: CustomerState, overdue: datetime | None) -> CustomerRow:
    """The ``customers`` row of a customer's profile and state."""
    return CustomerRow(
        customer_id=profile.customer_id,
        first_seen=as_utc(profile.first_seen),
        last_seen=as_utc(profile.last_seen),
        stage=profile.stage.value,
        events=profile.events,
        purchases=profile.purchases,
        revenue=profile.revenue,
        contacts=profile.contacts,
        returns=profile.returns,
        open_issues=profile.open_issues,
        overdue_at=overdue,
        state=state.to_dict(),
        traits=profile.traits,
        engagement=profile.engagement,
        channels=",".join(sorted(profile.channels)),
    )


#: ``identities.last_seen`` is the UTC day of the latest event that carried the key, not its time: a key's row
#: is then rewritten once a day at most, not for every event (identity rows were most of a batch's rows, most
#: of them only moving ``last_seen``). A day, not a rounding of the arrival: the result is the same in any order.
IDENTITY_SEEN_DAY_S = 86_400


def seen_day(at: datetime) -> datetime:
    """The UTC day (its midnight) ``identities.last_seen`` records for an event at ``at``."""
    seconds = int(at.timestamp())
    return datetime.fromtimestamp(seconds - seconds % IDENTITY_SEEN_DAY_S, UTC)


def identity_rows(
    events: Sequence[TouchpointEvent],
    keys: Sequence[EventKeys],
    result: BatchResult,
    identities: Mapping[str, str],
    stored: Mapping[str, StoredIdentity],
) -> list[IdentityRow]:
    """The identity rows the batch's accepted events change: keys new to the table, keys now of another customer,
    and keys seen earlier than their ``first_seen`` or on a later day than their ``last_seen``.

    ``stored``: the table's rows of the keys (the keys missing from it are new). Keys of a merged customer that
    no event carried are re-pointed by the merge itself; keys a split moved to another customer are re-pointed here.
    """
    accepted = {entry.event_id for entry in result.entries}
    # By object, not id: a conflicting record shares its id with an accepted event of another customer.
    conflicting = {id(event) for event, _ in result.conflicts}
    seen: dict[str, tuple[datetime, datetime]] = {}
    for event, event_keys in zip(events, keys, strict=True):
        if event.event_id not in accepted or id(event) in conflicting:
            continue
        at = as_utc(event.occurred_at)
        for key in event_keys.keys:
            if key in identities:
                first, last = seen.get(key, (at, at))
                seen[key] = (min(first, at), max(last, at))
    rows = []
    for key, (first, last) in seen.items():
        customer_id, day = identities[key], seen_day(last)
        old = stored.get(key)
        if old is not None:
            if customer_id == old.customer_id and first >= old.first_seen and day <= old.last_seen:
                continue
            first, day = min(first, old.first_seen), max(day, old.last_seen)
        id_type, _, id_value = key.partition(":")
        rows.append(IdentityRow(key, id_type, id_value, customer_id, first, day))
    if result.splits:
        for key, customer_id in result.identities.items():
            old = stored.get(key)
            if key not in seen and old is not None and old.customer_id != customer_id:
                id_type, _, id_value = key.partition(":")
                rows.append(IdentityRow(key, id_type, id_value, customer_id, old.first_seen, old.last_seen))
    return rows


def stitched_by(event: TouchpointEvent, keys: Sequence[str]) -> tuple[str | None, str | None]:
    """What a touchpoint row records of its event for a split to apply it again: the keys it linked (those its
    customer holds) and what a customer state keeps of an identify call, as JSON (None: none)."""
    details = identify_details(event)
    return (
        orjson.dumps(keys).decode() if keys else None,
        None if details is None else orjson.dumps(details).decode(),
    )


def touchpoint_row(
    entry: Entry, now: datetime, identifier_keys: str | None = None, identify: str | None = None
) -> TouchpointRow:
    """The ``touchpoints`` row of a timeline entry committed at ``now``, with what ``stitched_by`` records of its
    event (a revision of an entry passes None: the first version's are kept)."""
    survey = entry.survey
    key = entry.issue_key
    return TouchpointRow(
        event_id=entry.event_id,
        customer_id=entry.customer_id,
        channel=entry.channel.value,
        type=entry.type.value,
        occurred_at=as_utc(entry.occurred_at),
        received_at=as_utc(entry.received_at),
        committed_at=now,
        stage=entry.stage.value,
        moments=",".join(m.value for m in entry.moments),
        amount=entry.amount,
        currency=entry.currency,
        issue_id=None if key is None or key.startswith(REASON_PREFIX) else key,
        issue_key=key,
        resolved=entry.resolved,
        transfers=entry.transfers,
        repeat_contact=entry.repeat_contact,
        nps=survey.nps if survey else None,
        csat=survey.csat if survey else None,
        ces=survey.ces if survey else None,
        source_id=entry.source_id,
        resolution_contradicted=entry.resolution_contradicted,
        identifier_keys=identifier_keys,
        identify=identify,
    )


def cell_row(cell: CellKey, counters: dict[str, float], *, final: bool) -> CellRow:
    """The ``metric_cells`` row of a cell's counters."""
    return CellRow(cell.scope.value, cell.key, cell.window, cell.window_start, cell.window_end, counters, final)


def alert_row(alert: Alert) -> AlertRow:
    """The ``alerts`` row of an alert."""
    return AlertRow(
        alert_id=alert.alert_id,
        customer_id=alert.customer_id,
        rule=alert.rule,
        severity=alert.severity.value,
        occurred_at=as_utc(alert.occurred_at),
        evidence=list(alert.evidence),
        message=alert.message,
    )


def experience_alert_row(alert: ExperienceDropAlert, decided_at: datetime) -> ExperienceAlertRow:
    """The ``experience_alerts`` row of an experience-drop alert decided at ``decided_at``: the record's fields but
    the rule and severity (one rule, one severity), and the scope as its value."""
    values = alert.model_dump(exclude={"rule", "severity"})
    return ExperienceAlertRow(**{**values, "scope": alert.scope.value}, decided_at=decided_at)


def removal_row(split: Split, survivor_id: str) -> MergeRow:
    """The ``identity_merges`` row of the customer ``split`` was applied to, when no side kept its id: it lives on
    in ``survivor_id``, the side that kept the identifiers not moved (an erasure of that customer then finds it)."""
    return MergeRow(
        merged_id=split.customer_id,
        survivor_id=survivor_id,
        event_id=split.split_id,
        identifiers={},
        occurred_at=as_utc(split.at),
        merged_into=survivor_id,
    )


def merge_row(merge: IdentityChange, survivor_id: str) -> MergeRow:
    """The ``identity_merges`` row of a merge whose merged customer lives on ``survivor_id`` after the batch's later
    merges (``identity.repoint``)."""
    return MergeRow(
        merged_id=merge.merged_id,
        survivor_id=survivor_id,
        event_id=merge.event_id,
        identifiers={str(k): v for k, v in merge.identifiers.items()},
        occurred_at=as_utc(merge.occurred_at),
        merged_into=merge.survivor_id,
    )
