"""One batch of input records through the whole domain, into one SQL transaction and one outbox row.

This is the worker's work without Faust: decode and validate envelopes, skip what was already applied,
stitch identities and timelines, aggregate metrics, evaluate alerts, and write everything with the
input offsets. The Faust agent (streams/worker.py) only feeds it batches and publishes the outbox.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from config.settings import Settings
from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.outputs import Alert, MetricScope, MetricUpdate, TimelineEntry
from schemas.touchpoint import TouchpointEvent
from sinks.store import BatchWrite, CellKey, SqlStore, as_utc
from streams.domain.aggregate import MetricAggregator
from streams.domain.alerts import evaluate as evaluate_alerts
from streams.domain.customer import CustomerState
from streams.domain.engine import BatchResult, StateView, StitchEngine, required_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InRecord:
    """One Kafka record as the worker received it."""

    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass
class Outputs:
    """What a committed batch publishes downstream: (topic, key, value) triples, in order."""

    records: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    def add(self, topic: str, key: str, value: bytes) -> None:
        """Queue one downstream record."""
        self.records.append((topic, key.encode(), value))

    def encode(self) -> bytes:
        """Serialise for the outbox row."""
        return orjson.dumps([[topic, key.decode(), value.decode()] for topic, key, value in self.records])

    @staticmethod
    def decode(payload: bytes) -> Outputs:
        """Read an outbox row back."""
        return Outputs([(topic, key.encode(), value.encode()) for topic, key, value in orjson.loads(payload)])


@dataclass
class BatchReport:
    """What happened to one batch, for metrics and logs."""

    events: list[TouchpointEvent] = field(default_factory=list)
    skipped_records: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    result: BatchResult | None = None
    outbox_id: int | None = None
    outputs: Outputs = field(default_factory=Outputs)
    committed_at: datetime | None = None


class BatchProcessor:
    """Applies batches of input records to the SQL state, exactly once per input offset."""

    def __init__(self, settings: Settings, store: SqlStore) -> None:
        self.settings = settings
        self.store = store
        self.topics = Topics(settings.topic_prefix)
        self.group_id = settings.app_id
        self.engine = StitchEngine(settings)
        self.applied: dict[tuple[str, int], int] = {}
        self.watermark: datetime | None = None
        self.reload()

    def reload(self) -> None:
        """Re-read applied offsets and the event-time clock (at start and after every rebalance)."""
        self.applied = self.store.applied_offsets(self.group_id)
        self.watermark = self.store.watermark(self.group_id)

    # --- decoding -------------------------------------------------------------------------------

    def decode(self, records: Sequence[InRecord], report: BatchReport) -> dict[tuple[str, int], int]:
        """Validate the new records' events into ``report``; return the highest offset seen per partition."""
        offsets: dict[tuple[str, int], int] = {}
        for rec in records:
            tp = (rec.topic, rec.partition)
            if rec.offset <= self.applied.get(tp, -1):
                report.skipped_records += 1  # applied before a crash or rebalance: its effects are committed
                continue
            offsets[tp] = max(offsets.get(tp, -1), rec.offset)
            channel = rec.topic.removeprefix(f"{self.settings.topic_prefix}touchpoints.")
            try:
                body = orjson.loads(rec.value)
            except orjson.JSONDecodeError as exc:
                report.dead_letters.append(self._dead(channel, "invalid_json", str(exc), rec.value))
                continue
            items = body if isinstance(body, list) else [body]
            for item in items:
                try:
                    report.events.append(TouchpointEvent.model_validate(item))
                except ValidationError as exc:
                    raw = rec.value if len(items) == 1 else orjson.dumps(item)
                    report.dead_letters.append(self._dead(channel, "validation_error", _describe(exc), raw))
        return offsets

    @staticmethod
    def _dead(channel: str | None, reason: str, detail: str, raw: bytes, stage: str = "worker") -> DeadLetter:
        return DeadLetter(
            channel=channel,
            reason=reason,
            detail=detail,
            stage=stage,
            rejected_at=datetime.now(UTC),
            original_b64=DeadLetter.encode(raw),
        )

    # --- the batch --------------------------------------------------------------------------------

    def process(self, records: Sequence[InRecord]) -> BatchReport:
        """Apply ``records`` in one transaction; return what was done and what to publish."""
        report = BatchReport()
        offsets = self.decode(records, report)
        if not offsets:
            return report
        with self.store.engine.begin() as conn:
            view = StateView(identities=self.store.load_identities(conn, required_keys(report.events, self.settings)))
            view.customers = {
                cid: CustomerState.from_dict(state)
                for cid, state in self.store.load_customers(conn, set(view.identities.values())).items()
            }
            result = self.engine.apply(report.events, view, self.watermark)
            report.result = result
            write = BatchWrite(group_id=self.group_id, offsets=offsets, watermark=result.watermark)
            outputs = report.outputs
            self._stitching_rows(result, view, write, outputs)
            self._metric_rows(conn, result, view, write, outputs)
            for event in result.too_late:
                dead = self._dead(
                    event.channel,
                    "too_late",
                    f"occurred_at {event.occurred_at.isoformat()} is older than the allowed lateness",
                    event.model_dump_json().encode(),
                )
                report.dead_letters.append(dead)
            for dead in report.dead_letters:
                outputs.add(self.topics.deadletter, dead.channel or "", dead.model_dump_json().encode())
            write.outbox = outputs.encode() if outputs.records else None
            report.outbox_id = self.store.write(conn, write)
        report.committed_at = datetime.now(UTC)
        self.applied.update(offsets)
        self.watermark = result.watermark
        return report

    def _stitching_rows(self, result: BatchResult, view: StateView, write: BatchWrite, outputs: Outputs) -> None:
        topics = self.topics
        now = datetime.now(UTC)
        for merge in result.merges:
            write.merges.append(
                {
                    "survivor_id": merge.survivor_id,
                    "merged_id": merge.merged_id,
                    "event_id": merge.event_id,
                    "identifiers": {str(k): v for k, v in merge.identifiers.items()},
                    "occurred_at": merge.occurred_at,
                }
            )
            outputs.add(topics.identity, merge.merged_id, merge.model_dump_json().encode())
        write.removed_customers = sorted(result.removed)
        for profile in result.profiles:
            state = view.customers[profile.customer_id]
            write.customers.append(
                {
                    "customer_id": profile.customer_id,
                    "first_seen": profile.first_seen,
                    "last_seen": profile.last_seen,
                    "stage": profile.stage.value,
                    "events": profile.events,
                    "purchases": profile.purchases,
                    "revenue": profile.revenue,
                    "contacts": profile.contacts,
                    "returns": profile.returns,
                    "open_issues": profile.open_issues,
                    "state": state.to_dict(),
                }
            )
            outputs.add(topics.profiles, profile.customer_id, profile.model_dump_json().encode())
        for key, (customer_id, first_seen, last_seen) in result.identities.items():
            id_type, _, id_value = key.partition(":")
            write.identities.append(
                {
                    "identifier": key,
                    "id_type": id_type,
                    "id_value": id_value,
                    "customer_id": customer_id,
                    "first_seen": first_seen,
                    "last_seen": last_seen,
                }
            )
        for entry in result.entries:
            write.touchpoints.append(_touchpoint_row(entry, now))
            outputs.add(topics.timeline, entry.customer_id, entry.model_dump_json().encode())

    def _metric_rows(
        self, conn: Any, result: BatchResult, view: StateView, write: BatchWrite, outputs: Outputs
    ) -> None:
        aggregator = MetricAggregator(self.settings)
        for merge in result.merges:
            aggregator.absorb_customer(
                merge.merged_id,
                merge.survivor_id,
                self.store.load_customer_cells(conn, [merge.merged_id]),
            )
        for entry in result.entries:
            aggregator.add(entry)
        current = self.store.load_cells(conn, aggregator.touched())
        cells, updates = aggregator.updates(current)
        write.removed_cells = aggregator.removed()
        for cell_key, counters in cells.items():
            scope, key, window, start = cell_key
            write.cells.append(_cell_row(cell_key, counters, aggregator.window_end(cell_key)))
        for update in updates:
            write.metric_rows.append(_metric_row(update))
            outputs.add(self.topics.metrics, _metric_key(update), update.model_dump_json().encode())
        alerts: list[Alert] = []
        for entry in result.entries:
            state = view.customers.get(entry.customer_id)
            recent = state.recent_entries() if state else [entry]
            alerts.extend(evaluate_alerts(entry, recent, self.settings))
        seen: set[str] = set()
        for alert in alerts:
            if alert.alert_id in seen:
                continue
            seen.add(alert.alert_id)
            write.alerts.append(_alert_row(alert))
            outputs.add(self.topics.alerts, alert.customer_id, alert.model_dump_json().encode())


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _touchpoint_row(entry: TimelineEntry, now: datetime) -> dict[str, Any]:
    survey = entry.survey
    return {
        "event_id": entry.event_id,
        "customer_id": entry.customer_id,
        "channel": entry.channel.value,
        "type": entry.type.value,
        "occurred_at": entry.occurred_at,
        "received_at": entry.received_at,
        "committed_at": now,
        "stage": entry.stage.value,
        "moments": ",".join(m.value for m in entry.moments),
        "amount": entry.amount,
        "currency": entry.currency,
        "issue_id": entry.issue_key if entry.is_contact else None,
        "issue_key": entry.issue_key,
        "resolved": entry.resolved,
        "repeat_contact": entry.repeat_contact,
        "nps": survey.nps if survey else None,
        "csat": survey.csat if survey else None,
        "ces": survey.ces if survey else None,
        "source_system": entry.channel.value,
        "source_id": entry.source_id,
    }


def _cell_row(cell: CellKey, counters: dict[str, float], window_end: datetime) -> dict[str, Any]:
    scope, key, window, start = cell
    return {
        "scope": scope,
        "key": key,
        "window": window,
        "window_start": start,
        "window_end": window_end,
        "counters": counters,
        "final": False,
    }


def _metric_row(update: MetricUpdate) -> dict[str, Any]:
    return {
        "scope": update.scope.value,
        "key": update.key,
        "metric": update.metric,
        "window": update.window,
        "window_start": update.window_start,
        "window_end": update.window_end,
        "numerator": update.numerator,
        "denominator": update.denominator,
        "value": update.value,
        "status": update.status,
        "revision": update.revision,
    }


def _metric_key(update: MetricUpdate) -> str:
    return f"{update.scope.value}|{update.key}|{update.metric}|{update.window}|{update.window_start.isoformat()}"


def _alert_row(alert: Alert) -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "customer_id": alert.customer_id,
        "rule": alert.rule,
        "severity": alert.severity.value,
        "occurred_at": alert.occurred_at,
        "evidence": list(alert.evidence),
        "message": alert.message,
    }


__all__ = ["BatchProcessor", "BatchReport", "InRecord", "MetricScope", "Outputs", "Tally", "as_utc"]
