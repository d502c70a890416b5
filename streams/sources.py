"""The source files of `cxstream publish`: which channel and format each is, and reading them line by line.

Files are named in channel groups, ``--channel store a.csv b.jsonl --channel phone c.jsonl`` (``--channel C``
applies to the paths after it, up to the next ``--channel``), or by a directory laid out by channel, as
``cxstream simulate --out DIR`` writes it::

    DIR/<channel>.jsonl, DIR/<channel>.csv       flat files, one or both per channel
    DIR/<channel>/**/*.jsonl, DIR/<channel>/**/*.csv   any number of files, in sub-directories too

A path given without a ``--channel`` before it takes its channel from that layout: a directory is read as above,
and a file from its name (``web.jsonl``) or its directory's (``web/2024-05.jsonl``). When exactly one
``--channel`` is given it applies to every path, wherever it stands, as it always has. Everything is resolved
before anything is sent: a file whose channel cannot be told is an error naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from schemas.touchpoint import Channel
from streams.adapters.reader import CSV_CHANNELS

Format = Literal["jsonl", "csv"]

#: File name endings read from a channel directory.
SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".csv": "csv"}

_CHANNELS = {c.value for c in Channel}
_CHANNEL_NAMES = ", ".join(c.value for c in Channel)
_READ_BUFFER = 1024 * 1024


class SourceError(ValueError):
    """A command line or directory that does not name readable source files; the message is one line."""


class ArgumentProblem(SourceError):
    """The command line itself is malformed (an unknown option or channel, a --channel without a value)."""


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file to publish: its name as given (dead letters carry it; ``-`` is stdin), channel and format."""

    name: str
    channel: Channel
    fmt: Format

    @property
    def is_stdin(self) -> bool:
        """True for ``-``."""
        return self.name == "-"

    def size(self) -> int | None:
        """Bytes in the file, or None when that is not known in advance (stdin, a pipe)."""
        if self.is_stdin:
            return None
        path = Path(self.name)
        return path.stat().st_size if path.is_file() else None

    @contextmanager
    def lines(self, on_bytes: Callable[[int], None] | None = None) -> Iterator[Iterator[bytes]]:
        """The file's lines as bytes with their terminators, read as they are used (never the whole file).

        ``on_bytes`` is called with the size of each line as it is read (for a progress bar).
        """
        if self.is_stdin:
            yield _counted(sys.stdin.buffer, on_bytes)
            return
        with open(self.name, "rb", buffering=_READ_BUFFER) as handle:
            yield _counted(handle, on_bytes)

    def count_records(self) -> int:
        """Non-blank lines, less a CSV header: the records a publish would read, counted without parsing them."""
        with self.lines() as lines:
            count = sum(1 for line in lines if line.strip())
        return count - 1 if self.fmt == "csv" and count else count


def _counted(lines: Iterable[bytes], on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    for line in lines:
        if on_bytes is not None:
            on_bytes(len(line))
        yield line


def parse_sources(args: Sequence[str], fmt: Format | None = None) -> list[SourceFile]:
    """The files named by ``args`` (``--channel C`` groups, files, directories, ``-``), in the order given.

    ``fmt`` forces the format of every file; otherwise a ``.csv`` name is CSV and anything else JSON Lines.
    Raises SourceError, with a one-line message naming the argument or file, for anything that cannot be read.
    """
    groups = _channel_groups(args)
    sources: list[SourceFile] = []
    for channel, path in groups:
        sources += _resolve(path, channel, fmt)
    if not sources:
        raise SourceError("no source files given: name files after --channel C, or a directory laid out by channel")
    for source in sources:
        if source.fmt == "csv" and source.channel not in CSV_CHANNELS:
            allowed = " and ".join(sorted(CSV_CHANNELS))
            raise SourceError(f"{source.name}: CSV is accepted for {allowed} only, not {source.channel.value}")
    return sources


def _channel_groups(args: Sequence[str]) -> list[tuple[Channel | None, str]]:
    """Pair each path with the ``--channel`` before it (None when there is none)."""
    pairs: list[tuple[Channel | None, str]] = []
    channels: list[Channel] = []
    current: Channel | None = None
    tokens = iter(args)
    for token in tokens:
        if token == "--channel" or token.startswith("--channel="):
            value = token.partition("=")[2] if "=" in token else next(tokens, None)
            if not value:
                raise ArgumentProblem("--channel needs a value: " + _CHANNEL_NAMES)
            try:
                current = _channel(value, f"--channel {value}")
            except SourceError as exc:
                raise ArgumentProblem(str(exc)) from None
            channels.append(current)
        elif token.startswith("-") and token != "-":
            raise ArgumentProblem(f"no such option: {token}")
        else:
            pairs.append((current, token))
    if len(channels) == 1:
        # The single-channel form, whose option click accepted anywhere on the line, names every file's channel.
        return [(channels[0], path) for _, path in pairs]
    return pairs


def _channel(value: str, where: str) -> Channel:
    try:
        return Channel(value)
    except ValueError:
        raise SourceError(f"{where}: not a channel (expected {_CHANNEL_NAMES})") from None


def _resolve(name: str, channel: Channel | None, fmt: Format | None) -> list[SourceFile]:
    """The files one path stands for."""
    if name == "-":
        if channel is None:
            raise SourceError("-: stdin needs a --channel before it")
        return [SourceFile(name, channel, fmt or "jsonl")]
    path = Path(name)
    if path.is_dir():
        return _directory(name, channel, fmt)
    if not path.exists():
        raise SourceError(f"{name}: no such file or directory")
    return [SourceFile(name, channel or _channel_of_file(name), fmt or _format_of(name))]


def _format_of(name: str) -> Format:
    return "csv" if name.endswith(".csv") else "jsonl"


def _channel_of_file(name: str) -> Channel:
    """A file's channel from its name (``web.jsonl``) or its directory's (``web/part-1.jsonl``)."""
    path = Path(name)
    for candidate in (path.stem, path.parent.name):
        if candidate in _CHANNELS:
            return Channel(candidate)
    raise SourceError(
        f"{name}: cannot tell its channel; put --channel C before it, or name it <channel>.jsonl or <channel>/…"
        f" ({_CHANNEL_NAMES})"
    )


def _directory(name: str, channel: Channel | None, fmt: Format | None) -> list[SourceFile]:
    """The files of a directory: all of the given channel, or laid out by channel."""
    root = Path(name)
    if channel is not None:
        files = _data_files(root)
        if not files:
            raise SourceError(f"{name}: no .jsonl or .csv files in it")
        return [SourceFile(str(path), channel, fmt or SUFFIXES[path.suffix]) for path in files]
    sources: list[SourceFile] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            kind = _channel(entry.name, f"{entry}: directory")
            sources += [SourceFile(str(path), kind, fmt or SUFFIXES[path.suffix]) for path in _data_files(entry)]
        elif entry.suffix in SUFFIXES and entry.stem in _CHANNELS:
            sources.append(SourceFile(str(entry), Channel(entry.stem), fmt or SUFFIXES[entry.suffix]))
        else:
            raise SourceError(
                f"{entry}: cannot tell its channel; a channel directory holds <channel>.jsonl, <channel>.csv"
                f" or <channel>/ ({_CHANNEL_NAMES})"
            )
    if not sources:
        raise SourceError(f"{name}: no <channel>.jsonl, <channel>.csv or <channel>/ in it ({_CHANNEL_NAMES})")
    return sources


def _data_files(root: Path) -> list[Path]:
    """Every .jsonl and .csv file under ``root``, in name order; anything else is an error, not skipped data."""
    files = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or path.is_dir():
            continue
        if path.suffix not in SUFFIXES:
            raise SourceError(f"{path}: not a .jsonl or .csv file")
        files.append(path)
    return files
