"""Segment messages as a web client sends them, for the collector's tests."""

from __future__ import annotations

from typing import Any


def track(message_id: str, **extra: Any) -> dict[str, Any]:
    """A valid Segment track message as analytics.js sends it; ``extra`` adds or replaces fields."""
    return {
        "type": "track",
        "messageId": message_id,
        "anonymousId": f"anon-{message_id}",
        "timestamp": "2026-03-01T10:00:00.000Z",
        "event": "Product Viewed",
        "properties": {"product_id": "JACKET-WP-M", "price": 69.98, "currency": "GBP"},
        "context": {"library": {"name": "analytics.js", "version": "next-1.64.0"}},
        **extra,
    }
