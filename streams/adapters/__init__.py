"""Channel adapters: pure conversion of each channel's source records into canonical touchpoints."""

from __future__ import annotations

import hashlib

from schemas.touchpoint import Channel, TouchpointEvent
from streams.adapters import ecommerce, phone, store, web
from streams.adapters.base import Converter
from streams.domain.identifiers import PII_TYPES, identifier_key, strongest

#: The converter of each channel: ``to_touchpoint(record, *, received_at, source_file, line, default_region)``.
CONVERTERS: dict[Channel, Converter] = {
    Channel.STORE: store.to_touchpoint,
    Channel.PHONE: phone.to_touchpoint,
    Channel.WEB: web.to_touchpoint,
    Channel.ECOMMERCE: ecommerce.to_touchpoint,
}


def partition_key(event: TouchpointEvent) -> bytes:
    """Kafka key of an event: its strongest identifier as ``type:value``, else its event id.

    E-mail addresses and phone numbers are keyed by a digest so personal data does not sit in Kafka keys,
    which are logged and shown by tools far more readily than values.
    """
    top = strongest(event.identifiers)
    if top is None:
        return event.event_id.encode()
    kind, value = top
    if kind in PII_TYPES:
        value = hashlib.sha256(value.encode()).hexdigest()[:32]
    return identifier_key(kind, value).encode()
