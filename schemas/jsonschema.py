"""Export the JSON Schema of every record that crosses a topic, so downstream teams can code against it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from schemas.channels import CHANNEL_MODELS
from schemas.deadletter import DeadLetter
from schemas.outputs import Alert, CustomerProfile, ExperienceDropAlert, IdentityChange, MetricCellUpdate, TimelineEntry
from schemas.touchpoint import TouchpointEvent

JsonSchemaMode = Literal["validation", "serialization"]


#: A record type with a JSON Schema: a pydantic model, or the event (a pydantic dataclass with the same methods).
Described = type[BaseModel] | type[TouchpointEvent]

#: Records cxstream publishes, described as they appear on the topic (serialised: Decimal is a string).
PUBLISHED: tuple[Described, ...] = (
    TouchpointEvent,
    DeadLetter,
    TimelineEntry,
    CustomerProfile,
    IdentityChange,
    MetricCellUpdate,
    Alert,
    ExperienceDropAlert,
)

#: Records source systems send, described as what cxstream accepts (a number or a string for an amount).
ACCEPTED: tuple[Described, ...] = tuple(CHANNEL_MODELS.values())

_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def schema_file_name(model: Described) -> str:
    """File name of a model's schema: ``TouchpointEvent`` → ``touchpoint_event.schema.json``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", model.__name__).lower() + ".schema.json"


def render_schema(model: Described, mode: JsonSchemaMode) -> str:
    """The schema document of one model as deterministic text: sorted keys, two-space indent, final newline."""
    schema = {"$schema": _DRAFT, **model.model_json_schema(mode=mode)}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_schemas(out_dir: Path | str) -> list[Path]:
    """Write one ``<model>.schema.json`` per topic record into ``out_dir``; return the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[Described, JsonSchemaMode]] = [(m, "serialization") for m in PUBLISHED]
    jobs += [(m, "validation") for m in ACCEPTED]
    written = []
    for model, mode in jobs:
        path = out / schema_file_name(model)
        path.write_text(render_schema(model, mode), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in export_schemas(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "json"):
        print(written_path)
