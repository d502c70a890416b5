"""How a person names a customer: one resolver for the read API, its pages' search box and ``cxstream timeline``.

A reference is a customer id, an identifier as ``type:value`` (Segment's ``user_id`` and ``anonymous_id`` names
too), or a bare value whose type shows (an e-mail has an ``@``, a phone number starts with ``+`` or a digit). The
value is normalised, and hashed when it is PII and identifier hashing is on, exactly as the adapters store it,
so an e-mail typed in capitals finds its customer with hashing on.
"""

from __future__ import annotations

import re

from sqlalchemy import Engine

from schemas.touchpoint import CUSTOM_TYPE_PATTERN, IdentifierType
from sinks.queries import customer_exists, customer_of_key
from streams.domain.identifiers import IdentifierHashing, InvalidIdentifier, identifier_key, normalise_identifier

#: Segment's names of the web identifiers, as its Profile API takes them in ``{type}:{value}``.
SEGMENT_ID_TYPES = {"user_id": IdentifierType.WEB_USER_ID, "anonymous_id": IdentifierType.WEB_ANONYMOUS_ID}


def _typed(ref: str) -> tuple[str, str] | None:
    """The identifier type and value ``ref`` names: ``type:value`` (a custom type too), or a bare e-mail or phone
    number."""
    kind_name, separator, value = ref.partition(":")
    if separator:
        try:
            return SEGMENT_ID_TYPES.get(kind_name) or IdentifierType(kind_name), value
        except ValueError:
            if re.fullmatch(CUSTOM_TYPE_PATTERN, kind_name):
                return kind_name, value
    if "@" in ref:
        return IdentifierType.EMAIL, ref
    if ref[:1] == "+" or ref[:1].isdigit():
        return IdentifierType.PHONE, ref
    return None


def find_customer(engine: Engine, ref: str, hashing: IdentifierHashing | None, default_region: str) -> str | None:
    """The customer id ``ref`` names (see the module docstring), or None when no customer has it."""
    if not ref or "\x00" in ref:  # no stored text holds NUL, and PostgreSQL refuses it as a parameter
        return None
    if customer_exists(engine, ref):
        return ref
    key = stored_key(ref, hashing, default_region)
    return None if key is None else customer_of_key(engine, key)


def stored_key(ref: str, hashing: IdentifierHashing | None, default_region: str) -> str | None:
    """The key under which the identifier ``ref`` names (``type:value`` or a bare e-mail or phone number) is
    stored, normalised and hashed as the worker stores it; None when ``ref`` names no valid identifier."""
    typed = _typed(ref)
    if typed is None:
        return None
    kind, value = typed
    try:
        normal = normalise_identifier(kind, value, default_region)
    except (ValueError, InvalidIdentifier):
        return None
    stored = normal if hashing is None else hashing.value(kind, normal)
    return identifier_key(kind, stored)
