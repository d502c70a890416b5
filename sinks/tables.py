"""SQL tables of cxstream (SQLAlchemy Core). Table and column names are part of the public interface.

The sizes of the columns that hold what a source record carries come from ``schemas.limits``, which the adapters
check records against: a record that does not fit is rejected before it reaches either database.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    text,
)

from schemas.limits import (
    EVENT_ID_MAX,
    IDENTIFIER_KEY_MAX,
    IDENTIFIER_VALUE_MAX,
    ISSUE_ID_MAX,
    ISSUE_KEY_MAX,
    SOURCE_ID_MAX,
)

metadata = MetaData()

TS = DateTime(timezone=True)
MONEY = Numeric(18, 4)

customers = Table(
    "customers",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("first_seen", TS, nullable=False),
    Column("last_seen", TS, nullable=False),
    Column("stage", String(32), nullable=False),
    Column("events", Integer, nullable=False, default=0),
    Column("purchases", Integer, nullable=False, default=0),
    Column("revenue", MONEY, nullable=False, default=0),
    Column("contacts", Integer, nullable=False, default=0),
    Column("returns", Integer, nullable=False, default=0),
    Column("open_issues", Integer, nullable=False, default=0),
    Column("overdue_at", TS, comment="when the earliest open issue passes its target time"),
    # The stitcher's per-customer state: one record per customer, written with the results.
    Column("state", JSON, nullable=False),
    Column("traits", JSON, comment="identify traits, the latest value of each by event time (null: none written yet)"),
    Column("engagement", Float, comment="engagement score 0-100 (null: not written since migration 0017)"),
    Column(
        "channels",
        String(64),
        comment="the channels of the customer's touchpoints, sorted, comma-separated (null: not written since 0017)",
    ),
    Column(
        "version",
        BigInteger,
        nullable=False,
        server_default="0",
        comment="writes of this row so far: a worker's cached state is valid while it is unchanged",
    ),
    # Only the customers with an open issue (the sweep's): a null entry would move with every write of the row
    # (migration 0022).
    Index(
        "ix_customers_overdue_at",
        "overdue_at",
        sqlite_where=text("overdue_at IS NOT NULL"),
        postgresql_where=text("overdue_at IS NOT NULL"),
    ),
)

identities = Table(
    "identities",
    metadata,
    Column(
        "identifier",
        String(IDENTIFIER_KEY_MAX),
        primary_key=True,
        comment="type:value, value hashed when hashing is on",
    ),
    Column("id_type", String(32), nullable=False),
    Column("id_value", String(IDENTIFIER_VALUE_MAX), nullable=False),
    Column("customer_id", String(64), nullable=False, index=True),
    Column("first_seen", TS, nullable=False),
    Column("last_seen", TS, nullable=False),
)

touchpoints = Table(
    "touchpoints",
    metadata,
    Column("event_id", String(EVENT_ID_MAX), primary_key=True),
    # Null for an unattributed touchpoint (no usable identifier): kept, and counted for its channel and overall.
    Column("customer_id", String(64)),
    Column("channel", String(16), nullable=False),
    Column("type", String(32), nullable=False),
    Column("occurred_at", TS, nullable=False),
    Column("received_at", TS, nullable=False),
    Column("committed_at", TS, nullable=False),
    Column("stage", String(32), nullable=False),
    Column("moments", String(256), nullable=False, default=""),
    Column("amount", MONEY),
    Column("currency", String(3)),
    Column("issue_id", String(ISSUE_ID_MAX)),
    Column("issue_key", String(ISSUE_KEY_MAX)),
    Column("resolved", Boolean),
    Column("transfers", Integer, nullable=False, default=0, server_default="0"),
    Column("repeat_contact", Boolean, nullable=False, default=False),
    Column("nps", Integer),
    Column("csat", Integer),
    Column("ces", Integer),
    Column("source_id", String(SOURCE_ID_MAX), nullable=False),
    Column(
        "resolution_contradicted",
        Boolean,
        comment="a resolving contact the customer contradicted (null: not a resolving contact)",
    ),
    # What a split by hand needs to apply the event again (written once, with the event's first version).
    Column(
        "identifier_keys",
        Text,
        comment="JSON list of the identifier keys the event was stitched by (null: stored before 0018)",
    ),
    Column("identify", Text, comment="JSON: an identify call's traits and group_id (null: none)"),
    Index("ix_touchpoints_customer_time", "customer_id", "occurred_at"),
)

metric_cells = Table(
    "metric_cells",
    metadata,
    Column("scope", String(16), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("window", String(8), primary_key=True),
    Column("window_start", TS, primary_key=True),
    Column("window_end", TS, nullable=False),
    # Additive counters of the cell, so windows and merges combine by addition.
    Column("counters", JSON, nullable=False),
    Column("final", Boolean, nullable=False, default=False),
    Index("ix_metric_cells_open", "final", "window_end"),
)

#: Views over the tables: not created by the migrations, but by ``sinks.metrics_view`` from the code's registry.
views = MetaData()

#: Every metric figure, computed from ``metric_cells`` (a view, see ``sinks.metrics_view``).
metrics = Table(
    "metrics",
    views,
    Column("scope", String(16), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("metric", String(48), primary_key=True),
    Column("window", String(8), primary_key=True),
    Column("window_start", TS, primary_key=True),
    Column("window_end", TS, nullable=False),
    Column("numerator", Float, nullable=False),
    Column("denominator", Float, nullable=False),
    Column("value", Float),
    Column("status", String(16), nullable=False),
    Column("revision", Integer, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("occurred_at", TS, nullable=False),
    Column("evidence", JSON, nullable=False),
    Column("message", Text, nullable=False, default=""),
    # The read side's orders: the latest alerts overall (the overview, /v1/alerts) and of one customer.
    Index("ix_alerts_time", "occurred_at", "alert_id"),
    Index("ix_alerts_customer_time", "customer_id", "occurred_at", "alert_id"),
)

experience_alerts = Table(
    "experience_alerts",
    metadata,
    Column("alert_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False, comment="firing or resolved"),
    Column("scope", String(16), nullable=False),
    Column("key", String(64), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("window", String(16), nullable=False),
    Column("window_start", TS, nullable=False),
    Column("window_end", TS, nullable=False),
    Column("baseline_start", TS, nullable=False),
    Column("value", Float),
    Column("baseline", Float),
    Column("answers", Integer, nullable=False),
    Column("baseline_answers", Integer, nullable=False),
    Column("margin", Float, nullable=False),
    Column("z", Float, nullable=False, comment="standard errors worse than the baseline"),
    Column("revision", BigInteger, nullable=False, comment="the deciding batch's commit sequence"),
    Column("decided_at", TS, nullable=False, comment="when its figures were last decided (wall clock)"),
    Column("message", Text, nullable=False, default=""),
    # The read side's order (by window start; from= skips to recent windows).
    Index("ix_experience_alerts_time", "window_start", "alert_id"),
)

identity_merges = Table(
    "identity_merges",
    metadata,
    Column("merged_id", String(64), primary_key=True),
    Column("survivor_id", String(64), nullable=False, index=True),
    Column("event_id", String(64), nullable=False),
    Column("identifiers", JSON, nullable=False),
    Column("occurred_at", TS, nullable=False),
    Column(
        "merged_into",
        String(64),
        comment="the customer the merge joined this one to (survivor_id follows later merges; this does not)",
    ),
)

# --- stream bookkeeping: written in the same transaction as the results ---------------------------

stream_offsets = Table(
    "stream_offsets",
    metadata,
    Column("group_id", String(128), primary_key=True),
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("applied_offset", BigInteger, nullable=False, comment="highest offset whose effects are committed here"),
    Column("fingerprint", String(32), comment="digest of the record at the applied offset"),
)

stream_partitions = Table(
    "stream_partitions",
    metadata,
    Column("group_id", String(128), primary_key=True),
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("event_time", TS, comment="greatest occurred_at read from the partition"),
    Column("active_at", TS, comment="wall-clock time the partition last had a new record or a backlog"),
)

stream_clock = Table(
    "stream_clock",
    metadata,
    Column("group_id", String(128), primary_key=True),
    Column("watermark", TS, comment="the group's event-time watermark: least event time of its active partitions"),
    Column("swept_to", TS, comment="watermark up to which windows were finalised and overdue issues alerted"),
    Column(
        "sequence",
        BigInteger,
        nullable=False,
        server_default="0",
        comment="batches of state the group committed; a worker's cache is current while it wrote the last",
    ),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("group_id", String(128), nullable=False),
    Column(
        "worker_id",
        String(128),
        nullable=False,
        server_default="",
        comment="the worker that committed the row and publishes it",
    ),
    Column("created_at", TS, nullable=False),
    # The downstream records of one batch, published after commit and deleted once acknowledged.
    Column("payload", LargeBinary, nullable=False),
    # Ids are never reused (the commit markers of transactional outputs count on it: streams.downstream).
    sqlite_autoincrement=True,
)

parked_events = Table(
    "parked_events",
    metadata,
    # Events a batch read while another worker's batch held their customer (PostgreSQL): their offsets are
    # applied, and the group's next batch applies them (``BatchProcessor._park``). Hold the watermark back.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("group_id", String(128), nullable=False),
    Column("occurred_at", TS, nullable=False),
    Column("event_id", Text, nullable=False, comment="unbounded: an over-long one is refused where it is applied"),
    # Where it was read: of two copies of one event (a resend), the first read is applied first.
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("record_offset", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, comment="batches that found its customer held by another"),
    Column("event", LargeBinary, nullable=False, comment="the event as validated (JSON)"),
    Index("parked_events_oldest", "group_id", "occurred_at"),
)

identity_claims = Table(
    "identity_claims",
    metadata,
    # Identifier keys no identities row holds yet that a batch is adding (PostgreSQL): committed at once, on a
    # connection of their own, so other batches see them and park their events carrying these keys; a claim lasts
    # while the claiming transaction is in progress (txid_status), and the batch deletes its own with its commit.
    Column("identifier", String(IDENTIFIER_KEY_MAX), primary_key=True),
    Column("xid", BigInteger, nullable=False, comment="txid_current() of the claiming batch's transaction"),
    Column("server_started", TS, nullable=False, comment="pg_postmaster_start_time() then: xid means nothing after"),
)

database_identity = Table(
    "database_identity",
    metadata,
    # One row: which database the outbox ids belong to (the commit markers name it).
    Column("id", String(36), primary_key=True, comment="random, made when the schema was created"),
)

suppressions = Table(
    "suppressions",
    metadata,
    # Erased people's identifiers, as salted hashes only: events carrying one are dropped (streams.erasure).
    Column("identifier_hash", String(64), primary_key=True, comment="HMAC-SHA256 of the identifier key (hex)"),
    Column("erasure_id", String(36), nullable=False, comment="the erasure that added it (audit_log.subject)"),
    Column("created_at", TS, nullable=False),
)

never_link = Table(
    "never_link",
    metadata,
    # Never-link rules set by hand (``cxstream never-link``): no customer may hold both keys. Stored as the
    # identities table stores keys (a PII value as its salted hash when hashing is on), the smaller key first.
    Column("key_a", String(IDENTIFIER_KEY_MAX), primary_key=True),
    Column("key_b", String(IDENTIFIER_KEY_MAX), primary_key=True),
    Column("rule_id", String(36), nullable=False, comment="audit_log.subject of the row that added it"),
    Column("created_at", TS, nullable=False),
)

manual_merges = Table(
    "manual_merges",
    metadata,
    # Merges made by hand (``cxstream merge``): a worker applies each in its next batch, as an event carrying both
    # keys would link them (but no touchpoint), and sets applied_at. Keys as the identities table stores them.
    Column("merge_id", String(36), primary_key=True, comment="audit_log.subject of the row that asked for it"),
    Column("key_a", String(IDENTIFIER_KEY_MAX), nullable=False),
    Column("key_b", String(IDENTIFIER_KEY_MAX), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("applied_at", TS, comment="when a worker's batch applied it (null: not yet)"),
)

manual_splits = Table(
    "manual_splits",
    metadata,
    # Splits made by hand (``cxstream split``): the never-link rules keeping the moved identifiers apart are added
    # with the row; a worker's next batch applies the customer's events again under them, and sets applied_at.
    Column("split_id", String(36), primary_key=True, comment="audit_log.subject of the row that asked for it"),
    Column("customer_id", String(64), nullable=False),
    Column("moved", JSON, nullable=False, comment="the identifier keys to move, as stored"),
    Column("created_at", TS, nullable=False),
    Column("applied_at", TS, comment="when a worker's batch applied it (null: not yet)"),
)

audit_log = Table(
    "audit_log",
    metadata,
    # What was done to the identity graph by hand, by whom and why: rows are added, never changed.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", TS, nullable=False),
    # action: erasure, never_link, never_link_removed, manual_merge, split, split_applied, split_refused,
    # identity_rules; subject: its id.
    Column("action", String(32), nullable=False, comment="erasure"),
    Column("subject", String(128), nullable=False, comment="what it was done to (an erasure id: never a person's id)"),
    Column("actor", String(128), nullable=False, comment="the command or API key (by fingerprint) that did it"),
    Column("reason", Text, nullable=False, server_default=""),
    Column("detail", JSON, nullable=False, comment="counts and options, never identifiers"),
    sqlite_autoincrement=True,
)

#: The tables and views whose rows are the results a user reads, by name.
RESULTS: dict[str, Table] = {
    name: table
    for name, table in {**metadata.tables, **views.tables}.items()
    if name in ("customers", "identities", "touchpoints", "metrics", "metric_cells", "alerts", "identity_merges")
}
