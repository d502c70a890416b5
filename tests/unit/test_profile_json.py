"""Profile records: the domain's plain profiles serialise to exactly what the published pydantic model gives."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas.outputs import CustomerProfile, Stage
from schemas.touchpoint import Channel, IdentifierType
from streams.domain.profile import Profile
from streams.result_records import profile_json


def test_a_profile_has_the_published_records_fields_in_its_order() -> None:
    assert [f.name for f in fields(Profile)] == list(CustomerProfile.model_fields)


_TIMES = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
_TRAITS = st.dictionaries(
    st.text(min_size=1, max_size=10),
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20) | st.lists(st.text(max_size=5)),
    max_size=5,
)


@given(
    customer_id=st.text(min_size=1, max_size=20),
    first_seen=_TIMES,
    last_seen=_TIMES,
    stage=st.sampled_from(Stage),
    identifiers=st.dictionaries(
        st.sampled_from([t.value for t in IdentifierType]), st.lists(st.text(max_size=20), max_size=3), max_size=4
    ),
    counts=st.tuples(*[st.integers(0, 10**6)] * 5),
    engagement=st.integers(0, 1000).map(lambda n: round(n / 10, 1)),
    revenue=st.decimals(min_value=-(10**12), max_value=10**12, places=2, allow_nan=False),
    channels=st.dictionaries(st.sampled_from([c.value for c in Channel]), st.integers(0, 10**6)),
    traits=_TRAITS,
    groups=st.lists(st.text(max_size=10), max_size=3),
    merged_into=st.none() | st.text(min_size=1, max_size=20),
)
def test_a_profiles_record_is_the_pydantic_models_json(
    customer_id: str,
    first_seen: datetime,
    last_seen: datetime,
    stage: Stage,
    identifiers: dict[str, list[str]],
    counts: tuple[int, int, int, int, int],
    engagement: float,
    revenue: Decimal,
    channels: dict[str, int],
    traits: dict[str, Any],
    groups: list[str],
    merged_into: str | None,
) -> None:
    events, purchases, contacts, returns, open_issues = counts
    profile = Profile(
        customer_id=customer_id,
        first_seen=first_seen,
        last_seen=last_seen,
        stage=stage,
        identifiers=identifiers,
        events=events,
        purchases=purchases,
        revenue=revenue,
        contacts=contacts,
        returns=returns,
        open_issues=open_issues,
        engagement=engagement,
        channels=channels,
        traits=traits,
        groups=groups,
        merged_into=merged_into,
    )
    published = CustomerProfile.model_validate({f.name: getattr(profile, f.name) for f in fields(Profile)})

    assert profile_json(profile) == published.model_dump_json().encode()
