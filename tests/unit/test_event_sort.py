"""The external sort of a backfill: runs spilled, merged output sorted and complete, ties fixed, temp files gone."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from streams.event_sort import EventSorter, epoch_us
from streams.publisher import EncodedEvent

START = datetime(2024, 5, 1, tzinfo=UTC)


def _events(n: int, seed: int = 7) -> list[tuple[datetime, str, EncodedEvent]]:
    """n events in shuffled time order, several per instant, with keys and values of varied length."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        when = START + timedelta(minutes=rng.randrange(n // 3 + 1))
        event_id = f"web-{rng.randrange(10**6):06d}"
        value = b'{"event_id": "%s", "n": %d}' % (event_id.encode(), i) + b" " * rng.randrange(50)
        events.append((when, event_id, EncodedEvent(rng.choice(["store", "web"]), f"k:{i}".encode(), value)))
    return events


def _sort(events: list[tuple[datetime, str, EncodedEvent]], tmp: Path, **kwargs: int) -> tuple[list, EventSorter]:
    with EventSorter(directory=tmp, **kwargs) as sorter:
        for when, event_id, event in events:
            sorter.add(when, event_id, event)
        merged = list(sorter.merged())
        assert sorter.temp_dir is None or sorter.temp_dir.is_dir(), "runs live until the sorter is left"
    return merged, sorter


def test_spilled_runs_merge_into_complete_sorted_output(tmp_path: Path) -> None:
    events = _events(500)
    merged, sorter = _sort(events, tmp_path, run_events=7)

    assert sorter.runs_spilled >= 500 // 7, "the input was spilled in runs of seven"
    assert len(merged) == 500
    assert sorted(e.value for e in merged) == sorted(ev.value for _, _, ev in events), "nothing lost or changed"
    keys = [(e.occurred_us, e.event_id) for e in merged]
    assert keys == sorted(keys)
    # Every field comes back as it went in.
    by_value = {ev.value: (when, event_id, ev) for when, event_id, ev in events}
    for e in merged:
        when, event_id, ev = by_value[e.value]
        assert (e.occurred_at, e.event_id, e.encoded) == (when, event_id, ev)
    assert list(tmp_path.iterdir()) == [], "temporary files removed"


def test_more_runs_than_the_fan_in_take_several_merge_passes(tmp_path: Path) -> None:
    events = _events(300)
    merged, sorter = _sort(events, tmp_path, run_events=5, fan_in=3)

    assert sorter.runs_spilled > 300 // 5, "runs were merged into bigger runs before the last merge"
    assert [(e.occurred_us, e.event_id, e.seq) for e in merged] == sorted(
        (epoch_us(when), event_id, seq) for seq, (when, event_id, _) in enumerate(events)
    )
    assert list(tmp_path.iterdir()) == []


def test_a_run_is_also_spilled_when_its_bytes_reach_the_limit(tmp_path: Path) -> None:
    merged, sorter = _sort(_events(40), tmp_path, run_bytes=1000)
    assert sorter.runs_spilled >= 4
    assert len(merged) == 40


def test_small_input_is_sorted_in_memory_without_temporary_files(tmp_path: Path) -> None:
    merged, sorter = _sort(_events(20), tmp_path)
    assert sorter.runs_spilled == 0
    assert [(e.occurred_us, e.event_id) for e in merged] == sorted((e.occurred_us, e.event_id) for e in merged)


def test_equal_times_are_ordered_by_event_id_then_by_arrival_whatever_the_offset(tmp_path: Path) -> None:
    # The same instant written with two UTC offsets, ids out of order, and one id sent twice.
    same = START + timedelta(hours=9)
    in_paris = same.astimezone(timezone(timedelta(hours=2)))
    adds = [
        (in_paris, "web-c", EncodedEvent("web", b"k", b"c")),
        (same, "store-b", EncodedEvent("store", b"k", b"b1")),
        (same + timedelta(microseconds=-1), "web-z", EncodedEvent("web", b"k", b"z")),
        (in_paris, "store-b", EncodedEvent("store", b"k", b"b2")),
        (same, "phone-a", EncodedEvent("phone", b"k", b"a")),
    ]
    for run_events in (1, 2, 100):
        merged, _ = _sort(adds, tmp_path, run_events=run_events)
        assert [e.value for e in merged] == [b"z", b"a", b"b1", b"b2", b"c"], f"run size {run_events}"


def test_temporary_files_are_removed_on_an_error_while_adding(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), EventSorter(run_events=3, directory=tmp_path) as sorter:
        for n, (when, event_id, event) in enumerate(_events(30)):
            sorter.add(when, event_id, event)
            if n == 20:
                assert len(list(sorter.temp_dir.iterdir())) == 7  # type: ignore[union-attr]
                raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_are_removed_when_merging_is_interrupted(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="broker gone"), EventSorter(run_events=3, directory=tmp_path) as sorter:
        for when, event_id, event in _events(30):
            sorter.add(when, event_id, event)
        for n, _ in enumerate(sorter.merged()):
            if n == 10:
                raise RuntimeError("broker gone")
    assert list(tmp_path.iterdir()) == []
