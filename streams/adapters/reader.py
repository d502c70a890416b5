"""Read channel source lines into canonical touchpoints or dead letters; never raises on any input bytes.

One physical line is one record, in JSON Lines and in CSV alike (a quoted CSV field may not hold a line
break), so every non-blank line gives exactly one result and its 1-based line number is exact. A CSV file's
first non-blank line is its header and gives no result unless it is unusable.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from schemas.channels import CHANNEL_MODELS
from schemas.deadletter import DeadLetter
from schemas.touchpoint import Channel, TouchpointEvent
from streams.adapters import CONVERTERS
from streams.adapters.base import Conversion, column_problem
from streams.domain.identifiers import IdentifierHashing, InvalidIdentifier

log = logging.getLogger(__name__)

#: Channels whose files may be CSV.
CSV_CHANNELS: frozenset[Channel] = frozenset({Channel.STORE, Channel.PHONE})

#: CSV columns that hold a JSON value (a list or an object) in their cell.
CSV_JSON_COLUMNS: frozenset[str] = frozenset({"items", "feedback", "survey", "identifiers"})

#: Deepest nesting of objects and arrays accepted in a record; deeper ones cannot be re-serialised downstream.
MAX_DEPTH = 64

#: Bytes of a too-long line kept in its dead letter, so that the dead letter still fits a Kafka record.
TOO_LONG_KEPT_BYTES = 64 * 1024

#: Longest detail text of a dead letter.
MAX_DETAIL_CHARS = 2000

_BOM = b"\xef\xbb\xbf"


class Reason(StrEnum):
    """Why an adapter rejected a record (the ``reason`` of its dead letter)."""

    INVALID_UTF8 = "invalid_utf8"
    LINE_TOO_LONG = "line_too_long"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_CSV = "invalid_csv"
    VALIDATION_ERROR = "validation_error"
    INVALID_IDENTIFIER = "invalid_identifier"
    #: A bug in an adapter, never bad input: dead-lettered (and logged) so that one record cannot stop a feed.
    CONVERSION_ERROR = "conversion_error"


@dataclass(frozen=True, slots=True)
class Accepted:
    """A line that became a canonical touchpoint."""

    line: int | None
    event: TouchpointEvent
    raw: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that was rejected; ``raw`` is the whole original line, even when the dead letter keeps less."""

    line: int | None
    dead_letter: DeadLetter
    raw: bytes

    @property
    def reason(self) -> str:
        """The dead letter's reason."""
        return self.dead_letter.reason


Result = Accepted | Rejected


class _Reject(Exception):
    """Internal: stop processing a line with a reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class _Context:
    channel: Channel
    source_file: str | None
    received_at: datetime | None
    default_region: str
    max_line_bytes: int
    hashing: IdentifierHashing | None = None

    def now(self) -> datetime:
        return self.received_at or datetime.now(UTC)

    def conversion(self, line: int | None) -> Conversion:
        return Conversion(self.now(), self.source_file, line, self.default_region, self.hashing)


def read_records(
    channel: Channel | str,
    data: bytes | str | Iterable[bytes | str],
    *,
    source_file: str | None,
    fmt: Literal["jsonl", "csv"] = "jsonl",
    received_at: datetime | None = None,
    max_line_bytes: int = 1_000_000,
    default_region: str = "GB",
    hashing: IdentifierHashing | None = None,
) -> Iterator[Result]:
    """Yield one Accepted or Rejected per non-blank line of ``data`` (a whole document, or an iterable of lines).

    Raises ValueError at once for bad arguments (unknown channel or format, CSV for web or e-commerce, a naive
    ``received_at``); after that, no input can make it raise. ``received_at`` defaults to the time of each line.
    With ``hashing`` (``streams.policies.identifier_hashing``), accepted events carry no raw e-mail or phone number.
    """
    ctx = _context(channel, source_file, received_at, default_region, max_line_bytes, hashing)
    if fmt == "jsonl":
        return _read_jsonl(ctx, _lines(data))
    if fmt == "csv":
        if ctx.channel not in CSV_CHANNELS:
            raise ValueError(f"CSV is accepted for {sorted(CSV_CHANNELS)} only, not {ctx.channel}")
        return _read_csv(ctx, _lines(data))
    raise ValueError(f"unknown format {fmt!r}: expected 'jsonl' or 'csv'")


def convert_one(
    channel: Channel | str,
    raw: bytes | object,
    *,
    received_at: datetime | None = None,
    source_file: str | None = None,
    line: int | None = None,
    max_bytes: int = 1_000_000,
    default_region: str = "GB",
    hashing: IdentifierHashing | None = None,
) -> Result:
    """Validate and convert one record: JSON bytes, or a JSON value the caller already parsed (the HTTP collector).

    Never raises on any ``raw`` (bad arguments raise ValueError, as in ``read_records``). For a parsed value the
    dead letter holds its JSON re-serialisation, since the original bytes are the caller's.
    """
    ctx = _context(channel, source_file, received_at, default_region, max_bytes, hashing)
    if isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        return _guard(ctx, line, data, partial(_event_from_json, ctx, line, data))
    original = _dump(raw)
    if not isinstance(raw, dict):
        return _rejected(ctx, line, original, Reason.NOT_AN_OBJECT, f"expected a JSON object, got {_json_kind(raw)}")
    return _guard(ctx, line, original, partial(_event_from_object, ctx, line, raw))


# --- lines ---------------------------------------------------------------------------------------


def _context(
    channel: Channel | str,
    source_file: str | None,
    received_at: datetime | None,
    default_region: str,
    max_line_bytes: int,
    hashing: IdentifierHashing | None = None,
) -> _Context:
    if received_at is not None and received_at.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware")
    if source_file is not None and not isinstance(source_file, str):
        raise ValueError("source_file must be a string")
    if max_line_bytes < 1:
        raise ValueError("max_line_bytes must be positive")
    return _Context(Channel(channel), source_file, received_at, default_region, max_line_bytes, hashing)


def _lines(data: bytes | str | Iterable[bytes | str]) -> Iterator[tuple[int, bytes]]:
    """Number the physical lines of ``data``, without their \\n or \\r\\n terminators."""
    # A whole document given as one str is split like bytes, not iterated character by character.
    chunks: Iterable[bytes | bytearray | memoryview | str]
    chunks = [data] if isinstance(data, bytes | bytearray | memoryview | str) else data
    number = 0
    for chunk in chunks:
        # Lone surrogates survive as bytes that are not UTF-8, so such a line is rejected, not raised on.
        blob = chunk.encode("utf-8", "surrogatepass") if isinstance(chunk, str) else bytes(chunk)
        pieces = blob.split(b"\n")
        if blob.endswith(b"\n"):
            pieces.pop()
        for piece in pieces:
            number += 1
            yield number, piece[:-1] if piece.endswith(b"\r") else piece


def _is_blank(raw: bytes) -> bool:
    return not raw.strip()


def _decode(ctx: _Context, raw: bytes, line: int | None) -> str:
    if len(raw) > ctx.max_line_bytes:
        raise _Reject(Reason.LINE_TOO_LONG, f"line is {len(raw)} bytes, over the limit of {ctx.max_line_bytes}")
    body = raw[len(_BOM) :] if line == 1 and raw.startswith(_BOM) else raw
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(Reason.INVALID_UTF8, f"byte {exc.start}: {exc.reason}") from None


# --- JSON Lines ----------------------------------------------------------------------------------


def _read_jsonl(ctx: _Context, lines: Iterator[tuple[int, bytes]]) -> Iterator[Result]:
    for number, raw in lines:
        if _is_blank(raw):
            continue
        yield _guard(ctx, number, raw, partial(_event_from_json, ctx, number, raw))


def _event_from_object(ctx: _Context, line: int | None, obj: dict[str, Any]) -> TouchpointEvent:
    _check_depth(obj)
    return _convert(ctx, line, obj)


def _event_from_json(ctx: _Context, line: int | None, raw: bytes) -> TouchpointEvent:
    return _convert(ctx, line, _parse_json_line(ctx, raw, line))


def _parse_json_line(ctx: _Context, raw: bytes, line: int | None) -> dict[str, Any]:
    text = _decode(ctx, raw, line)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _Reject(Reason.INVALID_JSON, str(exc)) from None
    if not isinstance(value, dict):
        raise _Reject(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {_json_kind(value)}")
    # Counting brackets is a cheap filter: only lines that could be too deep are walked.
    if text.count("{") + text.count("[") > MAX_DEPTH:
        _check_depth(value)
    return value


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _check_depth(record: dict[str, Any]) -> None:
    level: list[Any] = [record]
    for _ in range(MAX_DEPTH):
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)]
        level = [node for node in level if isinstance(node, dict | list)]
        if not level:
            return
    raise _Reject(Reason.VALIDATION_ERROR, f"record: nested deeper than {MAX_DEPTH} levels")


# --- CSV -----------------------------------------------------------------------------------------


def _read_csv(ctx: _Context, lines: Iterator[tuple[int, bytes]]) -> Iterator[Result]:
    header: list[str] | None = None
    header_problem: str | None = None
    for number, raw in lines:
        if _is_blank(raw):
            continue
        if header is None and header_problem is None:
            try:
                header = _parse_header(ctx, raw, number)
            except _Reject as exc:
                header_problem = f"line {number}: {exc.detail}"
                yield _rejected(ctx, number, raw, Reason.INVALID_CSV, f"header {header_problem}")
            continue
        if header is None:
            yield _rejected(ctx, number, raw, Reason.INVALID_CSV, f"no usable header ({header_problem})")
            continue
        yield _guard(ctx, number, raw, partial(_event_from_csv, ctx, header, number, raw))


def _event_from_csv(ctx: _Context, header: list[str], line: int, raw: bytes) -> TouchpointEvent:
    return _convert(ctx, line, _parse_csv_row(ctx, header, raw, line))


def _split_csv(ctx: _Context, raw: bytes, line: int) -> list[str]:
    text = _decode(ctx, raw, line)
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise _Reject(Reason.INVALID_CSV, str(exc)) from None
    if len(rows) != 1:
        raise _Reject(Reason.INVALID_CSV, "unterminated quoted field (a field may not hold a line break)")
    return rows[0]


def _parse_header(ctx: _Context, raw: bytes, line: int) -> list[str]:
    try:
        names = [name.strip() for name in _split_csv(ctx, raw, line)]
    except _Reject as exc:
        raise _Reject(Reason.INVALID_CSV, f"{exc.reason}: {exc.detail}") from None
    if "" in names:
        raise _Reject(Reason.INVALID_CSV, "empty column name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise _Reject(Reason.INVALID_CSV, f"duplicate columns {duplicates}")
    return names


def _parse_csv_row(ctx: _Context, header: list[str], raw: bytes, line: int) -> dict[str, Any]:
    cells = _split_csv(ctx, raw, line)
    if len(cells) != len(header):
        raise _Reject(Reason.INVALID_CSV, f"expected {len(header)} cells as in the header, got {len(cells)}")
    record: dict[str, Any] = {}
    for name, cell in zip(header, cells, strict=True):
        if not cell.strip():
            continue  # an empty cell is an absent field
        if name in CSV_JSON_COLUMNS:
            try:
                record[name] = orjson.loads(cell)
            except orjson.JSONDecodeError as exc:
                raise _Reject(Reason.VALIDATION_ERROR, f"{name}: the cell is not valid JSON ({exc})") from None
        else:
            record[name] = cell
    _check_depth(record)
    return record


# --- conversion and results ----------------------------------------------------------------------


def _convert(ctx: _Context, line: int | None, obj: dict[str, Any]) -> TouchpointEvent:
    nul = _nul_path(obj)
    if nul is not None:
        raise _Reject(Reason.VALIDATION_ERROR, f"{nul}: a NUL character (\\u0000) is not accepted in any text")
    try:
        record = CHANNEL_MODELS[ctx.channel].model_validate(obj)
    except ValidationError as exc:
        raise _Reject(Reason.VALIDATION_ERROR, format_validation_error(exc)) from None
    try:
        event = CONVERTERS[ctx.channel](record, ctx.conversion(line))
    except InvalidIdentifier as exc:
        raise _Reject(Reason.INVALID_IDENTIFIER, str(exc)) from None
    problem = column_problem(event)
    if problem is not None:
        raise _Reject(Reason.VALIDATION_ERROR, problem)
    return event


def _nul_path(obj: dict[str, Any]) -> str | None:
    """The path of a NUL character in a record's keys or text values, or None when it holds none.

    PostgreSQL text cannot hold NUL, so a record with one would be stored on SQLite and refused on PostgreSQL; it is
    rejected here, not stripped, because stripping would change its ids without telling anyone.
    """
    # One serialisation is cheaper than a walk, and orjson writes every NUL as \u0000: walk only records that have one.
    try:
        if b"\\u0000" not in orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS, default=str):
            return None
    except (TypeError, orjson.JSONEncodeError):  # an object orjson cannot write (a huge integer): walk it
        pass
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return path or "record"
        elif isinstance(node, dict):
            for key, value in node.items():
                child = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and "\x00" in key:
                    return child
                stack.append((child, value))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", value) for i, value in enumerate(node))
    return None


def _guard(ctx: _Context, line: int | None, raw: bytes, work: Callable[[], TouchpointEvent]) -> Result:
    """Run one line's work; turn every failure into a Rejected, so that no line can stop the feed."""
    try:
        return Accepted(line, work(), raw)
    except _Reject as exc:
        return _rejected(ctx, line, raw, exc.reason, exc.detail)
    except Exception as exc:  # a bug, not bad input: keep the feed going, keep the evidence
        log.exception("adapter failed on %s line %s", ctx.source_file, line)
        return _rejected(ctx, line, raw, Reason.CONVERSION_ERROR, f"{type(exc).__name__}: {exc}")


def _rejected(ctx: _Context, line: int | None, raw: bytes, reason: Reason, detail: str) -> Rejected:
    kept = raw[:TOO_LONG_KEPT_BYTES] if len(raw) > ctx.max_line_bytes else raw
    if len(kept) < len(raw):
        detail = f"{detail}; the dead letter keeps its first {len(kept)} bytes"
    dead = DeadLetter(
        channel=str(ctx.channel),
        reason=str(reason),
        detail=detail[:MAX_DETAIL_CHARS],
        source_file=ctx.source_file,
        line=line,
        stage="adapter",
        rejected_at=ctx.now(),
        original_b64=DeadLetter.encode(kept),
    )
    return Rejected(line, dead, raw)


def format_validation_error(exc: ValidationError) -> str:
    """Render a pydantic error as ``field.path: message; ...`` (``record`` for whole-record rules)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        path = ".".join(str(part) for part in error["loc"]) or "record"
        parts.append(f"{path}: {error['msg']}")
    return "; ".join(parts)


def _dump(obj: object) -> bytes:
    """Bytes of an already-parsed record, for its dead letter; never raises."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS, default=repr)
    except Exception:  # too deep, cyclic, surrogates: fall back to something a person can read
        try:
            return repr(obj).encode("utf-8", "backslashreplace")
        except Exception:
            return b"<unprintable record>"
