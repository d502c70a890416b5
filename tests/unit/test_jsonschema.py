"""The published JSON Schemas in schemas/json/ are current and describe what the models accept."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.jsonschema import export_schemas

PUBLISHED_DIR = Path(__file__).parent.parent.parent / "schemas" / "json"


def test_published_schemas_are_current(tmp_path: Path) -> None:
    written = export_schemas(tmp_path)
    fresh = {path.name: path.read_text(encoding="utf-8") for path in written}
    committed = {path.name: path.read_text(encoding="utf-8") for path in PUBLISHED_DIR.glob("*.schema.json")}
    assert committed == fresh, "schemas/json/ is stale: run `python -m schemas.jsonschema` and commit the result"


def test_every_topic_record_has_a_schema(tmp_path: Path) -> None:
    names = {path.name for path in export_schemas(tmp_path)}
    assert names == {
        "touchpoint_event.schema.json",
        "dead_letter.schema.json",
        "timeline_entry.schema.json",
        "customer_profile.schema.json",
        "identity_change.schema.json",
        "metric_cell_update.schema.json",
        "alert.schema.json",
        "experience_drop_alert.schema.json",
        "store_record.schema.json",
        "phone_record.schema.json",
        "web_record.schema.json",
        "ecommerce_record.schema.json",
    }


def test_export_is_deterministic(tmp_path: Path) -> None:
    first = [path.read_bytes() for path in export_schemas(tmp_path / "a")]
    second = [path.read_bytes() for path in export_schemas(tmp_path / "b")]
    assert first == second
    assert all(text.endswith(b"}\n") for text in first)


def test_published_amounts_are_strings_and_accepted_amounts_numbers_or_strings(tmp_path: Path) -> None:
    export_schemas(tmp_path)
    event = json.loads((tmp_path / "touchpoint_event.schema.json").read_text())
    assert {"type": "string"} in event["properties"]["amount"]["anyOf"]
    store = json.loads((tmp_path / "store_record.schema.json").read_text())
    kinds = {option.get("type") for option in store["properties"]["total"]["anyOf"]}
    assert {"number", "string"} <= kinds
    web = json.loads((tmp_path / "web_record.schema.json").read_text())
    assert web["additionalProperties"] is True and "messageId" in web["required"]
