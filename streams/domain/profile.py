"""A customer's summary as the domain computes it: the fields of the published ``CustomerProfile`` record.

The fields, and their order, are those of ``schemas.outputs.CustomerProfile`` (the pydantic model the JSON Schema
of the profiles topic comes from), so the record serialised from a ``Profile`` is the same JSON
(``tests/unit/test_profile_json.py``). A plain dataclass, not the model, for the reason ``Entry`` is one: a batch
profiles every customer it touched, and validating a model per profile only to serialise it again cost ~5 µs an
event (``python -m bench.apply``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from schemas.outputs import Stage


@dataclass(frozen=True, slots=True)
class Profile:
    """Current summary of one customer (``CustomerProfile``'s fields; plain ``str`` keys where it has enums)."""

    customer_id: str
    first_seen: datetime
    last_seen: datetime
    stage: Stage
    #: Identifier values by type (``IdentifierType`` values), anonymous ids left out.
    identifiers: dict[str, list[str]] = field(default_factory=dict)
    events: int = 0
    purchases: int = 0
    revenue: Decimal = Decimal(0)
    contacts: int = 0
    returns: int = 0
    open_issues: int = 0
    #: Engagement score in [0, 100] (``streams.domain.engagement``).
    engagement: float = 0.0
    #: Touchpoints by channel (``Channel`` values).
    channels: dict[str, int] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    #: Set (tombstone-like) when this customer was merged away.
    merged_into: str | None = None
