"""What the operator commands show from the results database (``cxstream metrics``, ``cxstream timeline``), and
the plain-text helpers every such command shares (tables, times, numbers, escaping record contents)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine

from sinks.queries import alert_page, customer_merges, customer_timeline
from streams.domain.customer import (
    EVENT_ID,
    TYPE,
    ContactContext,
    CustomerPolicy,
    CustomerState,
    StoredEntry,
    is_kept,
    row_of,
)
from streams.domain.metrics import METRICS_BY_SCOPE

#: Every metric name the ``metrics`` view can hold.
METRIC_NAMES: frozenset[str] = frozenset(metric.name for metrics in METRICS_BY_SCOPE.values() for metric in metrics)
#: Alerts read from the database at a time for one customer's timeline.
ALERT_PAGE = 500

# Record contents (a rejected line, an alert's message built from one) reach the terminal: control characters,
# escape sequences above all, are shown escaped rather than sent to it.
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL_BUT_LINES = {code: text for code, text in _CONTROL.items() if chr(code) not in "\n\t"}


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters escaped (``\\x1b``); with ``newlines``, line feeds and tabs kept."""
    return text.translate(_CONTROL_BUT_LINES if newlines else _CONTROL)


def when(at: datetime | None) -> str:
    """A time as the commands print it: UTC, to the second."""
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def number(value: float | int | None) -> str:
    """A figure as the commands print it: whole numbers without a fraction, others to at most 4 decimals."""
    if value is None:
        return "-"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}".rstrip("0")


def plural(count: int, noun: str) -> str:
    """``1 dead letter``, ``2 dead letters``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Rows under headers in aligned columns (the columns in ``right``, by index, aligned right: numbers)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if n in right else cell.ljust(width)
            for n, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return [line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)]


def dumps(data: object) -> str:
    """JSON output: indented, times as ISO 8601, decimals as strings."""
    return orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2).decode()


class Spool:
    """Byte strings kept in a temporary file, each read back by the place ``add`` gave it: many big items cost
    their places in memory, not their bytes."""

    def __init__(self) -> None:
        """An empty spool; ``close`` (or the end of the process) removes its file."""
        self._file = tempfile.TemporaryFile()  # noqa: SIM115  # open for the life of the spool (close)

    def add(self, data: bytes) -> tuple[int, int]:
        """Keep ``data``; return its place (where it starts, its length)."""
        start = self._file.seek(0, os.SEEK_END)
        self._file.write(data)
        return start, len(data)

    def read(self, place: tuple[int, int]) -> bytes:
        """The bytes kept at ``place``."""
        start, size = place
        self._file.seek(start)
        return self._file.read(size)

    def close(self) -> None:
        """Remove the temporary file."""
        self._file.close()


class SortedJsonList:
    """A JSON list written in key order once every item is known, its items kept in a temporary file meanwhile:
    a long list of big items (dead letters with their original bytes) costs its keys in memory, not its items."""

    def __init__(self) -> None:
        """An empty list; ``close`` (or the end of the process) removes its file."""
        self._spool = Spool()
        self._places: list[tuple[Any, tuple[int, int]]] = []  # key, where the item's JSON is

    def add(self, key: Any, item: object) -> None:
        """Add ``item``, to be written at the place ``key`` sorts to (keys are distinct)."""
        self._places.append((key, self._spool.add(orjson.dumps(item, default=str, option=orjson.OPT_INDENT_2))))

    def write(self, echo: Callable[[str], None]) -> None:
        """Give ``echo`` the list a line at a time (the lines of ``dumps`` of the sorted items)."""
        if not self._places:
            echo("[]")
            return
        echo("[")
        last = len(self._places) - 1
        for n, (_, place) in enumerate(sorted(self._places, key=lambda item: item[0])):
            text = self._spool.read(place).decode()
            # Indented on "\n" alone, which JSON strings never hold raw (``str.splitlines`` would also split on
            # characters such as U+0085 inside them).
            echo("  " + text.replace("\n", "\n  ") + ("," if n < last else ""))
        echo("]")

    def close(self) -> None:
        """Remove the temporary file."""
        self._spool.close()


# --- metrics -------------------------------------------------------------------------------------------------------

#: Columns of ``cxstream metrics``.
METRIC_HEADERS = ("scope", "key", "metric", "window", "window_start", "value", "basis", "status", "revision")


def metric_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Figures of the ``metrics`` view as a table: value, then numerator/denominator (its basis)."""
    body = [
        [
            str(row["scope"]),
            str(row["key"]),
            str(row["metric"]),
            str(row["window"]),
            when(row["window_start"]),
            number(row["value"]),
            f"{number(row['numerator'])}/{number(row['denominator'])}",
            str(row["status"]),
            str(row["revision"]),
        ]
        for row in rows
    ]
    return [printable(line) for line in table(METRIC_HEADERS, body, right=frozenset({5, 6, 8}))]


# --- a customer's timeline -------------------------------------------------------------------------------------------


def contact_contexts(
    customer_id: str, touchpoints: Sequence[dict[str, Any]], policy: CustomerPolicy
) -> dict[str, ContactContext]:
    """Each support contact's place in its issue (contact number, repeat...) by event id, derived from the stored
    touchpoints by the domain, as the worker derived it for the timeline topic (the table does not store it)."""
    rows = [row_of(StoredEntry(**{name: tp[name] for name in StoredEntry._fields})) for tp in touchpoints]
    state = CustomerState(customer_id)
    # A state holding nothing yet, then complete from the start: what a worker builds from this table when it
    # reads a customer's history back (CustomerState.restore).
    state.history_from = state.facts_from = math.inf
    state.restore([row for row in rows if is_kept(row)], None, -math.inf)
    contexts = {}
    for row in rows:
        context = state.derive(row, policy).contact if row[TYPE] == "support_contact" else None
        if context is not None:
            contexts[row[EVENT_ID]] = context
    return contexts


def customer_story(engine: Engine, customer_id: str, policy: CustomerPolicy) -> dict[str, Any]:
    """A customer's profile, identifiers and touchpoints (each contact with its ``contact_number``), alerts and the
    merges that ended in the customer."""
    data = customer_timeline(engine, customer_id)
    contexts = contact_contexts(customer_id, data["touchpoints"], policy)
    for touchpoint in data["touchpoints"]:
        context = contexts.get(touchpoint["event_id"])
        touchpoint["contact_number"] = None if context is None else context.number
    alerts: list[dict[str, Any]] = []
    while True:
        after = None if not alerts else (alerts[-1]["occurred_at"], alerts[-1]["alert_id"])
        page = alert_page(engine, {"customer_id": customer_id}, None, None, after, ALERT_PAGE)
        alerts += page
        if len(page) < ALERT_PAGE:
            break
    data["alerts"] = alerts
    data["merges"] = customer_merges(engine, customer_id)
    return data


def survey_scores(row: dict[str, Any]) -> str:
    """A touchpoint's survey answers as ``NPS 9 CSAT 4`` (empty without any)."""
    return " ".join(f"{name.upper()} {row[name]}" for name in ("nps", "csat", "ces") if row.get(name) is not None)


def _touchpoint_line(row: dict[str, Any]) -> str:
    parts = [f"  {row['occurred_at'].strftime('%Y-%m-%d %H:%M')}  {row['channel']:<9} {row['type']:<16}"]
    if row["amount"] is not None:
        parts.append(f"{row['amount']} {row['currency']}")
    if scores := survey_scores(row):
        parts.append(scores)
    if row["issue_key"]:
        issue = [f"issue {row['issue_key']}"]
        if row["contact_number"]:
            issue.append(f"contact {row['contact_number']}")
        if row["repeat_contact"]:
            issue.append("repeat")
        if row["resolved"] is not None:
            issue.append("resolved" if row["resolved"] else "unresolved")
        if row.get("resolution_contradicted"):
            issue.append("contradicted by the customer")
        parts.append(", ".join(issue))
    if row["moments"]:
        parts.append(f"★ {row['moments']}")
    return "  ".join(parts).rstrip()


def _section(title: str) -> str:
    return f"── {title} " + "─" * 40


def story_lines(data: dict[str, Any]) -> list[str]:
    """A customer's timeline as text: touchpoints by stage (amounts, survey scores, issues, moments), then the
    customer's alerts and the customers merged into it."""
    profile = data["profile"] or {}
    lines = [
        f"customer {data['customer_id']}  stage={profile.get('stage')}  events={profile.get('events')}",
        "identifiers: " + ", ".join(data["identifiers"]),
    ]
    stage = None
    for row in data["touchpoints"]:
        if row["stage"] != stage:
            stage = row["stage"]
            lines.append(_section(stage.replace("_", "-")))
        lines.append(_touchpoint_line(row))
    if data["alerts"]:
        lines.append(_section(f"alerts ({len(data['alerts'])})"))
        for alert in data["alerts"]:
            lines.append(f"  {when(alert['occurred_at'])}  {alert['severity']:<8} {alert['rule']}  {alert['message']}")
    if data["merges"]:
        lines.append(_section(f"merged in ({len(data['merges'])})"))
        for merge in data["merges"]:
            keys = ", ".join(f"{kind}:{value}" for kind, value in sorted((merge["identifiers"] or {}).items()))
            lines.append(f"  {when(merge['occurred_at'])}  {merge['merged_id']}  by event {merge['event_id']}: {keys}")
    return [printable(line) for line in lines]
