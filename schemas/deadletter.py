"""The dead-letter record: a rejected input with its reason and its original bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.touchpoint import Channel

#: Every reason cxstream gives a dead letter (the README's dead-letter tables list them, a test checks it).
REASONS: frozenset[str] = frozenset(
    {
        # adapters (files and the collector)
        "invalid_utf8",
        "line_too_long",
        "invalid_json",
        "not_an_object",
        "invalid_csv",
        "validation_error",
        "invalid_identifier",
        "conversion_error",
        # collector
        "invalid_batch",
        "too_many_items",
        "message_too_large",
        "invalid_content_encoding",
        # worker
        "empty_record",
        "record_too_large",
        "too_late",
        "event_id_conflict",
        "sink_rejected",
    }
)
_CHANNELS = frozenset(c.value for c in Channel)
#: Where records are rejected.
STAGES: frozenset[str] = frozenset({"adapter", "collector", "worker"})

#: What a dead letter carries of the record it rejects (``CXSTREAM_DEAD_LETTER_ORIGINALS``).
Originals = Literal["keep", "hash", "drop"]


class DeadLetter(BaseModel):
    """A record that could not be accepted; nothing is lost, the original bytes travel with the reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str | None = Field(description="Channel the record was meant for, when known.")
    reason: str = Field(description="Short machine-readable reason: invalid_json, validation_error, too_late, ...")
    detail: str = Field(default="", description="Human-readable detail: field path and message.")
    source_file: str | None = None
    line: int | None = None
    topic: str | None = Field(default=None, description="The Kafka topic the record was read from (worker).")
    partition: int | None = Field(default=None, description="Its partition (worker).")
    offset: int | None = Field(default=None, description="Its offset in the partition (worker).")
    stage: str = Field(default="adapter", description="Where it was rejected: adapter, collector, worker.")
    rejected_at: AwareDatetime
    original_b64: str = Field(
        description="The original bytes, base64-encoded (may be non-UTF-8); empty when they were not kept."
    )
    original_digest: str | None = Field(
        default=None,
        description="Only when the original bytes were not kept (CXSTREAM_DEAD_LETTER_ORIGINALS=hash): their "
        "'hmac-sha256:<hex>' keyed with CXSTREAM_IDENTIFIER_SALT, or 'sha256:<hex>' without a salt, to find the "
        "record in its source.",
    )

    @staticmethod
    def encode(raw: bytes) -> str:
        """Base64-encode original bytes for the record."""
        return base64.b64encode(raw).decode("ascii")

    def original(self) -> bytes:
        """Return the original bytes."""
        return base64.b64decode(self.original_b64)

    def kept(self, originals: Originals, salt: str = "") -> DeadLetter:
        """This dead letter as ``originals`` asks: as it is (keep), with a digest for its bytes (hash), or without.

        The original bytes of a rejected record hold whatever it held, raw e-mails and phone numbers included; that
        is what lets it be fixed and replayed, so ``keep`` is the default. The digest is salted when a salt is set,
        so that a short record cannot be found again by hashing guesses of it.
        """
        if originals == "keep" or self.original_digest is not None:
            return self
        digest = None
        if originals == "hash":
            raw = self.original()
            if salt:
                digest = "hmac-sha256:" + hmac.new(salt.encode(), raw, hashlib.sha256).hexdigest()
            else:
                digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        return self.model_copy(update={"original_b64": "", "original_digest": digest})


def label_values(channel: object, reason: object, stage: object) -> tuple[str, str, str]:
    """Prometheus label values of a dead letter, from fixed sets only: a record's content must not create series.

    Anything outside them (a dead letter written by another producer, or garbage on the topic) is counted under
    ``unknown`` / ``other``.
    """
    return (
        channel if isinstance(channel, str) and channel in _CHANNELS else "unknown",
        reason if isinstance(reason, str) and reason in REASONS else "other",
        stage if isinstance(stage, str) and stage in STAGES else "unknown",
    )
