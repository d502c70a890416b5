"""Dead-letter reasons: one list, documented, and the only label values Prometheus gets."""

from __future__ import annotations

import re
from pathlib import Path

from schemas.deadletter import REASONS, label_values
from streams.adapters.reader import Reason

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_reason_is_documented_and_every_documented_reason_is_known() -> None:
    text = README.read_text()
    section = text[text.index("### Dead-letter records") : text.index("## Experience metrics and alerts")]
    documented = set()
    for row in re.findall(r"^\| (`[a-z0-9_]+`(?:, `[a-z0-9_]+`)*) \|", section, flags=re.M):
        documented.update(re.findall(r"`([a-z0-9_]+)`", row))
    fields = {"channel", "reason", "detail", "source_file", "line", "stage", "rejected_at", "original_b64"}
    fields |= {"topic", "partition", "offset", "original_digest"}
    assert documented - fields == REASONS
    assert {reason.value for reason in Reason} <= REASONS


def test_label_values_come_from_fixed_sets_whatever_the_record_says() -> None:
    assert label_values("web", "too_late", "worker") == ("web", "too_late", "worker")
    crafted = [label_values(f"chan-{n}", f"reason-{n}", f"stage-{n}") for n in range(2000)]
    assert set(crafted) == {("unknown", "other", "unknown")}
    assert label_values(None, ["x"], {"y": 1}) == ("unknown", "other", "unknown")
