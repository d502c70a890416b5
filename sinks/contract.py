"""What the apply path and a results sink agree on: typed rows, one batch's write, and the sink's interface.

The rows are plain NamedTuples whose fields are the table's columns in order (``sinks.tables``), so the SQL
implementation binds them as they are, and a test reads them as dicts with ``_asdict()``. Metric cells are
named by the domain's ``CellKey`` everywhere; only the SQL implementation turns it into column values.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from schemas.outputs import MetricScope
from streams.domain.aggregate import CellKey
from streams.domain.customer import StoredEntry
from streams.domain.event_time import PartitionTime, TopicPartition
from streams.domain.stitching import StoredEvent

__all__ = [
    "AlertRow",
    "BatchWrite",
    "CellKey",
    "CellRow",
    "Clock",
    "Contended",
    "CustomerRow",
    "IdentityRow",
    "MergeRow",
    "ParkedEvent",
    "ResultSink",
    "StoredIdentity",
    "TouchpointRow",
]


class CustomerRow(NamedTuple):
    """A ``customers`` row: the profile's figures and the stitching state they come from."""

    customer_id: str
    first_seen: datetime
    last_seen: datetime
    stage: str
    events: int
    purchases: int
    revenue: Decimal
    contacts: int
    returns: int
    open_issues: int
    #: When the earliest open issue passes its target time (None without open issues).
    overdue_at: datetime | None
    state: dict[str, Any]
    #: The profile's traits (latest identify value per trait).
    traits: dict[str, Any]
    #: The profile's engagement score, 0-100.
    engagement: float
    #: The channels the customer was met in, sorted and comma-separated (the engagement distribution's channels).
    channels: str
    #: The row's version when inserted; an update counts the stored one up instead (``SqlSink``).
    version: int = 1


class IdentityRow(NamedTuple):
    """An ``identities`` row: which customer an identifier key belongs to, when it was first seen (exactly) and
    last seen (the UTC day, ``result_rows.IDENTITY_SEEN_DAY_S``)."""

    identifier: str
    id_type: str
    id_value: str
    customer_id: str
    first_seen: datetime
    last_seen: datetime


class StoredIdentity(NamedTuple):
    """What the ``identities`` table holds of a key: the batch needs it to know whether its row must change."""

    customer_id: str
    first_seen: datetime
    last_seen: datetime


class TouchpointRow(NamedTuple):
    """A ``touchpoints`` row: one timeline entry as committed."""

    event_id: str
    customer_id: str | None
    channel: str
    type: str
    occurred_at: datetime
    received_at: datetime
    committed_at: datetime
    stage: str
    moments: str
    amount: Decimal | None
    currency: str | None
    issue_id: str | None
    issue_key: str | None
    resolved: bool | None
    transfers: int
    repeat_contact: bool
    nps: int | None
    csat: int | None
    ces: int | None
    source_id: str
    resolution_contradicted: bool | None
    #: JSON list of the keys the event was stitched by; kept from the first version (a revision passes None).
    identifier_keys: str | None = None
    #: JSON of what the state keeps of an identify call (``customer.identify_details``); kept like the keys.
    identify: str | None = None


class CellRow(NamedTuple):
    """A ``metric_cells`` row: the additive counters of one cell."""

    scope: str
    key: str
    window: str
    window_start: datetime
    window_end: datetime
    counters: dict[str, float]
    final: bool

    @property
    def cell(self) -> CellKey:
        """The cell this row holds."""
        return cell_key(self.scope, self.key, self.window, self.window_start)


class AlertRow(NamedTuple):
    """An ``alerts`` row."""

    alert_id: str
    customer_id: str
    rule: str
    severity: str
    occurred_at: datetime
    evidence: list[str]
    message: str


class ExperienceAlertRow(NamedTuple):
    """An ``experience_alerts`` row."""

    alert_id: str
    status: str
    scope: str
    key: str
    metric: str
    window: str
    window_start: datetime
    window_end: datetime
    baseline_start: datetime
    value: float | None
    baseline: float | None
    answers: int
    baseline_answers: int
    margin: float
    z: float
    revision: int
    decided_at: datetime
    message: str


class MergeRow(NamedTuple):
    """An ``identity_merges`` row: a customer merged into another, with the evidence."""

    merged_id: str
    survivor_id: str
    event_id: str
    identifiers: dict[str, str]
    occurred_at: datetime
    #: The customer this merge joined it to; ``survivor_id`` is re-pointed by later merges, this never is.
    merged_into: str


class ParkedEvent(NamedTuple):
    """An event a batch could not apply without waiting for another worker's batch (its customer was held), stored
    for the group's next batch (``parked_events``)."""

    #: Its row id; None until stored.
    id: int | None
    occurred_at: datetime
    event_id: str
    #: Where it was read (topic, partition, offset): of two copies of one event, the first read goes first.
    read_at: tuple[str, int, int]
    #: Batches that found its customer held (a batch that takes it with this many or more waits for the lock).
    attempts: int
    #: The event as validated (``TouchpointEvent.model_dump_json``).
    event: bytes


class Contended(Exception):
    """A concurrent batch of another worker took first what this batch meant to take (a new identifier key, a new
    event id), or the two waited for each other (a deadlock): the transaction is rolled back and the batch
    applied again on what that worker committed."""


def cell_key(scope: str, key: str, window: str, window_start: datetime) -> CellKey:
    """The domain's key of a cell stored as these column values."""
    return CellKey(MetricScope(scope), key, window, int(window_start.timestamp()))


class OutboxRow(NamedTuple):
    """A committed batch's downstream records waiting to be published, and the worker that committed them."""

    id: int
    worker_id: str
    payload: bytes


class Clock(NamedTuple):
    """A consumer group's event-time clock and commit sequence (one ``stream_clock`` row)."""

    watermark: datetime | None
    swept_to: datetime | None
    #: Batches of state the group committed: each batch that changes state adds one.
    sequence: int


@dataclass
class BatchWrite:
    """Everything one batch changes, written in one transaction."""

    group_id: str
    offsets: dict[TopicPartition, int]
    worker_id: str = ""
    #: Digest of the record at each partition's new applied offset (``record_fingerprint``).
    fingerprints: dict[TopicPartition, str] = field(default_factory=dict)
    #: Event time of the partitions this batch moved.
    partitions: dict[TopicPartition, PartitionTime] = field(default_factory=dict)
    #: The group's watermark and how far it was swept, when they moved.
    watermark: datetime | None = None
    swept_to: datetime | None = None
    #: Whether state others may have cached changed (the group's commit sequence then moves).
    state_changed: bool = False
    #: Identifier keys and event ids the batch found absent and adds: another worker's batch may add them at the
    #: same moment, so their rows are only inserted, and the batch is ``Contended`` if one was there meanwhile.
    claimed_identities: set[str] = field(default_factory=set)
    claimed_events: set[str] = field(default_factory=set)
    #: Merges made by hand the batch applied (``manual_merges`` rows to mark applied).
    manual_merges: list[str] = field(default_factory=list)
    #: Splits made by hand the batch applied (``manual_splits`` rows to mark applied).
    manual_splits: list[str] = field(default_factory=list)
    #: Splits made by hand the batch refused, with why (a customer of more touchpoints than the bound): marked
    #: applied, with a ``split_refused`` audit row instead of ``split_applied``.
    refused_splits: dict[str, str] = field(default_factory=dict)
    #: Customers a split formed again: their old ``identity_merges`` rows (merged into the customer split) go.
    split_off: list[str] = field(default_factory=list)
    #: Identifier keys a split left with no customer: their ``identities`` rows go.
    forgotten: list[str] = field(default_factory=list)
    #: The batch's merges in order, each with the survivor its merged customer lives on after the batch.
    merges: list[MergeRow] = field(default_factory=list)
    #: Merged customer id -> the customer its stored rows (identities, touchpoints, alerts, merges it survived)
    #: move to: the batch's merges applied in order, at once (``identity.repoint``).
    repointed: dict[str, str] = field(default_factory=dict)
    #: Customers a split left without their id (no side keeps it: its key moved, or the identifier priority
    #: changed), each as the ``identity_merges`` row that records it living on in the customer keeping the kept
    #: identifiers (no evidence: no identifier linked them). The split writes their touchpoints and identities
    #: again; the rows that name them as a survivor (``identity_merges``) or an owner (``alerts``) move there, before
    #: the batch's merges move theirs.
    split_removed: list[MergeRow] = field(default_factory=list)
    #: Merged customers a split formed again and merged once more, as their re-stitch's merge rows: these replace
    #: their stored ``identity_merges`` rows (else a row would keep one side's evidence on the other side).
    relinked: list[MergeRow] = field(default_factory=list)

    removed_customers: list[str] = field(default_factory=list)
    customers: list[CustomerRow] = field(default_factory=list)
    identities: list[IdentityRow] = field(default_factory=list)
    #: Keys among ``identities`` stored already, with the same customer: only their first and last seen move, so
    #: their rows are written without setting the customer (SQLite rewrites an index entry whenever its column is
    #: set, even to the same value).
    seen_identities: set[str] = field(default_factory=set)
    touchpoints: list[TouchpointRow] = field(default_factory=list)
    #: The batch's metric cells by key (a cell finalised by the sweep replaces the batch's own row of it).
    cells: dict[CellKey, CellRow] = field(default_factory=dict)
    removed_cells: list[CellKey] = field(default_factory=list)
    alerts: list[AlertRow] = field(default_factory=list)
    #: Experience-drop alerts whose status or figures the batch changed (replacing the stored rows).
    experience_alerts: list[ExperienceAlertRow] = field(default_factory=list)
    outbox: bytes | None = None
    #: Events this batch parks (their customer held by another worker's batch), and the ids of the parked rows it
    #: took (applied, or parked again among ``parked``).
    parked: list[ParkedEvent] = field(default_factory=list)
    unparked: list[int] = field(default_factory=list)
    #: New identifier keys the batch claimed (``ResultSink.claim_keys``): their claims go with its commit.
    claims: set[str] = field(default_factory=set)

    def split_moved(self) -> dict[str, str]:
        """``split_removed`` as removed id -> the customer its rows move to."""
        return {row.merged_id: row.survivor_id for row in self.split_removed}


class HandRules(NamedTuple):
    """What hand-made identity changes leave in force, as of ``changes`` of them (``audit_log`` rows)."""

    changes: int
    #: Suppression entries: salted hashes of erased people's identifier keys.
    suppressed: set[str]
    #: Never-link rules: pairs of identifier keys no customer may hold both of.
    never_link: list[tuple[str, str]]
    #: Merges made by hand not applied yet: (merge id, key, key, when asked).
    merges: list[tuple[str, str, str, datetime]] = []
    #: Splits made by hand not applied yet: (split id, customer id, keys to move, when asked).
    splits: list[tuple[str, str, tuple[str, ...], datetime]] = []


class ResultSink(Protocol):
    """The results store the batch processor reads state from and commits batches to.

    Reads and the write of one batch run inside one transaction (``transaction``); the handle it yields is
    passed back to every call. ``sinks.sql.SqlSink`` implements it on SQLite and PostgreSQL.
    """

    def transaction(self) -> AbstractContextManager[Any]:
        """Begin a transaction; it commits when the block ends and rolls back when it raises."""

    #: Whether batches of several workers may commit at once (PostgreSQL), each locking only what it touches; else
    #: (SQLite) a transaction holds the whole database and the lock methods only read.
    concurrent: bool

    def lock_partitions(self, tx: Any, group_id: str, partitions: Iterable[TopicPartition]) -> None:
        """Keep other workers from applying the same input partitions until the transaction ends."""

    def lock_customers(self, tx: Any, ids: Iterable[str]) -> dict[str, int]:
        """Lock the rows of the given customers until the transaction ends (in a fixed order); return the version
        of each that exists."""

    def try_lock_customers(self, tx: Any, ids: Iterable[str]) -> tuple[dict[str, int], set[str]]:
        """``lock_customers`` without waiting: the versions of those locked, and the ids of those another
        transaction holds (existing, not locked)."""

    def claim_keys(self, tx: Any, keys: Collection[str]) -> set[str]:
        """Claim identifier keys no row holds, so that other batches do not add them meanwhile, without waiting;
        return those another batch in progress claimed (the batch deletes its claims with its commit:
        ``BatchWrite.claims``)."""

    def take_parked(self, tx: Any, group_id: str, limit: int, ids: Collection[int] | None = None) -> list[ParkedEvent]:
        """Up to ``limit`` of the group's parked events (of ``ids`` only, if given), oldest first, that no other
        transaction took; locked until the transaction ends (the batch deletes those it takes:
        ``BatchWrite.unparked``)."""

    def drop_parked(self, tx: Any, group_id: str, ids: Collection[int]) -> list[bytes]:
        """Delete the given parked events of the group; return the events deleted."""

    def parked_event_ids(self, tx: Any, group_id: str, taken: Collection[int]) -> set[str]:
        """The event ids of the group's parked events but those ``taken``."""

    def oldest_parked(self, tx: Any, group_id: str, taken: Collection[int]) -> datetime | None:
        """The earliest ``occurred_at`` of the group's parked events but those ``taken``; None if there are none."""

    def lock_clock(self, tx: Any, group_id: str) -> Clock:
        """Lock the group's clock until the transaction ends, and read it: what batches share (the watermark, the
        sweep, the channel and overall metric cells) is changed by one batch at a time."""

    def clock_in(self, tx: Any, group_id: str) -> Clock:
        """The group's clock as last committed."""

    def applied_offsets(self, group_id: str) -> dict[TopicPartition, int]:
        """Each input partition's highest offset whose effects are committed."""

    def applied_offsets_in(self, tx: Any, group_id: str) -> dict[TopicPartition, int]:
        """``applied_offsets`` inside the caller's transaction."""

    def clock(self, group_id: str) -> Clock:
        """The group's clock, outside any batch."""

    def load_identities(self, tx: Any, keys: Iterable[str]) -> dict[str, StoredIdentity]:
        """The stored row of each known identifier key."""

    def load_applied(self, tx: Any, event_ids: Iterable[str]) -> dict[str, str | None]:
        """customer_id of each given event id that was applied (None: unattributed)."""

    def load_customers(self, tx: Any, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored per-customer state of each known customer."""

    def load_history(
        self, tx: Any, ranges: Mapping[str, tuple[datetime, datetime]]
    ) -> dict[str, tuple[list[StoredEntry], tuple[datetime, str] | None]]:
        """Per customer, the touchpoints a state keeps in ``[since, until)`` and the latest purchase before."""

    def load_hand_rules(self, tx: Any, known: int) -> HandRules | None:
        """When there are not ``known`` hand-made identity changes (erasures, never-link rules added or removed),
        what they leave in force; else None."""

    def customer_keys(self, tx: Any, customer_id: str) -> list[str]:
        """Every identifier key the customer holds."""

    def count_touchpoints(self, tx: Any, customer_id: str, up_to: int) -> int:
        """How many touchpoints the customer has, counted up to ``up_to``."""

    def load_customer_events(self, tx: Any, customer_id: str) -> list[StoredEvent]:
        """Every touchpoint of the customer, as a split applies it again."""

    def applied_links(self, tx: Any, keys: Collection[str]) -> list[tuple[str, str, str, datetime]]:
        """The merges made by hand, applied, that named one of ``keys``: (merge id, key, key, when asked)."""

    def load_cells(self, tx: Any, keys: Iterable[CellKey]) -> dict[CellKey, dict[str, float]]:
        """Stored counters of the given metric cells."""

    def load_customer_cells(self, tx: Any, customer_ids: Iterable[str]) -> dict[CellKey, dict[str, float]]:
        """Every metric cell of the given customers."""

    def load_experience_alerts(self, tx: Any, alert_ids: Iterable[str]) -> dict[str, str]:
        """The stored status of each of the given experience-drop alerts that has a row."""

    def closable_cells(self, tx: Any, ended_by: datetime) -> dict[CellKey, dict[str, float]]:
        """Counters of the cells not yet final whose window ended at or before ``ended_by``."""

    def customers_due(self, tx: Any, after: datetime | None, until: datetime) -> dict[str, dict[str, Any]]:
        """State of the customers whose earliest open issue passes its target time in (after, until]."""

    def partition_times(self, tx: Any, group_id: str) -> dict[TopicPartition, PartitionTime]:
        """Each input partition's event time and when it was last active."""

    def write_state(self, tx: Any, batch: BatchWrite) -> None:
        """Write what the batch's locked customers own: merges, customers, identities, touchpoints (``Contended``
        when a claimed key or event id was taken meanwhile)."""

    def write_shared(self, tx: Any, batch: BatchWrite) -> int | None:
        """Write what batches share, under the clock's lock: alerts, metric cells, offsets, the clock, the outbox
        row; return the outbox row id, if any."""

    def database_id(self) -> str:
        """The id this database was given when its schema was created (named by the outbox commit markers)."""

    def pending_outbox(self, group_id: str, worker_id: str, orphaned_before: datetime) -> list[OutboxRow]:
        """Outbox rows a worker must publish at start: its own, and those another worker left behind."""

    def outbox_after(self, group_id: str, worker_id: str, after_id: int) -> list[OutboxRow]:
        """A worker's outbox rows with an id above ``after_id``, in commit order."""

    def delete_outbox(self, ids: Sequence[int]) -> None:
        """Forget outbox rows once their records are acknowledged."""
