"""Channel adapters: pure conversion of each channel's source records into canonical touchpoints."""

from __future__ import annotations

from schemas.touchpoint import Channel, TouchpointEvent
from streams.adapters import ecommerce, phone, store, web
from streams.adapters.base import Converter
from streams.domain.identifiers import identifier_key, strongest

#: The converter of each channel: ``to_touchpoint(record, *, received_at, source_file, line, default_region)``.
CONVERTERS: dict[Channel, Converter] = {
    Channel.STORE: store.to_touchpoint,
    Channel.PHONE: phone.to_touchpoint,
    Channel.WEB: web.to_touchpoint,
    Channel.ECOMMERCE: ecommerce.to_touchpoint,
}


def partition_key(event: TouchpointEvent) -> bytes:
    """Kafka key of an event: its strongest identifier as ``type:value``, else its event id."""
    top = strongest(event.identifiers)
    if top is None:
        return event.event_id.encode()
    return identifier_key(*top).encode()
