"""Channel adapters: pure conversion of each channel's source records into canonical touchpoints."""

from __future__ import annotations

import hashlib

from schemas.touchpoint import Channel, TouchpointEvent
from streams.adapters import ecommerce, phone, store, web
from streams.adapters.base import Converter
from streams.domain.identifiers import PII_TYPES, identifier_key, strongest

#: The converter of each channel: ``to_touchpoint(record, conversion)``.
CONVERTERS: dict[Channel, Converter] = {
    Channel.STORE: store.to_touchpoint,
    Channel.PHONE: phone.to_touchpoint,
    Channel.WEB: web.to_touchpoint,
    Channel.ECOMMERCE: ecommerce.to_touchpoint,
}


def partition_key(event: TouchpointEvent) -> bytes:
    """Kafka key of an event: its strongest identifier as ``type:value``, else its event id.

    E-mail addresses and phone numbers never sit raw in Kafka keys, which are logged and shown by tools far more
    readily than values. Hashed by the adapter (hashing on), the key is the identifier's stored key, a salted hash;
    otherwise a plain SHA-256 digest, which keeps the keys of deployments without hashing where they were (it
    only keeps the value out of sight: anyone holding a list of e-mails can recompute it).
    """
    top = strongest(event.identifiers)
    if top is None:
        return event.event_id.encode()
    kind, value = top
    if kind in PII_TYPES and event.hashed_with is None:
        value = hashlib.sha256(value.encode()).hexdigest()[:32]
    return identifier_key(kind, value).encode()
