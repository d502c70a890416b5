"""The downstream records of what a batch produced: one method per output topic, collected in ``Outputs``.

Keys say what a record is about, so that a compacted topic keeps its latest version: the customer for timeline,
profile and alert records, the alert for experience-drop alerts, the merged customer for identity changes, the cell and metric for metric figures.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.outputs import Alert, ExperienceDropAlert, IdentityChange, MetricScope
from streams.domain.aggregate import CellFigures, CellKey
from streams.domain.entry import Entry
from streams.domain.profile import Profile
from streams.downstream import Outputs

_SCOPE_NAMES = {scope: scope.value for scope in MetricScope}


def _json_default(value: Any) -> Any:
    # What orjson leaves to us in an entry or a profile: amounts (pydantic writes a Decimal as its string). Survey
    # answers are dataclasses, which orjson writes itself.
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not part of a timeline record")


def metric_cell_route(cell: CellKey, start: str | None = None) -> tuple[str, str]:
    """The ``cx.metrics`` key of a cell, ``<scope>|<key>|<window>|<window start, ISO 8601>``, and what its records
    are routed by, ``<scope>|<key>`` (all cells of a customer on one partition). ``start``: the window start's text,
    where the caller made it already."""
    entity = f"{_SCOPE_NAMES[cell.scope]}|{cell.key}"
    return f"{entity}|{cell.window}|{start if start is not None else cell.window_start.isoformat()}", entity


def timeline_json(entry: Entry) -> bytes:
    """The ``TimelineEntry`` record of an entry, as pydantic would serialise it (UTC times with ``Z``)."""
    return orjson.dumps(entry, default=_json_default, option=orjson.OPT_UTC_Z)


def profile_json(profile: Profile) -> bytes:
    """The ``CustomerProfile`` record of a profile, as pydantic would serialise it."""
    return orjson.dumps(profile, default=_json_default, option=orjson.OPT_UTC_Z)


class ResultRecords:
    """Collects one batch's downstream records, in the order they are published."""

    def __init__(self, topics: Topics, outputs: Outputs) -> None:
        self.topics = topics
        self.outputs = outputs

    def timeline(self, entry: Entry) -> None:
        """A timeline entry (a ``TimelineEntry`` record), keyed by its customer (an unattributed one by its event
        id)."""
        self.outputs.add(self.topics.timeline, entry.customer_id or entry.event_id, timeline_json(entry))

    def profile(self, profile: Profile) -> None:
        """A customer's profile (a ``CustomerProfile`` record), keyed by the customer."""
        self.outputs.add(self.topics.profiles, profile.customer_id, profile_json(profile))

    def merge(self, merge: IdentityChange) -> None:
        """An identity change, keyed by the merged customer."""
        self.outputs.add(self.topics.identity, merge.merged_id, merge.model_dump_json().encode())

    def alert(self, alert: Alert) -> None:
        """An alert, keyed by its customer."""
        self.outputs.add(self.topics.alerts, alert.customer_id, alert.model_dump_json().encode())

    def experience_alert(self, alert: ExperienceDropAlert) -> None:
        """An experience-drop alert's new status, keyed by its id (the topic is compacted)."""
        self.outputs.add(self.topics.experience_alerts, alert.alert_id, alert.model_dump_json().encode())

    def dead_letter(self, dead: DeadLetter, value: bytes) -> None:
        """A dead letter as published (``value``: with what the settings keep of its original bytes)."""
        self.outputs.add(self.topics.deadletter, dead.channel or "", value)

    def removed_metrics(self, cells: Iterable[CellKey]) -> None:
        """Tombstones for metric cells that are gone (a merged customer's, folded into its survivor's): on the
        compacted topic they delete the cells' last records, as an erasure's do, so that a consumer holding the
        latest record per key does not count the merged customer's figures a second time."""
        topic, add = self.topics.metrics, self.outputs.add
        for cell in cells:
            key, entity = metric_cell_route(cell)
            add(topic, key, None, entity)

    def metrics(self, cells: Iterable[CellFigures]) -> None:
        """Metric cells (``MetricCellUpdate`` records, one per cell with every figure; SQL holds only the cells'
        counters, the ``metrics`` view computes the same figures). Built as dicts: a batch publishes a record
        for about every customer it touches."""
        topic, add = self.topics.metrics, self.outputs.add
        starts: dict[datetime, str] = {}
        for cell, status, revision, figures in cells:
            scope_name = _SCOPE_NAMES[cell.scope]
            start = cell.window_start
            data = {
                "scope": scope_name,
                "key": cell.key,
                "window": cell.window,
                "window_start": start,
                "window_end": cell.window_end,
                "status": status,
                "revision": revision,
                "figures": {
                    metric: {"numerator": numerator, "denominator": denominator, "value": value, "revision": rev}
                    for metric, numerator, denominator, value, rev in figures
                },
            }
            start_text = starts.get(start)
            if start_text is None:
                start_text = starts[start] = start.isoformat()
            key, entity = metric_cell_route(cell, start_text)
            add(topic, key, orjson.dumps(data), entity)
