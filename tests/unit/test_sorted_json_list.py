"""``SortedJsonList``: a JSON list written in key order from a temporary file, as ``dumps`` writes the list."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from streams.inspection import SortedJsonList, dumps

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def written(listed: SortedJsonList) -> str:
    lines: list[str] = []
    listed.write(lines.append)
    listed.close()
    return "\n".join(lines)


@given(st.dictionaries(st.integers(), _JSON, max_size=6))
def test_the_list_is_what_dumps_gives_of_the_items_in_key_order(items: dict[int, object]) -> None:
    listed = SortedJsonList()
    for key, item in items.items():
        listed.add(key, item)
    assert written(listed) == dumps([items[key] for key in sorted(items)])


def test_times_and_decimals_are_written_as_dumps_writes_them() -> None:
    # The dead-letter list's keys are (rejected_at, partition, offset) and its items hold times.
    late, early = datetime(2026, 12, 7, 10, tzinfo=UTC), datetime(2026, 12, 7, 9, tzinfo=UTC)
    listed = SortedJsonList()
    listed.add((late, 0, 5), {"at": late, "amount": Decimal("1.50")})
    listed.add((early, 1, 2), {"at": early, "nested": {"list": [1, "two"]}})
    expected = dumps([{"at": early, "nested": {"list": [1, "two"]}}, {"at": late, "amount": Decimal("1.50")}])
    assert written(listed) == expected
