"""Identifier normalisation and optional salted hashing: one person, one spelling of each identifier.

With hashing on (``CXSTREAM_HASH_IDENTIFIERS``), an e-mail or phone number is kept only as its salted hash, the
HMAC-SHA256 of ``type:value`` keyed with ``CXSTREAM_IDENTIFIER_SALT`` (:func:`hash_identifier`). The adapters hash
before anything is published (:class:`IdentifierHashing`), and mark the event with the salt's fingerprint; the
worker hashes what arrives raw (events published before, or by a process with hashing off) the same way, so both
end under one stored key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import phonenumbers

from schemas.touchpoint import IDENTIFIER_RANK, IdentifierType

_T = TypeVar("_T")

#: Identifier types that are personal data and may be stored only as salted hashes.
PII_TYPES: frozenset[IdentifierType] = frozenset({IdentifierType.EMAIL, IdentifierType.PHONE})
#: Built-in types by name: ``normalise_identifier`` tells them by identity, and a dict key is a plain string.
_BUILT_IN: dict[str, IdentifierType] = {kind.value: kind for kind in IdentifierType}


class InvalidIdentifier(ValueError):
    """An identifier value that cannot be normalised (e.g. a phone number that is not one).

    The message does not repeat the value: it becomes a dead letter's detail, which is kept whatever
    ``CXSTREAM_DEAD_LETTER_ORIGINALS`` says about the original bytes (where the value is, when they are kept).
    """


def normalise_email(value: str) -> str:
    """Lower-case and trim an e-mail address; reject anything without exactly one @ and a domain."""
    email = value.strip().lower()
    local, sep, domain = email.partition("@")
    labels = domain.split(".")
    if not sep or not local or len(labels) < 2 or not all(labels) or "@" in domain or any(c.isspace() for c in email):
        raise InvalidIdentifier("not an e-mail address")
    return email


def normalise_phone(value: str, default_region: str = "GB") -> str:
    """Return a phone number in E.164 form (+441234567890); numbers without + use ``default_region``."""
    try:
        number = phonenumbers.parse(value.strip(), default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentifier("not a phone number") from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidIdentifier("not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_identifier(kind: str, value: str, default_region: str = "GB") -> str:
    """Normalise one identifier of the given type; raise InvalidIdentifier when it is malformed."""
    if kind is IdentifierType.EMAIL:
        return normalise_email(value)
    if kind is IdentifierType.PHONE:
        return normalise_phone(value, default_region)
    cleaned = value.strip()
    if not cleaned:
        raise InvalidIdentifier(f"empty {kind}")
    return cleaned


def hash_identifier(kind: str, value: str, salt: str) -> str:
    """Return the salted hash under which a PII identifier is stored (HMAC-SHA256, hex)."""
    return hmac.new(salt.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def salt_fingerprint(salt: str) -> str:
    """A short public name of a salt: events hashed with it say so, and a worker can tell whether it holds the same.

    An HMAC of a fixed text, so it tells nothing about the salt beyond what any hashed identifier already does.
    """
    return "hmac-sha256:" + hmac.new(salt.encode(), b"cxstream identifier salt", hashlib.sha256).hexdigest()[:16]


def hashing_fingerprint(salt: str, types: frozenset[str] = PII_TYPES) -> str:
    """What events hashed with ``salt`` under ``types`` carry in ``hashed_with``: the salt's fingerprint, then the
    types hashed besides e-mail and phone, in plain text (``hmac-sha256:<16 hex>+web_user_id,member_no``), so a
    worker knows which of an event's identifiers are hashes whatever list it holds itself."""
    added = sorted(types - PII_TYPES)
    return salt_fingerprint(salt) + ("+" + ",".join(added) if added else "")


def hashed_types(hashed_with: str) -> tuple[str, frozenset[str]]:
    """The salt fingerprint and the hashed identifier types a ``hashed_with`` names (:func:`hashing_fingerprint`)."""
    salt, _, added = hashed_with.partition("+")
    return salt, (PII_TYPES | frozenset(added.split(",")) if added else PII_TYPES)


# An e-mail address inside text (the local part as RFC 5322 allows it unquoted).
_EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A phone number written as one, inside text: international (+...) or national (0...) form, 9 to 15 digits.
# Not after a letter, digit, dot, slash or dash, so that the tail of an order number or a date is not one.
_PHONE_IN_TEXT = re.compile(r"(?<![\w+./-])(?:\+|\(?0)[\d ().-]{7,20}\d(?![\w.-]*\d)")


class BlockedPatterns:
    """Identifier values blocked by pattern: one regular expression per type, searched in the normalised value."""

    def __init__(self, patterns: Mapping[str, str]) -> None:
        self._compiled = {str(kind): re.compile(pattern) for kind, pattern in patterns.items()}

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def _spelling(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((kind, compiled.pattern) for kind, compiled in self._compiled.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockedPatterns) and self._spelling() == other._spelling()

    def __hash__(self) -> int:
        return hash(self._spelling())

    def blocks(self, kind: str, value: str) -> bool:
        """True when ``value`` (normalised, not hashed) of type ``kind`` matches its type's pattern."""
        pattern = self._compiled.get(kind)
        return pattern is not None and pattern.search(value) is not None


@dataclass(frozen=True)
class IdentifierHashing:
    """How the adapters hash personal data before it is published: the salt, its fingerprint, the default region.

    Built from the settings at the edge (``streams.policies.identifier_hashing``): None when hashing is off.
    """

    salt: str
    default_region: str = "GB"
    #: Values never used for stitching, by type (``CXSTREAM_BLOCKED_IDENTIFIER_PATTERNS``): the adapters leave
    #: them out of the events they hash, as their hash could no longer be matched against the patterns.
    blocked: BlockedPatterns = field(default_factory=lambda: BlockedPatterns({}))
    #: The identifier types stored as hashes (``CXSTREAM_HASHED_IDENTIFIER_TYPES``): e-mail and phone by default.
    types: frozenset[str] = PII_TYPES
    #: What events hashed under this salt and these types carry (``hashed_with``).
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", hashing_fingerprint(self.salt, self.types))

    def value(self, kind: str, value: str) -> str:
        """The stored value of a normalised identifier: its salted hash when its type is hashed, else the value."""
        return hash_identifier(kind, value, self.salt) if kind in self.types else value

    def text(self, text: str) -> str:
        """Free text with every e-mail address and phone number in it replaced by its stored key (``email:<hash>``).

        For the free text adapters copy into an event (web properties, review texts, contact reasons). E-mails are
        found by their shape; phone numbers written in international (``+44 ...``) or national (``07700 ...``) form
        with 9 to 15 digits that libphonenumber takes for possible numbers, and numbers libphonenumber finds valid
        anywhere. Spans are found in the text as given, then replaced at once (the first and longest wins an overlap).
        """
        spans: list[tuple[int, int, str]] = []
        if "@" in text:
            for match in _EMAIL_IN_TEXT.finditer(text):
                spans.append((match.start(), match.end(), self._key(IdentifierType.EMAIL, match.group(0).lower())))
        if sum(c.isdigit() for c in text) >= 7:
            for match in _PHONE_IN_TEXT.finditer(text):
                written = match.group(0)
                if 9 <= sum(c.isdigit() for c in written) <= 15:
                    try:
                        e164 = normalise_phone(written, self.default_region)
                    except InvalidIdentifier:
                        continue
                    spans.append((match.start(), match.end(), self._key(IdentifierType.PHONE, e164)))
            valid = phonenumbers.Leniency.VALID
            for found in phonenumbers.PhoneNumberMatcher(text, self.default_region, leniency=valid):
                e164 = phonenumbers.format_number(found.number, phonenumbers.PhoneNumberFormat.E164)
                spans.append((found.start, found.end, self._key(IdentifierType.PHONE, e164)))
        if not spans:
            return text
        out, at = [], 0
        for start, end, key in sorted(spans, key=lambda span: (span[0], -span[1])):
            if start >= at:
                out += [text[at:start], key]
                at = end
        out.append(text[at:])
        return "".join(out)

    def _key(self, kind: str, value: str) -> str:
        return identifier_key(kind, self.value(kind, value))

    def walk(self, value: _T, keep: Callable[[str], bool] = lambda _path: False, path: str = "") -> _T:
        """``value`` with :meth:`text` applied to every string in it (lists and dicts walked, keys left alone), and
        what is held under the name of a hashed type (a Segment trait ``member_no``) stored as that type's keys
        (:meth:`named`).

        ``keep(path)`` spares the strings at the paths it is true for (``properties.issue_id``: ids an adapter
        stores as they are); items of a list share their list's path.
        """
        if isinstance(value, str):
            return value if keep(path) else cast(_T, self.text(value))
        if isinstance(value, dict):
            walked = {}
            for name, item in value.items():
                at = f"{path}.{name}" if path else str(name)
                walked[name] = (
                    self.named(name, item) if name in self.types and not keep(at) else self.walk(item, keep, at)
                )
            return cast(_T, walked)
        if isinstance(value, list):
            return cast(_T, [self.walk(v, keep, path) for v in value])
        return value

    def named(self, kind: str, value: Any) -> Any:
        """What a trait or property named after hashed type ``kind`` holds, stored as that type's keys: a string or
        a whole number (``member_no: 12345678``) as ``member_no:<hash>``, each item of a list alike, what a dict holds
        walked by its own names.

        A membership number or a national id is known by its name alone. An e-mail or a phone number is first looked
        for by its shape (:meth:`text`), as in free text, so that ``mailto:ann@example.org`` keeps the person's key;
        only when none is found is the whole value taken for one. A value that is not one of its type (an empty
        string, a malformed e-mail) is free text.
        """
        if isinstance(value, list):
            return [self.named(kind, item) for item in value]
        if isinstance(value, dict):
            return self.walk(value)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return value
        identifier = _BUILT_IN.get(kind, kind)
        if identifier in PII_TYPES and (found := self.text(value)) != value:
            return found
        try:
            normalised = normalise_identifier(identifier, value, self.default_region)
        except InvalidIdentifier:
            return self.text(value)
        return self._key(identifier, normalised)


def identifier_key(kind: str, value: str) -> str:
    """The ``type:value`` key under which an identifier is stored and compared."""
    return f"{kind}:{value}"


def strongest(identifiers: Mapping[str, str]) -> tuple[str, str] | None:
    """Return the strongest (type, value) of an identifier map in the default order (custom types after the
    built-in ones, by name), or None when it is empty."""
    if not identifiers:
        return None
    kind = min(identifiers, key=_default_strength)
    return kind, identifiers[kind]


def _default_strength(kind: str) -> tuple[int, str]:
    return IDENTIFIER_RANK.get(kind, len(IDENTIFIER_RANK)), kind  # type: ignore[call-overload]
