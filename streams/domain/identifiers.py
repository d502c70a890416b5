"""Identifier normalisation and optional salted hashing: one person, one spelling of each identifier."""

from __future__ import annotations

import hashlib
import hmac

import phonenumbers

from schemas.touchpoint import IDENTIFIER_RANK, IdentifierType

#: Identifier types that are personal data and may be stored only as salted hashes.
PII_TYPES: frozenset[IdentifierType] = frozenset({IdentifierType.EMAIL, IdentifierType.PHONE})


class InvalidIdentifier(ValueError):
    """An identifier value that cannot be normalised (e.g. a phone number that is not one)."""


def normalise_email(value: str) -> str:
    """Lower-case and trim an e-mail address; reject anything without exactly one @ and a domain."""
    email = value.strip().lower()
    local, sep, domain = email.partition("@")
    labels = domain.split(".")
    if not sep or not local or len(labels) < 2 or not all(labels) or "@" in domain or any(c.isspace() for c in email):
        raise InvalidIdentifier(f"not an e-mail address: {value!r}")
    return email


def normalise_phone(value: str, default_region: str = "GB") -> str:
    """Return a phone number in E.164 form (+441234567890); numbers without + use ``default_region``."""
    try:
        number = phonenumbers.parse(value.strip(), default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentifier(f"not a phone number: {value!r}") from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentifier(f"not a possible phone number: {value!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_identifier(kind: IdentifierType, value: str, default_region: str = "GB") -> str:
    """Normalise one identifier of the given type; raise InvalidIdentifier when it is malformed."""
    if kind is IdentifierType.EMAIL:
        return normalise_email(value)
    if kind is IdentifierType.PHONE:
        return normalise_phone(value, default_region)
    cleaned = value.strip()
    if not cleaned:
        raise InvalidIdentifier(f"empty {kind}")
    return cleaned


def hash_identifier(kind: IdentifierType, value: str, salt: str) -> str:
    """Return the salted hash under which a PII identifier is stored (HMAC-SHA256, hex)."""
    return hmac.new(salt.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def identifier_key(kind: IdentifierType, value: str) -> str:
    """The ``type:value`` key under which an identifier is stored and compared."""
    return f"{kind}:{value}"


def strongest(identifiers: dict[IdentifierType, str]) -> tuple[IdentifierType, str] | None:
    """Return the strongest (type, value) of an identifier map, or None when it is empty."""
    if not identifiers:
        return None
    kind = min(identifiers, key=IDENTIFIER_RANK.__getitem__)
    return kind, identifiers[kind]
