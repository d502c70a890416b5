"""Keys sent as the HTTP Basic user name, as Segment's APIs take them (the collector's write keys, the read keys)."""

from __future__ import annotations

import base64
import binascii


def basic_user(authorization: str | None) -> str | None:
    """The user name of an ``Authorization: Basic ...`` header; None when there is none or it is malformed."""
    if not authorization or not authorization.startswith("Basic "):
        return None
    try:
        return base64.b64decode(authorization[6:], validate=True).decode().split(":", 1)[0]
    except (binascii.Error, UnicodeDecodeError):
        return None
