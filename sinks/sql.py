"""The SQL results sink: load the state a batch needs, then write state, results and offsets in one transaction.

Keeping per-customer state in the results database (rather than in Faust tables) is what makes the SQL
results exactly-once without Kafka transactions: state, rows and each input partition's applied offset
commit together, and a redelivered record at or below the applied offset is skipped (docs/architecture.md §3, §7).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Numeric,
    String,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from sinks import tables as t
from sinks.contract import (
    AlertRow,
    BatchWrite,
    CellKey,
    CellRow,
    Clock,
    Contended,
    CustomerRow,
    ExperienceAlertRow,
    HandRules,
    IdentityRow,
    MergeRow,
    OutboxRow,
    ParkedEvent,
    StoredIdentity,
    TouchpointRow,
    cell_key,
)
from sinks.database import upsert
from streams.domain.customer import REVISABLE_TYPES, StoredEntry, row_of
from streams.domain.event_time import PartitionTime, TopicPartition
from streams.domain.identity import one_by_one
from streams.domain.stitching import StoredEvent

#: Rows per IN (...) list: well under SQLite's bound variables limit.
CHUNK = 500


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _rows_by_key(conn: Connection, key: Any, columns: Sequence[Any], keys: Iterable[str]) -> Iterator[Any]:
    """``(key, *columns)`` of each row whose ``key`` is among ``keys``: on PostgreSQL in one query over a binary
    array of the keys, elsewhere a few hundred keys per ``IN`` list."""
    keys = sorted(keys)
    if conn.dialect.name == "postgresql":
        if keys:
            # A list of thousands of parameters is parsed and planned per query; one array is one parameter, and
            # %b spares psycopg's text format, which escapes every element in Python.
            names = ", ".join(column.name for column in (key, *columns))
            sql = f"SELECT {names} FROM {key.table.name} WHERE {key.name} = ANY(%b::text[])"
            yield from conn.exec_driver_sql(sql, (keys,))  # type: ignore[arg-type]
        return
    for chunk in _chunks(keys):
        yield from conn.execute(select(key, *columns).where(key.in_(chunk)))


def _lookup(conn: Connection, key: Any, value: Any, keys: Iterable[str]) -> dict[Any, Any]:
    """``value`` of each row whose ``key`` is among ``keys`` (``_rows_by_key``)."""
    return dict(_rows_by_key(conn, key, (value,), keys))


#: PostgreSQL's SQLSTATE for a transaction it failed to end a deadlock.
_DEADLOCK = "40P01"


def _lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _advisory_locks(conn: Connection, names: Iterable[str]) -> None:
    """Take a transaction-scoped advisory lock per name, in key order (two transactions taking overlapping sets
    never wait for each other in a cycle)."""
    keys = sorted({_lock_key(name) for name in names})
    if keys:
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(k) FROM unnest(%b::bigint[]) AS k", (keys,))


def as_utc(ts: datetime) -> datetime:
    """SQLite hands timestamps back naive; every timestamp in cxstream is UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _sqlite_datetime(value: datetime | None) -> str | None:
    """SQLAlchemy's SQLite DATETIME storage format (wall-clock fields, microseconds), computed in C.

    Equal to what ``DATETIME.bind_processor`` writes (``YYYY-MM-DD HH:MM:SS.ffffff``, any offset dropped), at a
    fraction of its cost: a batch binds several timestamps per event.
    """
    return None if value is None else _wall_clock(value)


def _wall_clock(value: datetime) -> str:
    """``_sqlite_datetime`` of a time."""
    return value.isoformat(" ", "microseconds")[:26]


class _SqliteDatetimes(dict[datetime, str]):
    """The UTC times one statement's rows bound, formatted (``_sqlite_datetime``): a batch binds the same times many
    times (its commit time on every touchpoint, days and window bounds), and formatting an aware time costs about
    1 µs, looking it up 30 ns. Only UTC times: equal times of other offsets format otherwise (``_binder``)."""

    def keep(self, value: datetime) -> str:
        """Format a UTC time, and remember it."""
        text = self[value] = _wall_clock(value)
        return text


def _array_element(sqltype: Any, dialect: Any) -> str:
    """The PostgreSQL element type of a column's array in ``BulkStatement.unnest_sql``: strings as ``TEXT`` and
    numbers as plain ``NUMERIC``, so that a value too long or too precise for the column fails (or rounds) on
    the insert as it does row by row, rather than being cut to size by the cast."""
    if isinstance(sqltype, String):
        return "TEXT"
    if isinstance(sqltype, Numeric) and not isinstance(sqltype, Float):
        return "NUMERIC"
    return str(sqltype.compile(dialect))


def _binder(
    fields: Sequence[int], processors: Sequence[Callable[[Any], Any] | None]
) -> Callable[[Sequence[tuple[Any, ...]]], list[tuple[Any, ...]]]:
    """A function binding rows as the driver takes them: for each row, a tuple of its fields ``fields`` (the
    placeholders' order), each through its bind processor, if any.

    Generated once per statement as one list comprehension, the SQLite times' memo (``_SqliteDatetimes``) inlined:
    a loop over each row's processors, with a list made and turned into a tuple per row, cost a fifth more (the
    rows of ``python -m bench.apply --customers 5000 --days 10``: 5.6 against 4.6 µs an event).
    """
    namespace: dict[str, Any] = {"_SqliteDatetimes": _SqliteDatetimes, "UTC": UTC, "_sqlite_datetime": _sqlite_datetime}
    items = []
    for n, (field, processor) in enumerate(zip(fields, processors, strict=True)):
        if processor is None:
            items.append(f"row[{field}]")
        elif processor is _sqlite_datetime:
            # _SqliteDatetimes.__call__ inlined: a UTC time looked up (formatted and kept the first time), any
            # other value formatted as it is.
            x = f"x{n}"
            items.append(
                f"((known({x}) or memo.keep({x})) if ({x} := row[{field}]) is not None and {x}.tzinfo is UTC"
                f" else _sqlite_datetime({x}))"
            )
        else:
            namespace[f"p{n}"] = processor
            items.append(f"p{n}(row[{field}])")
    memo = "memo = _SqliteDatetimes()\n    known = memo.get\n    " if _sqlite_datetime in processors else ""
    source = f"def bind(rows):\n    {memo}return [({', '.join(items)},) for row in rows]\n"
    exec(source, namespace)  # source made above from ints and names, never from data
    bind: Callable[[Sequence[tuple[Any, ...]]], list[tuple[Any, ...]]] = namespace["bind"]
    return bind


class BulkStatement:
    """A statement compiled once for a dialect, with the bind processors of its parameters in order."""

    def __init__(self, stmt: Any, dialect: Any, fields: Sequence[str]) -> None:
        """``fields``: the names of the row tuples' fields (``sinks.contract``), which are column names."""
        if dialect.name == "postgresql":
            # Positional placeholders: psycopg takes plain tuples, like sqlite3 does (no dict per row).
            dialect = type(dialect)(paramstyle="format")
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        names = list(compiled.positiontup)
        # Bind names of an INSERT are the column names: the rows' fields of the same names, in placeholder order.
        position = {name: i for i, name in enumerate(fields)}
        processors: list[Callable[[Any], Any] | None] = []
        for name in names:
            sqltype = compiled.binds[name].type
            if dialect.name == "sqlite" and isinstance(sqltype, DateTime):
                processors.append(_sqlite_datetime)
            elif dialect.name == "sqlite" and isinstance(sqltype, Boolean):
                processors.append(None)  # sqlite3 binds a bool as the integer SQLAlchemy's processor would make of it
            else:
                processors.append(sqltype._cached_bind_processor(dialect))
        self.params = _binder([position[compiled.binds[name].key] for name in names], processors)
        self.unnest_sql: str | None = None
        if dialect.name == "postgresql":
            # One statement per batch over column arrays instead of one execution per row: the server parses,
            # plans and runs it once (python -m bench.apply --database postgres: see _executemany).
            # %b: psycopg's binary format for the arrays; its text format quotes and escapes every element (the
            # customers' state JSON most of all) in Python, at several times the cost.
            arrays = ", ".join(f"%b::{_array_element(compiled.binds[name].type, dialect)}[]" for name in names)
            start = self.sql.index("VALUES (")
            end, depth = start + len("VALUES ("), 1
            while depth:  # the VALUES list's closing parenthesis (casts such as NUMERIC(18, 4) nest)
                depth += {"(": 1, ")": -1}.get(self.sql[end], 0)
                end += 1
            self.unnest_sql = f"{self.sql[:start]}SELECT * FROM unnest({arrays}){self.sql[end:]}"
        table = stmt.table
        # Rows of one statement must not repeat a conflict key ("cannot affect row a second time"): checked per
        # batch on the primary key, which is every bulk statement's conflict target.
        self._key = operator.itemgetter(*(position[col.name] for col in table.primary_key.columns))

    def columns(self, rows: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...] | None:
        """The rows bound as one array per placeholder (``unnest_sql``), or None when that form cannot take them
        (no such form for the dialect, or a conflict key repeated among the rows)."""
        if self.unnest_sql is None or len({self._key(row) for row in rows}) < len(rows):
            return None
        return tuple(map(list, zip(*self.params(rows), strict=True)))


#: The row type each bulk statement binds.
_ROW_TYPES: dict[str, Any] = {
    "customers": CustomerRow,
    "identities": IdentityRow,
    "touchpoints": TouchpointRow,
    "metric_cells": CellRow,
    "alerts": AlertRow,
    "experience_alerts": ExperienceAlertRow,
    "identities_claimed": IdentityRow,
    "identities_seen": IdentityRow,
    "touchpoints_claimed": TouchpointRow,
    "identity_merges": MergeRow,
}


class SqlSink:
    """The results sink on SQL (``sinks.contract.ResultSink``): cxstream's tables, read and written for the
    worker; one instance per worker process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.concurrent = engine.dialect.name == "postgresql"
        self._upsert = {table: upsert(engine, table) for table in t.metadata.tables.values()}
        self._bulk: dict[str, BulkStatement] = {}
        sqlite = engine.dialect.name == "sqlite"
        greatest, least = (func.max, func.min) if sqlite else (func.greatest, func.least)
        ins = self._upsert[t.identities]
        c = t.identities.c
        self._statements = {
            # An update counts the stored version up: a worker's cached state is valid while the version is the
            # one it wrote (``lock_customers``).
            "customers": self._replace(t.customers, ["customer_id"], counted="version"),
            "identities": ins.on_conflict_do_update(
                index_elements=["identifier"],
                set_={
                    "customer_id": ins.excluded.customer_id,
                    "first_seen": least(c.first_seen, ins.excluded.first_seen),
                    "last_seen": greatest(c.last_seen, ins.excluded.last_seen),
                },
            ),
            # A key staying with its customer (``BatchWrite.seen_identities``): its customer index entry is left
            # alone. SQLite: 3-5 µs a row less with 300,000 keys; in bench.apply the identity writes went from
            # 3.1 to 2.2 µs an event.
            "identities_seen": ins.on_conflict_do_update(
                index_elements=["identifier"],
                set_={
                    "first_seen": least(c.first_seen, ins.excluded.first_seen),
                    "last_seen": greatest(c.last_seen, ins.excluded.last_seen),
                },
            ),
            # Entries are re-emitted when a later event changes them (a late contact, a merge): the last version
            # wins, but committed_at keeps the first commit, which end-to-end latency is measured against.
            "touchpoints": self._replace(
                t.touchpoints, ["event_id"], keep=("committed_at", "identifier_keys", "identify")
            ),
            "metric_cells": self._replace(t.metric_cells, ["scope", "key", "window", "window_start"]),
            "alerts": self._upsert[t.alerts].on_conflict_do_nothing(),
            "experience_alerts": self._replace(t.experience_alerts, ["alert_id"]),
            # Claimed keys and event ids: inserted only, never over a row another worker added meanwhile.
            "identities_claimed": self._upsert[t.identities].on_conflict_do_nothing(),
            "touchpoints_claimed": self._upsert[t.touchpoints].on_conflict_do_nothing(),
            # merged_into is the merge's own survivor: a replay of the merge leaves it as the first write set it.
            "identity_merges": self._replace(t.identity_merges, ["merged_id"], keep=("merged_into",)),
        }
        self._greatest, self._least = greatest, least

    def _replace(self, table: t.Table, keys: list[str], keep: tuple[str, ...] = (), counted: str | None = None) -> Any:
        """An insert that replaces the row of the same ``keys``, but for the ``keep`` columns, and the ``counted``
        column, which counts up."""
        stmt = self._upsert[table]
        changing: dict[str, Any] = {
            col.name: stmt.excluded[col.name] for col in table.columns if col.name not in (*keys, *keep)
        }
        if counted is not None:
            changing[counted] = table.c[counted] + literal_column("1")  # a constant, not a bound parameter
        return stmt.on_conflict_do_update(index_elements=keys, set_=changing)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """Begin a transaction on the engine (committed when the block ends, rolled back when it raises); a
        deadlock with another worker's transaction, which PostgreSQL ends by failing one of them, is ``Contended``."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _DEADLOCK:
                raise Contended(f"deadlock with another worker's batch: {exc.orig}") from exc
            raise

    def _executemany(self, conn: Connection, name: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """Run a prepared bulk statement over many rows, binding them with the types' own processors.

        SQLAlchemy's generic executemany costs more per row than the database does (docs/architecture.md §9: the hot
        path is per event); compiling once and binding plain tuples keeps the same statement and types.
        """
        if not rows:
            return 0
        bulk = self._bulk.get(name)
        if bulk is None:
            bulk = self._bulk[name] = BulkStatement(
                self._statements[name],
                self.engine.dialect,
                _ROW_TYPES[name]._fields,  # type: ignore[attr-defined]
            )
        columns = bulk.columns(rows) if len(rows) > 1 else None
        if columns is not None:
            return conn.exec_driver_sql(bulk.unnest_sql, columns).rowcount  # type: ignore[arg-type]
        return conn.exec_driver_sql(bulk.sql, bulk.params(rows)).rowcount

    def lock_partitions(self, conn: Connection, group_id: str, partitions: Iterable[TopicPartition]) -> None:
        """Keep other workers from applying the same input partitions until the transaction ends (PostgreSQL: one
        advisory lock per partition, in order; SQLite: ``BEGIN IMMEDIATE`` holds the whole database).

        A partition has one worker but around a rebalance, when two may hold records of it for a moment: the second
        then finds the partition's applied offset moved (``BatchProcessor``) and decodes its records again."""
        if self.concurrent:
            _advisory_locks(conn, (f"{group_id}\0{topic}\0{part}" for topic, part in partitions))

    def lock_customers(self, conn: Connection, ids: Iterable[str]) -> dict[str, int]:
        """Lock the rows of the given customers until the transaction ends, and return the version of each that
        exists (PostgreSQL; SQLite only reads the versions: its transaction holds the whole database).

        Rows are locked in customer id order, so two batches locking overlapping sets in one call each never wait
        for each other in a cycle. Whoever changes a customer's identities, state, touchpoints or cells holds its
        row lock: a customer row therefore guards all of them (a merge locks both customers' rows)."""
        ids = sorted(ids)
        if not ids:
            return {}
        if not self.concurrent:
            return _lookup(conn, t.customers.c.customer_id, t.customers.c.version, ids)
        sql = (
            "SELECT customer_id, version FROM customers WHERE customer_id = ANY(%b::text[]) "
            "ORDER BY customer_id FOR UPDATE"
        )
        return dict(conn.exec_driver_sql(sql, (ids,)).all())  # type: ignore[arg-type]

    def try_lock_customers(self, conn: Connection, ids: Iterable[str]) -> tuple[dict[str, int], set[str]]:
        """``lock_customers`` without waiting (PostgreSQL: ``SKIP LOCKED``): the versions of the customers locked,
        and the ids of those another transaction holds. SQLite: ``lock_customers`` (nothing is ever held)."""
        ids = sorted(ids)
        if not self.concurrent or not ids:
            return self.lock_customers(conn, ids), set()
        sql = "SELECT customer_id, version FROM customers WHERE customer_id = ANY(%b::text[]) FOR UPDATE SKIP LOCKED"
        found: dict[str, int] = dict(conn.exec_driver_sql(sql, (ids,)).all())  # type: ignore[arg-type]
        rest = [customer_id for customer_id in ids if customer_id not in found]
        if not rest:
            return found, set()
        # Skipped: locked by another transaction, or gone (merged away). Those still there are held.
        sql = "SELECT customer_id FROM customers WHERE customer_id = ANY(%b::text[])"
        return found, set(conn.exec_driver_sql(sql, (rest,)).scalars())  # type: ignore[arg-type]

    def claim_keys(self, conn: Connection, keys: Collection[str]) -> set[str]:
        """Claim identifier keys no row holds for the transaction of ``conn``, without waiting; return those another
        batch's transaction in progress claimed (PostgreSQL; SQLite, one writer at a time: none).

        A claim is an ``identity_claims`` row committed at once, on a connection of its own, so that every other
        batch sees it while this one runs; it lasts while its transaction is in progress (``txid_status``), so a
        batch that rolled back or died leaves nothing in force, and a batch deletes its own with its commit
        (``BatchWrite.claims``). Advisory locks would do the same, but each holds an entry of the server's shared
        lock table until the commit (6,400 by default), and a batch of a history load adds thousands of keys."""
        if not self.concurrent or not keys:
            return set()
        xid = conn.exec_driver_sql("SELECT txid_current()").scalar_one()
        # A claim from another run of the server (a restored backup) is void, and its xid may mean nothing here:
        # txid_status fails on one "in the future".
        sql = (
            "INSERT INTO identity_claims (identifier, xid, server_started) "
            "SELECT k, %b, pg_postmaster_start_time() FROM unnest(%b::text[]) AS k "
            "ON CONFLICT (identifier) DO UPDATE SET xid = EXCLUDED.xid, server_started = EXCLUDED.server_started "
            "WHERE CASE WHEN identity_claims.server_started IS DISTINCT FROM EXCLUDED.server_started THEN true "
            "ELSE txid_status(identity_claims.xid) IS DISTINCT FROM 'in progress' END RETURNING identifier"
        )
        with self.engine.begin() as side:
            # The claim's transaction only waits for another's insert or delete of the same claim (a commit's
            # last step, which waits for no batch): bounded all the same. A claim need not survive a server crash,
            # which ends the claiming transaction too: its commit does not wait for the WAL to reach the disk.
            side.exec_driver_sql("SET LOCAL lock_timeout = '10s'; SET LOCAL synchronous_commit = off")
            claimed = set(side.exec_driver_sql(sql, (xid, sorted(keys))).scalars())  # type: ignore[arg-type]
        return set(keys) - claimed

    def take_parked(
        self, conn: Connection, group_id: str, limit: int, ids: Collection[int] | None = None
    ) -> list[ParkedEvent]:
        """Up to ``limit`` of the group's parked events (of ``ids`` only, if given), oldest first, that no other
        batch took (PostgreSQL: locked, ``SKIP LOCKED``; SQLite never parks)."""
        if not self.concurrent:
            return []
        p = t.parked_events.c
        query = select(
            p.id, p.occurred_at, p.event_id, p.topic, p.partition, p.record_offset, p.attempts, p.event
        ).where(p.group_id == group_id)
        if ids is not None:
            query = query.where(p.id.in_(list(ids)))
        query = query.order_by(p.occurred_at).limit(limit).with_for_update(skip_locked=True)
        return [
            ParkedEvent(row_id, as_utc(at), event_id, (topic, part, off), attempts, event)
            for row_id, at, event_id, topic, part, off, attempts, event in conn.execute(query)
        ]

    def parked_event_ids(self, conn: Connection, group_id: str, taken: Collection[int]) -> set[str]:
        """The event ids of the group's parked events but those ``taken`` (SQLite never parks)."""
        if not self.concurrent:
            return set()
        # The ids taken as one array parameter: a NOT IN list of up to UNPARK_LIMIT parameters is parsed per query.
        sql = "SELECT event_id FROM parked_events WHERE group_id = %s AND id <> ALL(%b::bigint[])"
        return set(conn.exec_driver_sql(sql, (group_id, list(taken))).scalars())  # type: ignore[arg-type]

    def drop_parked(self, conn: Connection, group_id: str, ids: Collection[int]) -> list[bytes]:
        """Delete the given parked events of the group; return the events deleted."""
        p = t.parked_events
        query = delete(p).where(p.c.group_id == group_id, p.c.id.in_(list(ids))).returning(p.c.event)
        return list(conn.execute(query).scalars())

    def oldest_parked(self, conn: Connection, group_id: str, taken: Collection[int]) -> datetime | None:
        """The earliest ``occurred_at`` of the group's parked events but those ``taken``."""
        if not self.concurrent:
            return None
        sql = "SELECT min(occurred_at) FROM parked_events WHERE group_id = %s AND id <> ALL(%b::bigint[])"
        found = conn.exec_driver_sql(sql, (group_id, list(taken))).scalar()  # type: ignore[arg-type]
        return None if found is None else as_utc(found)

    def lock_clock(self, conn: Connection, group_id: str) -> Clock:
        """Lock the group's clock row until the transaction ends and read it (PostgreSQL: the row is created on
        first use; SQLite only reads)."""
        if self.concurrent:
            c = t.stream_clock.c
            conn.execute(self._upsert[t.stream_clock].values(group_id=group_id, sequence=0).on_conflict_do_nothing())
            row = conn.execute(
                select(c.watermark, c.swept_to, c.sequence).where(c.group_id == group_id).with_for_update()
            ).one()
            return Clock(as_utc(row[0]) if row[0] else None, as_utc(row[1]) if row[1] else None, row[2])
        return self.clock_in(conn, group_id)

    def clock_in(self, conn: Connection, group_id: str) -> Clock:
        """The group's clock as last committed (another worker may have moved it)."""
        c = t.stream_clock.c
        row = conn.execute(select(c.watermark, c.swept_to, c.sequence).where(c.group_id == group_id)).first()
        if row is None:
            return Clock(None, None, 0)
        return Clock(as_utc(row[0]) if row[0] else None, as_utc(row[1]) if row[1] else None, row[2])

    # --- reads ----------------------------------------------------------------------------------

    def applied_offsets(self, group_id: str) -> dict[tuple[str, int], int]:
        """Each input partition's highest offset whose effects are committed."""
        with self.engine.connect() as conn:
            return self.applied_offsets_in(conn, group_id)

    def applied_offsets_in(self, conn: Connection, group_id: str) -> dict[tuple[str, int], int]:
        """``applied_offsets`` inside the caller's transaction."""
        c = t.stream_offsets.c
        rows = conn.execute(select(c.topic, c.partition, c.applied_offset).where(c.group_id == group_id))
        return {(topic, part): off for topic, part, off in rows}

    def clock(self, group_id: str) -> Clock:
        """The group's clock: the latest occurred_at applied, how far windows were swept, batches committed."""
        with self.engine.connect() as conn:
            return self.clock_in(conn, group_id)

    def load_identities(self, conn: Connection, keys: Iterable[str]) -> dict[str, StoredIdentity]:
        """The stored row of each known identifier key."""
        c = t.identities.c
        rows = _rows_by_key(conn, c.identifier, (c.customer_id, c.first_seen, c.last_seen), keys)
        return {key: StoredIdentity(customer_id, as_utc(first), as_utc(last)) for key, customer_id, first, last in rows}

    def load_applied(self, conn: Connection, event_ids: Iterable[str]) -> dict[str, str | None]:
        """customer_id of each given event id that was applied (has a touchpoint row; None: unattributed)."""
        c = t.touchpoints.c
        return _lookup(conn, c.event_id, c.customer_id, event_ids)

    def load_history(
        self, conn: Connection, ranges: Mapping[str, tuple[datetime, datetime]]
    ) -> dict[str, tuple[list[StoredEntry], tuple[datetime, str] | None]]:
        """Per customer, its touchpoints a state may keep (``customer.is_kept``) in ``[since, until)``, and its
        latest purchase before ``since``: what the worker restores when a batch needs older history."""
        c = t.touchpoints.c
        columns = (
            c.occurred_at,
            c.event_id,
            c.channel,
            c.type,
            c.received_at,
            c.amount,
            c.currency,
            c.issue_key,
            c.resolved,
            c.transfers,
            c.nps,
            c.csat,
            c.ces,
            c.source_id,
            c.moments,
        )
        kept = or_(
            c.type.in_(sorted(REVISABLE_TYPES)),
            c.moments != "",
            c.nps.is_not(None),
            c.csat.is_not(None),
            c.ces.is_not(None),
        )
        found: dict[str, tuple[list[StoredEntry], tuple[datetime, str] | None]] = {}
        for chunk in _chunks(sorted(ranges)):
            since = min(ranges[cid][0] for cid in chunk)
            until = max(ranges[cid][1] for cid in chunk)
            entries: dict[str, list[StoredEntry]] = {cid: [] for cid in chunk}
            rows = conn.execute(
                select(c.customer_id, *columns).where(
                    c.customer_id.in_(chunk), c.occurred_at >= since, c.occurred_at < until, kept
                )
            )
            for customer_id, *values in rows:
                values[0], values[4] = as_utc(values[0]), as_utc(values[4])
                entry = StoredEntry(*values)
                low, high = ranges[customer_id]
                if low <= entry.occurred_at < high:
                    entries[customer_id].append(entry)
            previous: dict[str, tuple[datetime, str]] = {}
            latest = max(ranges[cid][0] for cid in chunk)
            purchases = conn.execute(
                select(c.customer_id, c.occurred_at, c.event_id).where(
                    c.customer_id.in_(chunk), c.type == "purchase", c.occurred_at < latest
                )
            )
            for customer_id, occurred_at, event_id in purchases:
                pair = (as_utc(occurred_at), event_id)
                if pair[0] < ranges[customer_id][0] and (customer_id not in previous or previous[customer_id] < pair):
                    previous[customer_id] = pair
            for customer_id in chunk:
                found[customer_id] = (entries[customer_id], previous.get(customer_id))
        return found

    def load_hand_rules(self, conn: Connection, known: int) -> HandRules | None:
        """When the identity graph was changed by hand (an erasure, a never-link rule: ``audit_log`` rows are only
        ever added) since ``known`` such changes, what those changes leave in force; else None."""
        count = conn.scalar(select(func.count()).select_from(t.audit_log)) or 0
        if count == known:
            return None
        rules, m, s = t.never_link.c, t.manual_merges.c, t.manual_splits.c
        pending = select(m.merge_id, m.key_a, m.key_b, m.created_at).where(m.applied_at.is_(None))
        splits = select(s.split_id, s.customer_id, s.moved, s.created_at).where(s.applied_at.is_(None))
        return HandRules(
            count,
            set(conn.execute(select(t.suppressions.c.identifier_hash)).scalars()),
            [(a, b) for a, b in conn.execute(select(rules.key_a, rules.key_b))],
            [(merge_id, a, b, as_utc(at)) for merge_id, a, b, at in conn.execute(pending.order_by(m.created_at))],
            [
                (split_id, customer_id, tuple(moved), as_utc(at))
                for split_id, customer_id, moved, at in conn.execute(splits.order_by(s.created_at, s.split_id))
            ],
        )

    def customer_keys(self, conn: Connection, customer_id: str) -> list[str]:
        """Every identifier key the customer holds."""
        c = t.identities.c
        return list(conn.execute(select(c.identifier).where(c.customer_id == customer_id)).scalars())

    def count_touchpoints(self, conn: Connection, customer_id: str, up_to: int) -> int:
        """How many touchpoints the customer has, counted up to ``up_to`` (a bigger customer counts ``up_to``)."""
        return count_touchpoints(conn, customer_id, up_to)

    def load_customer_events(self, conn: Connection, customer_id: str) -> list[StoredEvent]:
        """Every touchpoint of the customer, as a split applies it again (``stitching.StoredEvent``)."""
        c = t.touchpoints.c
        columns = [c[name] for name in StoredEntry._fields]
        rows = conn.execute(select(*columns, c.identifier_keys, c.identify).where(c.customer_id == customer_id))
        events = []
        for row in rows:
            stored = StoredEntry(*row[: len(columns)])
            stored = stored._replace(occurred_at=as_utc(stored.occurred_at), received_at=as_utc(stored.received_at))
            keys, identify = row[len(columns)], row[len(columns) + 1]
            events.append(
                StoredEvent(
                    row_of(stored),
                    () if keys is None else tuple(orjson.loads(keys)),
                    None if identify is None else orjson.loads(identify),
                )
            )
        return events

    def applied_links(self, conn: Connection, keys: Collection[str]) -> list[tuple[str, str, str, datetime]]:
        """The merges made by hand, applied, that named one of ``keys``: (merge id, key, key, when asked)."""
        m = t.manual_merges.c
        found: dict[str, tuple[str, str, str, datetime]] = {}
        for chunk in _chunks(sorted(keys)):
            query = select(m.merge_id, m.key_a, m.key_b, m.created_at).where(
                m.applied_at.is_not(None), or_(m.key_a.in_(chunk), m.key_b.in_(chunk))
            )
            for merge_id, a, b, at in conn.execute(query):
                found[merge_id] = (merge_id, a, b, as_utc(at))
        return sorted(found.values(), key=lambda link: (link[3], link[0]))

    def partition_times(self, conn: Connection, group_id: str) -> dict[TopicPartition, PartitionTime]:
        """Each input partition's event time and when it was last active, as the group last committed them."""
        c = t.stream_partitions.c
        rows = conn.execute(select(c.topic, c.partition, c.event_time, c.active_at).where(c.group_id == group_id))
        return {
            (topic, part): PartitionTime(
                None if event_time is None else as_utc(event_time).timestamp(),
                None if active_at is None else as_utc(active_at).timestamp(),
            )
            for topic, part, event_time, active_at in rows
        }

    def applied_records(self, group_id: str) -> dict[tuple[str, int], tuple[int, str | None]]:
        """Each input partition's applied offset with the digest of the record at it (checked at start)."""
        c = t.stream_offsets.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c.topic, c.partition, c.applied_offset, c.fingerprint).where(c.group_id == group_id)
            )
            return {(topic, part): (offset, fingerprint) for topic, part, offset, fingerprint in rows}

    def reset_offsets(self, group_id: str) -> int:
        """Forget which input records the group applied (results stay); return how many partitions were reset."""
        with self.engine.begin() as conn:
            conn.execute(delete(t.stream_partitions).where(t.stream_partitions.c.group_id == group_id))
            return int(conn.execute(delete(t.stream_offsets).where(t.stream_offsets.c.group_id == group_id)).rowcount)

    def load_customers(self, conn: Connection, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored per-customer state of each known customer."""
        c = t.customers.c
        return _lookup(conn, c.customer_id, c.state, ids)

    def load_cells(self, conn: Connection, keys: Iterable[CellKey]) -> dict[CellKey, dict[str, float]]:
        """Stored counters of the given metric cells (PostgreSQL: one query joining arrays of the keys; SQLite: one
        per hundred cells)."""
        c = t.metric_cells.c
        found: dict[CellKey, dict[str, float]] = {}
        if self.concurrent:
            keys = list(keys)
            if keys:
                # A row-value IN list of thousands of parameters is parsed and planned per query (as ``_lookup``).
                columns = (
                    [cell.scope.value for cell in keys],
                    [cell.key for cell in keys],
                    [cell.window for cell in keys],
                    [cell.window_start for cell in keys],
                )
                sql = (
                    'SELECT c.scope, c.key, c."window", c.window_start, c.counters FROM metric_cells c '
                    "JOIN unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[]) AS k(scope, key, w, start) "
                    'ON c.scope = k.scope AND c.key = k.key AND c."window" = k.w AND c.window_start = k.start'
                )
                for scope, key, window, start, counters in conn.exec_driver_sql(sql, columns):  # type: ignore[arg-type]
                    found[cell_key(scope, key, window, as_utc(start))] = counters
            return found
        values = [(cell.scope.value, cell.key, cell.window, cell.window_start) for cell in keys]
        for chunk in _chunks(values, CHUNK // 4):
            # SQLite answers a row-value IN list by scanning the whole table (a cost that grows with every cell
            # kept); an OR of key equalities is a primary-key search per cell.
            where = or_(
                *(
                    and_(c.scope == scope, c.key == key, c.window == window, c.window_start == start)
                    for scope, key, window, start in chunk
                )
            )
            rows = conn.execute(select(c.scope, c.key, c.window, c.window_start, c.counters).where(where))
            for scope, key, window, start, counters in rows:
                found[cell_key(scope, key, window, as_utc(start))] = counters
        return found

    def load_customer_cells(self, conn: Connection, customer_ids: Iterable[str]) -> dict[CellKey, dict[str, float]]:
        """Every metric cell of the given customers (to combine them when customers merge)."""
        c = t.metric_cells.c
        found: dict[CellKey, dict[str, float]] = {}
        for chunk in _chunks(sorted(customer_ids)):
            rows = conn.execute(
                select(c.key, c.window, c.window_start, c.counters).where(and_(c.scope == "customer", c.key.in_(chunk)))
            )
            for key, window, start, counters in rows:
                found[cell_key("customer", key, window, as_utc(start))] = counters
        return found

    def load_experience_alerts(self, conn: Connection, alert_ids: Iterable[str]) -> dict[str, str]:
        """The stored status of each of the given experience-drop alerts that has a row."""
        c = t.experience_alerts.c
        return _lookup(conn, c.alert_id, c.status, alert_ids)

    def closable_cells(self, conn: Connection, ended_by: datetime) -> dict[CellKey, dict[str, float]]:
        """Counters of the cells not yet final whose window ended at or before ``ended_by``."""
        c = t.metric_cells.c
        rows = conn.execute(
            select(c.scope, c.key, c.window, c.window_start, c.counters).where(
                and_(c.final.is_(False), c.window_end <= ended_by)
            )
        )
        return {cell_key(scope, key, window, as_utc(start)): counters for scope, key, window, start, counters in rows}

    def customers_due(self, conn: Connection, after: datetime | None, until: datetime) -> dict[str, dict[str, Any]]:
        """State of the customers whose earliest open issue passes its target time in (after, until]."""
        c = t.customers.c
        due = c.overdue_at <= until
        if after is not None:
            due = and_(due, c.overdue_at > after)
        return dict(conn.execute(select(c.customer_id, c.state).where(due)).all())

    # --- the batch transaction ------------------------------------------------------------------

    def write_state(self, conn: Connection, batch: BatchWrite) -> None:
        """Write what the batch's locked customers own: merges, removed customers, customer states, identities and
        touchpoints (claimed keys and event ids only inserted: ``Contended`` if one was there meanwhile)."""
        if batch.split_off:
            # Before the batch's merges, whose rows may name a customer the split formed again (merged once more).
            conn.execute(delete(t.identity_merges).where(t.identity_merges.c.merged_id.in_(batch.split_off)))
        if batch.split_removed:
            # Before the merges: one of them may merge the customer these rows move to. A row of a customer the
            # split formed again whose survivor it now is names itself: it goes. Then the removed ids' own rows.
            m, moved = t.identity_merges.c, batch.split_moved()
            self._repoint(conn, m.survivor_id, moved)
            kept = sorted(set(moved.values()))
            conn.execute(delete(t.identity_merges).where(m.merged_id.in_(kept), m.merged_id == m.survivor_id))
            self._replace_merge_rows(conn, batch.split_removed)
        self._replace_merge_rows(conn, batch.relinked)
        if batch.merges:
            # The merged customers' rows move to where the batch's merges, in order, leave them (``repointed``), then
            # the batch's merge rows are added with the survivor each lives on. Alerts are re-pointed under the
            # clock's lock (``write_shared``), where other batches add them.
            self._repoint(conn, t.identities.c.customer_id, batch.repointed)
            self._repoint(conn, t.touchpoints.c.customer_id, batch.repointed)
            self._repoint(conn, t.identity_merges.c.survivor_id, batch.repointed)
            self._executemany(conn, "identity_merges", batch.merges)
        if batch.removed_customers:
            for chunk in _chunks(batch.removed_customers):
                conn.execute(delete(t.customers).where(t.customers.c.customer_id.in_(chunk)))
        self._executemany(conn, "customers", batch.customers)
        seen = batch.seen_identities
        self._claim(
            conn,
            "identities",
            [row for row in batch.identities if row.identifier not in seen],
            batch.claimed_identities,
            operator.itemgetter(0),
        )
        self._executemany(conn, "identities_seen", [row for row in batch.identities if row.identifier in seen])
        self._claim(conn, "touchpoints", batch.touchpoints, batch.claimed_events, operator.itemgetter(0))
        if batch.manual_merges:
            m = t.manual_merges.c
            conn.execute(
                update(t.manual_merges)
                .where(m.merge_id.in_(batch.manual_merges), m.applied_at.is_(None))
                .values(applied_at=datetime.now(UTC))
            )
        if batch.manual_splits or batch.refused_splits:
            s, now = t.manual_splits.c, datetime.now(UTC)
            done = set(
                conn.execute(
                    update(t.manual_splits)
                    .where(s.split_id.in_([*batch.manual_splits, *batch.refused_splits]), s.applied_at.is_(None))
                    .values(applied_at=now)
                    .returning(s.split_id)
                ).scalars()
            )
            # A split moves keys between customers that both live on, which a batch that read the keys before this
            # commit cannot tell from the customers' rows (a merge deletes one): the audit row is what every other
            # worker's batch checks once it holds its customers' locks, and then applies itself again. Rows only for
            # the splits this batch marked done: splits are applied and refused under their customer's lock, so
            # another batch marking one done first did so for a customer gone meanwhile, which nobody applies.
            actor = f"worker:{batch.worker_id}"[:128]
            rows = [
                {"at": now, "action": "split_applied", "subject": split_id, "actor": actor, "reason": "", "detail": {}}
                for split_id in batch.manual_splits
                if split_id in done
            ]
            rows += [
                {"at": now, "action": "split_refused", "subject": split_id, "actor": actor, "reason": why, "detail": {}}
                for split_id, why in batch.refused_splits.items()
                if split_id in done
            ]
            if rows:
                conn.execute(insert(t.audit_log), rows)
        for chunk in _chunks(batch.forgotten):
            conn.execute(delete(t.identities).where(t.identities.c.identifier.in_(chunk)))

    def _replace_merge_rows(self, conn: Connection, rows: Sequence[MergeRow]) -> None:
        """Write ``rows`` in place of the stored rows of their merged ids, whole (the upsert keeps ``merged_into``)."""
        if rows:
            merged = t.identity_merges.c.merged_id
            conn.execute(delete(t.identity_merges).where(merged.in_([row.merged_id for row in rows])))
            self._executemany(conn, "identity_merges", rows)

    def _repoint(self, conn: Connection, column: Column[str], moved: Mapping[str, str]) -> None:
        """Set ``column`` to ``moved[value]`` in the rows whose value ``moved`` names, each row moved once: an indexed
        ``UPDATE`` per pair, in the order ``identity.one_by_one`` gives. (One statement joining the pairs let
        PostgreSQL's planner scan the whole table while the column has no statistics yet.)"""
        if moved:
            stmt = update(column.table).where(column == bindparam("m")).values({column.name: bindparam("s")})
            conn.execute(stmt, [{"m": source, "s": target} for source, target in one_by_one(moved)])

    def _claim(
        self,
        conn: Connection,
        name: str,
        rows: Sequence[tuple[Any, ...]],
        claimed: set[str],
        key: Callable[[tuple[Any, ...]], str],
    ) -> None:
        """Write ``rows``: those whose key is ``claimed`` inserted only, and all present (else ``Contended``), the
        others replacing their stored versions."""
        if not claimed:
            self._executemany(conn, name, rows)
            return
        new = [row for row in rows if key(row) in claimed]
        self._executemany(conn, name, [row for row in rows if key(row) not in claimed])
        inserted = self._executemany(conn, f"{name}_claimed", new)
        if inserted != len(new):
            raise Contended(
                f"{len(new) - inserted} {name} row(s) this batch adds were added by another batch meanwhile"
            )

    def write_shared(self, conn: Connection, batch: BatchWrite) -> int | None:
        """Write what batches share, under the clock's lock (``lock_clock``): alerts, metric cells, applied offsets,
        partition times, the clock and the outbox row; return the outbox row id, if any."""
        self._repoint(conn, t.alerts.c.customer_id, batch.split_moved())
        self._repoint(conn, t.alerts.c.customer_id, batch.repointed)
        if batch.removed_cells:
            cells = [
                {"sc": cell.scope.value, "k": cell.key, "w": cell.window, "st": cell.window_start}
                for cell in batch.removed_cells
            ]
            c = t.metric_cells.c
            where = and_(
                c.scope == bindparam("sc"),
                c.key == bindparam("k"),
                c.window == bindparam("w"),
                c.window_start == bindparam("st"),
            )
            conn.execute(delete(t.metric_cells).where(where), cells)
        self._executemany(conn, "metric_cells", list(batch.cells.values()))
        self._executemany(conn, "alerts", batch.alerts)
        self._executemany(conn, "experience_alerts", batch.experience_alerts)
        self._write_offsets(conn, batch)
        self._write_parked(conn, batch)
        if batch.outbox is not None:
            return int(
                conn.execute(
                    t.outbox.insert()
                    .values(
                        group_id=batch.group_id,
                        worker_id=batch.worker_id,
                        created_at=datetime.now(UTC),
                        payload=batch.outbox,
                    )
                    .returning(t.outbox.c.id)
                ).scalar_one()
            )
        return None

    def write(self, conn: Connection, batch: BatchWrite) -> int | None:
        """``write_state`` then ``write_shared``: a whole batch whose transaction holds what it shares already."""
        self.write_state(conn, batch)
        return self.write_shared(conn, batch)

    def _write_parked(self, conn: Connection, batch: BatchWrite) -> None:
        """Delete the parked events the batch took, store those it parks; delete the batch's claims of new keys
        (their rows are written now)."""
        if batch.claims:
            # Locked in key order first, as the claims' inserts lock them: the two never wait in a cycle.
            conn.exec_driver_sql(
                "DELETE FROM identity_claims WHERE identifier IN (SELECT identifier FROM identity_claims "
                "WHERE identifier = ANY(%b::text[]) ORDER BY identifier FOR UPDATE)",
                (sorted(batch.claims),),  # type: ignore[arg-type]
            )
        if batch.unparked:
            conn.execute(delete(t.parked_events).where(t.parked_events.c.id.in_(batch.unparked)))
        if batch.parked:
            rows = [
                {
                    "group_id": batch.group_id,
                    "occurred_at": e.occurred_at,
                    "event_id": e.event_id,
                    "topic": e.read_at[0],
                    "partition": e.read_at[1],
                    "record_offset": e.read_at[2],
                    "attempts": e.attempts,
                    "event": e.event,
                }
                for e in batch.parked
            ]
            conn.execute(t.parked_events.insert(), rows)

    def _write_offsets(self, conn: Connection, batch: BatchWrite) -> None:
        if batch.offsets:
            rows = [
                {
                    "group_id": batch.group_id,
                    "topic": topic,
                    "partition": part,
                    "applied_offset": off,
                    "fingerprint": batch.fingerprints.get((topic, part)),
                }
                for (topic, part), off in batch.offsets.items()
            ]
            stmt = self._upsert[t.stream_offsets]
            applied = t.stream_offsets.c.applied_offset
            ahead = stmt.excluded.applied_offset >= applied
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["group_id", "topic", "partition"],
                    set_={
                        "applied_offset": self._greatest(applied, stmt.excluded.applied_offset),
                        "fingerprint": case((ahead, stmt.excluded.fingerprint), else_=t.stream_offsets.c.fingerprint),
                    },
                ),
                rows,
            )
        if batch.partitions:
            stmt = self._upsert[t.stream_partitions]
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["group_id", "topic", "partition"],
                    set_={"event_time": stmt.excluded.event_time, "active_at": stmt.excluded.active_at},
                ),
                [
                    {
                        "group_id": batch.group_id,
                        "topic": topic,
                        "partition": part,
                        "event_time": _utc(clock.event_time),
                        "active_at": _utc(clock.active_at),
                    }
                    for (topic, part), clock in batch.partitions.items()
                ],
            )
        if batch.watermark is not None or batch.state_changed:
            # Workers sharing a group write the same clock row: the watermark only moves forward, and the sequence
            # counts the batches that changed state others may have cached.
            stmt = self._upsert[t.stream_clock]
            c = t.stream_clock.c
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["group_id"],
                    set_={
                        "watermark": func.coalesce(
                            self._greatest(c.watermark, stmt.excluded.watermark), c.watermark, stmt.excluded.watermark
                        ),
                        "swept_to": func.coalesce(
                            self._greatest(c.swept_to, stmt.excluded.swept_to), c.swept_to, stmt.excluded.swept_to
                        ),
                        "sequence": c.sequence + int(batch.state_changed),
                    },
                ),
                [
                    {
                        "group_id": batch.group_id,
                        "watermark": batch.watermark,
                        "swept_to": batch.swept_to,
                        "sequence": int(batch.state_changed),
                    }
                ],
            )

    # --- outbox ---------------------------------------------------------------------------------

    def database_id(self) -> str:
        """The id this database was given when its schema was created (named by the outbox commit markers)."""
        with self.engine.connect() as conn:
            return str(conn.execute(select(t.database_identity.c.id)).scalar_one())

    def pending_outbox(self, group_id: str, worker_id: str, orphaned_before: datetime) -> list[OutboxRow]:
        """Outbox rows a worker must publish at start: its own that a crash left unacknowledged, and rows of
        another worker older than ``orphaned_before`` (that worker is gone: a live one publishes within seconds).

        A live worker's recent rows are left to it: publishing them too could land an older version of a record
        after the newer one that worker publishes next.
        """
        c = t.outbox.c
        mine_or_orphaned = or_(c.worker_id == worker_id, c.created_at < orphaned_before)
        with self.engine.connect() as conn:
            return [
                OutboxRow(row_id, owner, bytes(payload))
                for row_id, owner, payload in conn.execute(
                    select(c.id, c.worker_id, c.payload).where(c.group_id == group_id, mine_or_orphaned).order_by(c.id)
                )
            ]

    def outbox_after(self, group_id: str, worker_id: str, after_id: int) -> list[OutboxRow]:
        """A worker's outbox rows with an id above ``after_id``, in commit order."""
        c = t.outbox.c
        mine = and_(c.group_id == group_id, c.worker_id == worker_id, c.id > after_id)
        with self.engine.connect() as conn:
            return [
                OutboxRow(row_id, worker_id, bytes(payload))
                for row_id, payload in conn.execute(select(c.id, c.payload).where(mine).order_by(c.id))
            ]

    def delete_outbox(self, ids: Sequence[int]) -> None:
        """Forget outbox rows once their records are acknowledged."""
        if ids:
            with self.engine.begin() as conn:
                conn.execute(delete(t.outbox).where(t.outbox.c.id.in_(list(ids))))


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def current_experience_drops(
    engine: Engine, group_id: str, window: str, window_s: int, span_s: int, recent_s: float = 3600.0
) -> list[tuple[str, str, str]]:
    """(scope, key, metric) of the experience-drop alerts that fire now: those of the current or the previous short
    window by the group's event-time watermark, and those of an older window within ``span_s`` of it that a batch
    decided in the last ``recent_s`` seconds (a day's experience gap or repeat contacts grow for days after it, as
    their evidence arrives, and may fire late). Nothing before the group has a watermark."""
    clock, alerts = t.stream_clock.c, t.experience_alerts.c
    with engine.connect() as conn:
        watermark = conn.scalar(select(clock.watermark).where(clock.group_id == group_id))
        if watermark is None:
            return []
        now = as_utc(watermark)
        current = alerts.window_end > now - timedelta(seconds=window_s)
        revised = and_(
            alerts.window_end > now - timedelta(seconds=span_s),
            alerts.decided_at >= datetime.now(UTC) - timedelta(seconds=recent_s),
        )
        rows = conn.execute(
            select(alerts.scope, alerts.key, alerts.metric)
            .where(alerts.status == "firing", alerts.window == window, or_(current, revised))
            .distinct()
        )
        return [(scope, key, metric) for scope, key, metric in rows]


def count_touchpoints(conn: Connection, customer_id: str, up_to: int) -> int:
    """How many touchpoints a customer has, counted up to ``up_to`` on the customer-time index (a customer of
    millions of them costs no more than ``up_to``)."""
    c = t.touchpoints.c
    found = select(literal_column("1")).where(c.customer_id == customer_id).limit(up_to).subquery()
    return conn.scalar(select(func.count()).select_from(found)) or 0


def customers_count(engine: Engine) -> int:
    """Number of customers in the results database."""
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(t.customers)) or 0)
