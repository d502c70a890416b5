"""The dead-letter record: a rejected input with its reason and its original bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

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
