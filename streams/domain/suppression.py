"""Which identifier keys belong to erased people: salted hashes only, matched against a batch's keys.

An erasure (``streams.erasure``) stores a hash per identifier key of the erased person; the worker drops every
event carrying one of them, so a redelivery, a replay from offset 0 or a later event cannot bring the person back.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

#: Keys hashed and remembered at most, while suppression entries exist (a batch's keys repeat across batches).
_MEMO_LIMIT = 200_000


def suppression_hash(salt: str, key: str) -> str:
    """The suppression entry of an identifier key (``type:value`` as stored): HMAC-SHA256 keyed by ``salt``."""
    return hmac.new(salt.encode(), key.encode(), hashlib.sha256).hexdigest()


class Suppressions:
    """The suppression entries in force, and a memo of the hashes of keys seen."""

    def __init__(self, salt: str) -> None:
        self.salt = salt
        self.hashes: frozenset[str] = frozenset()
        self._memo: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.hashes)

    def replace(self, hashes: Iterable[str]) -> None:
        """Put ``hashes`` in force (the stored entries, read again when their number changed)."""
        self.hashes = frozenset(hashes)

    def hit(self, keys: Iterable[str]) -> bool:
        """True when any of ``keys`` belongs to an erased person."""
        if not self.hashes:
            return False
        memo = self._memo
        for key in keys:
            digest = memo.get(key)
            if digest is None:
                if len(memo) >= _MEMO_LIMIT:
                    memo.clear()
                digest = memo[key] = suppression_hash(self.salt, key)
            if digest in self.hashes:
                return True
        return False
