"""The sample source files of every channel (tests/data/samples), as the adapters' tests read them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from schemas.touchpoint import Channel

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"

#: Each sample file with its channel and format.
SAMPLE_FILES: list[tuple[str, Channel, Literal["jsonl", "csv"]]] = [
    ("store.jsonl", Channel.STORE, "jsonl"),
    ("store.csv", Channel.STORE, "csv"),
    ("phone.jsonl", Channel.PHONE, "jsonl"),
    ("phone.csv", Channel.PHONE, "csv"),
    ("web.jsonl", Channel.WEB, "jsonl"),
    ("ecommerce.jsonl", Channel.ECOMMERCE, "jsonl"),
]
