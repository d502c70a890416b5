"""`cxstream publish` arguments: channel groups, channel directories, stdin, and the errors named before sending."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.touchpoint import Channel
from streams.sources import ArgumentProblem, SourceError, SourceFile, parse_sources

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def _touch(root: Path, *names: str) -> list[str]:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"{}\n")
        paths.append(str(path))
    return paths


def _plain(sources: list[SourceFile]) -> list[tuple[str, str, str]]:
    return [(s.name, s.channel.value, s.fmt) for s in sources]


def test_each_channel_applies_to_the_files_after_it(tmp_path: Path) -> None:
    a, b, c, d = _touch(tmp_path, "a.csv", "b.jsonl", "c.jsonl", "d.jsonl")
    args = ["--channel", "store", a, b, "--channel=phone", c, "--channel", "web", d]
    assert _plain(parse_sources(args)) == [
        (a, "store", "csv"),
        (b, "store", "jsonl"),
        (c, "phone", "jsonl"),
        (d, "web", "jsonl"),
    ]


def test_a_single_channel_applies_to_every_file_wherever_it_stands(tmp_path: Path) -> None:
    a, b = _touch(tmp_path, "a.csv", "b.csv")
    assert _plain(parse_sources(["--channel", "store", a, b])) == [(a, "store", "csv"), (b, "store", "csv")]
    # click took the option anywhere on the line before, so a file ahead of it is still that channel's.
    assert _plain(parse_sources([a, "--channel", "phone", b])) == [(a, "phone", "csv"), (b, "phone", "csv")]


def test_format_forces_every_file(tmp_path: Path) -> None:
    (a,) = _touch(tmp_path, "calls.txt")
    assert _plain(parse_sources(["--channel", "phone", a], fmt="csv")) == [(a, "phone", "csv")]
    assert _plain(parse_sources(["--channel", "phone", a])) == [(a, "phone", "jsonl")]


def test_dash_is_stdin_and_needs_a_channel(tmp_path: Path) -> None:
    (web,) = _touch(tmp_path, "w.jsonl")
    sources = parse_sources(["--channel", "phone", "-", "--channel", "web", web])
    assert _plain(sources) == [("-", "phone", "jsonl"), (web, "web", "jsonl")]
    assert sources[0].is_stdin and sources[0].size() is None
    with pytest.raises(SourceError, match="stdin needs a --channel"):
        parse_sources(["-", "--channel", "web", web, "--channel", "store", web])


def test_the_sample_directory_is_a_channel_directory() -> None:
    sources = parse_sources([str(SAMPLES)])
    assert [(Path(s.name).name, s.channel, s.fmt) for s in sources] == [
        ("ecommerce.jsonl", Channel.ECOMMERCE, "jsonl"),
        ("phone.csv", Channel.PHONE, "csv"),
        ("phone.jsonl", Channel.PHONE, "jsonl"),
        ("store.csv", Channel.STORE, "csv"),
        ("store.jsonl", Channel.STORE, "jsonl"),
        ("web.jsonl", Channel.WEB, "jsonl"),
    ]


def test_channel_sub_directories_and_flat_files_mix(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "store/2024-05/b.csv",
        "store/a.jsonl",
        "phone/calls.jsonl",
        "web.jsonl",
        ".DS_Store",
        "phone/.hidden/x.tmp",
    )
    names = [(str(Path(s.name).relative_to(tmp_path)), s.channel.value, s.fmt) for s in parse_sources([str(tmp_path)])]
    assert names == [
        ("phone/calls.jsonl", "phone", "jsonl"),
        ("store/2024-05/b.csv", "store", "csv"),
        ("store/a.jsonl", "store", "jsonl"),
        ("web.jsonl", "web", "jsonl"),
    ]


def test_a_directory_after_a_channel_is_all_its_files(tmp_path: Path) -> None:
    a, b = _touch(tmp_path, "exports/x.jsonl", "exports/y.jsonl")
    assert _plain(parse_sources(["--channel", "web", str(tmp_path / "exports")])) == [
        (a, "web", "jsonl"),
        (b, "web", "jsonl"),
    ]


def test_files_named_after_a_channel_need_no_channel(tmp_path: Path) -> None:
    a, b = _touch(tmp_path, "ecommerce.jsonl", "phone/2024-05.csv")
    assert _plain(parse_sources([a, b])) == [(a, "ecommerce", "jsonl"), (b, "phone", "csv")]


@pytest.mark.parametrize(
    ("layout", "bad"),
    [
        (["web.jsonl", "orders.jsonl"], "orders.jsonl"),
        (["web.jsonl", "README.md"], "README.md"),
        (["web.jsonl", "crm/x.jsonl"], "crm"),
        (["web/x.jsonl", "web/x.jsonl.gz"], "x.jsonl.gz"),
    ],
)
def test_a_file_whose_channel_cannot_be_told_is_named_in_one_line(tmp_path: Path, layout: list[str], bad: str) -> None:
    _touch(tmp_path, *layout)
    with pytest.raises(SourceError) as caught:
        parse_sources([str(tmp_path)])
    message = str(caught.value)
    assert bad in message and "\n" not in message


def test_a_loose_file_of_no_known_channel_is_an_error(tmp_path: Path) -> None:
    (a,) = _touch(tmp_path, "export.jsonl")
    with pytest.raises(SourceError, match=r"export\.jsonl: cannot tell its channel"):
        parse_sources([a])


def test_unknown_channels_options_and_missing_files(tmp_path: Path) -> None:
    (a,) = _touch(tmp_path, "a.jsonl")
    with pytest.raises(ArgumentProblem, match="--channel sms: not a channel"):
        parse_sources(["--channel", "sms", a])
    with pytest.raises(ArgumentProblem, match="--channel needs a value"):
        parse_sources([a, "--channel"])
    with pytest.raises(ArgumentProblem, match="no such option: --chanel"):
        parse_sources(["--chanel", "web", a])
    with pytest.raises(SourceError, match=r"nope\.jsonl: no such file"):
        parse_sources(["--channel", "web", str(tmp_path / "nope.jsonl")])
    with pytest.raises(SourceError, match="no source files"):
        parse_sources([])


def test_csv_only_for_store_and_phone(tmp_path: Path) -> None:
    (a,) = _touch(tmp_path, "web.csv")
    with pytest.raises(SourceError, match=r"web\.csv: CSV is accepted for phone and store only"):
        parse_sources([a])


def test_lines_are_streamed_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "store.csv"
    path.write_bytes(b"receipt_id,kind\n\nR-1,sale\r\nR-2,sale")
    (source,) = parse_sources([str(path)])
    seen: list[int] = []
    with source.lines(seen.append) as lines:
        assert list(lines) == [b"receipt_id,kind\n", b"\n", b"R-1,sale\r\n", b"R-2,sale"]
    assert sum(seen) == path.stat().st_size == source.size()
    assert source.count_records() == 2, "blank lines and the header are not records"
