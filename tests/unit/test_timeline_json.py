"""Timeline records: the domain's plain entries serialise to exactly what the published pydantic model gives."""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from schemas.outputs import Moment, Stage, TimelineEntry
from schemas.touchpoint import Channel, EventType, SurveyAnswers
from streams.domain.entry import Entry
from streams.result_records import timeline_json


def test_an_entry_has_the_published_records_fields_in_its_order() -> None:
    assert [f.name for f in fields(Entry)] == list(TimelineEntry.model_fields)


_TIMES = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
_SECONDS = st.none() | st.floats(min_value=0, max_value=1e12, allow_nan=False)
_AMOUNTS = st.none() | st.decimals(min_value=-(10**12), max_value=10**12, places=4, allow_nan=False)
_SURVEYS = st.none() | st.builds(
    SurveyAnswers,
    nps=st.none() | st.integers(0, 10),
    csat=st.none() | st.integers(1, 5),
    ces=st.none() | st.integers(1, 7),
)


@given(
    customer_id=st.none() | st.text(min_size=1, max_size=20),
    event_id=st.text(min_size=1, max_size=40),
    channel=st.sampled_from(Channel),
    type_=st.sampled_from(EventType),
    occurred_at=_TIMES,
    received_at=_TIMES,
    stage=st.sampled_from(Stage),
    moments=st.lists(st.sampled_from(Moment), max_size=3).map(tuple),
    amount=_AMOUNTS,
    issue_key=st.none() | st.text(max_size=30),
    resolved=st.none() | st.booleans(),
    number=st.integers(0, 50),
    to_resolution=_SECONDS,
    since_purchase=_SECONDS,
    survey=_SURVEYS,
    source_id=st.text(max_size=30),
)
def test_an_entrys_record_is_the_pydantic_models_json(
    customer_id: str | None,
    event_id: str,
    channel: Channel,
    type_: EventType,
    occurred_at: datetime,
    received_at: datetime,
    stage: Stage,
    moments: tuple[Moment, ...],
    amount: Decimal | None,
    issue_key: str | None,
    resolved: bool | None,
    number: int,
    to_resolution: float | None,
    since_purchase: float | None,
    survey: SurveyAnswers | None,
    source_id: str,
) -> None:
    entry = Entry(
        customer_id=customer_id,
        event_id=event_id,
        channel=channel,
        type=type_,
        occurred_at=occurred_at,
        received_at=received_at,
        stage=stage,
        moments=moments,
        amount=amount,
        currency=None if amount is None else "EUR",
        issue_key=issue_key,
        is_contact=type_ is EventType.SUPPORT_CONTACT,
        contact_number=number,
        repeat_contact=number > 1,
        resolved=resolved,
        resolved_at_first_contact=None if resolved is None else resolved and number == 1,
        channel_switch=number % 2 == 1,
        transfers=number // 3,
        time_to_resolution_s=to_resolution,
        time_since_last_purchase_s=since_purchase,
        survey=survey,
        source_id=source_id,
    )
    published = TimelineEntry(**{f.name: getattr(entry, f.name) for f in fields(Entry)})

    assert timeline_json(entry) == published.model_dump_json().encode()
    assert asdict(entry).keys() == published.model_dump().keys()
