"""The dead-letter record: a rejected input with its reason and its original bytes."""

from __future__ import annotations

import base64

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class DeadLetter(BaseModel):
    """A record that could not be accepted; nothing is lost, the original bytes travel with the reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str | None = Field(description="Channel the record was meant for, when known.")
    reason: str = Field(description="Short machine-readable reason: invalid_json, validation_error, too_late, ...")
    detail: str = Field(default="", description="Human-readable detail: field path and message.")
    source_file: str | None = None
    line: int | None = None
    stage: str = Field(default="adapter", description="Where it was rejected: adapter, collector, worker.")
    rejected_at: AwareDatetime
    original_b64: str = Field(description="The original bytes, base64-encoded (may be non-UTF-8).")

    @staticmethod
    def encode(raw: bytes) -> str:
        """Base64-encode original bytes for the record."""
        return base64.b64encode(raw).decode("ascii")

    def original(self) -> bytes:
        """Return the original bytes."""
        return base64.b64decode(self.original_b64)
