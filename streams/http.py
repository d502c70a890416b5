"""The worker's HTTP surface: /metrics and the collector only, every read bounded in time and in size.

What a client can make the worker do before it has shown a write key is answered at once and costs nothing:
the write key is checked from the headers, before a byte of the body is read or inflated (measured before: an
unauthenticated client made the worker inflate gzip up to the body limit, and got 413 before 401). Bodies are read
by the collector itself, compressed as sent (aiohttp's own decompression is off), and inflated with a bound.

Time: a client has ``CXSTREAM_WEB_READ_TIMEOUT_S`` to send its request's headers, from connecting or from its
previous answer (aiohttp's keep-alive timer, which from aiohttp 3.14.4 also runs on a connection that has not
completed a request yet), and as long again for its body, else it is answered 408 and disconnected. Measured
before: 3,000 connections sending nothing were held for ever.

Faust serves views of its own beside an app's (``/`` with the app's status, ``/router/``, ``/table/``, and with
``debug`` ``/graph/``, ``/stats/``), all without authentication. ``Web`` serves none of them.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from aiohttp import web
from faust.types import AppT
from faust.web.drivers import aiohttp as faust_aiohttp

from config.settings import Settings
from schemas.touchpoint import Channel
from streams.collector import Collector, CollectorReply


class Web(faust_aiohttp.Web):
    """Faust's aiohttp web driver without Faust's built-in views: only the pages the app registers are served."""

    # Faust applies these blueprints (each a set of views under a prefix) when the server starts; the lists are
    # class attributes of its web driver, so emptying them here removes the views, whatever Faust's flags say.
    default_blueprints: ClassVar[list[tuple[str, Any]]] = []
    production_blueprints: ClassVar[list[tuple[str, Any]]] = []
    debug_blueprints: ClassVar[list[tuple[str, Any]]] = []
    optional_blueprints: ClassVar[list[tuple[str, Any]]] = []


def application_options(settings: Settings) -> dict[str, Any]:
    """Faust's ``web_application_options``: arguments of the aiohttp Application, and of its request handlers."""
    timeout = settings.web_read_timeout_s
    return {
        # aiohttp's own cap (1 MiB by default) would otherwise override a larger collector limit, and answer a
        # smaller one with a plain-text 413; the collector reads bodies itself and answers its own JSON 413.
        "client_max_size": settings.collector_max_body_bytes,
        # Passed to every connection's aiohttp RequestHandler.
        "handler_args": {
            # Closes a connection that has not sent a whole request's headers this long after connecting or after
            # its previous answer (an idle keep-alive connection too).
            "keepalive_timeout": timeout,
            # After an answer given before the body was read (401, 413, 408), aiohttp reads and discards what the
            # client still sends, so that it sees the answer rather than a reset; no longer than a read may take.
            "lingering_time": timeout,
            # Bodies are inflated by ``decode_body`` with a bound, and only once the write key was checked.
            "auto_decompress": False,
        },
    }


def enqueue_with(app: AppT) -> Callable[[str, bytes | None, bytes, int | None], Awaitable[Awaitable[Any]]]:
    """The collector's way to queue a record with the app's producer: returns the acknowledgement to await."""

    async def enqueue(topic: str, key: bytes | None, value: bytes, partition: int | None) -> Awaitable[Any]:
        return await app.producer.send(topic, key, value, partition, None, None)

    return enqueue


class BodyTooLarge(Exception):
    """The body, as sent or once inflated, is larger than the collector's limit."""


class UnsupportedEncoding(Exception):
    """The body's Content-Encoding is not one the collector reads."""


class CorruptBody(Exception):
    """The body does not decompress as its Content-Encoding says."""


#: Content-Encodings the collector reads, with the zlib window bits that decode each.
ENCODINGS: dict[str, int | None] = {
    "identity": None,
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body as sent, at most ``limit`` bytes (BodyTooLarge beyond: the rest is not read)."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def decode_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """Inflate ``raw`` as its Content-Encoding says, never past ``limit`` bytes (BodyTooLarge beyond)."""
    if encoding not in ENCODINGS:
        raise UnsupportedEncoding(encoding)
    wbits = ENCODINGS[encoding]
    if wbits is None:
        return raw
    out = bytearray()
    data = raw
    try:
        while True:  # a gzip body may hold several members, one after the other
            inflater = zlib.decompressobj(wbits)
            # max_length bounds what one call produces: a small bomb is stopped at limit + 1 bytes.
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise BodyTooLarge
            if not inflater.eof:
                raise CorruptBody(f"the {encoding} data ends early")
            data = inflater.unused_data
            if not data:
                return bytes(out)
    except zlib.error as exc:
        raise CorruptBody(f"not valid {encoding} data: {exc}") from None


class CollectorHttp:
    """The collector's HTTP answers: write key first, then the body, read and inflated within bounds and in time."""

    def __init__(self, settings: Settings, collector: Collector) -> None:
        self.settings = settings
        self.collector = collector
        limit = settings.collector_max_body_bytes
        self.too_large = CollectorReply(413, {"error": f"body larger than {limit} bytes"})

    async def respond(self, request: web.Request, kind: str, marketplace: str | None = None) -> CollectorReply:
        """Answer a collector request (``kind``: track, page, identify, batch or ecommerce)."""
        if not self.collector.authorised(request.headers.get("Authorization")):
            return CollectorReply(
                401, {"error": "invalid or missing write key"}, {"WWW-Authenticate": 'Basic realm="cxstream"'}
            )
        limit = self.settings.collector_max_body_bytes
        timeout = self.settings.web_read_timeout_s
        try:
            async with asyncio.timeout(timeout):
                raw = await read_body(request, limit)
        except BodyTooLarge:
            return self.too_large
        except TimeoutError:
            return CollectorReply(
                408, {"error": f"the request body was not received within {timeout:g} s"}, {"Connection": "close"}
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
        try:
            body = decode_body(raw, encoding, limit)
        except BodyTooLarge:
            return self.too_large
        except UnsupportedEncoding:
            supported = ", ".join(ENCODINGS)
            return CollectorReply(415, {"error": f"Content-Encoding {encoding!r} is not supported ({supported})"})
        except CorruptBody as exc:
            channel = Channel.ECOMMERCE if kind == "ecommerce" else Channel.WEB
            return await self.collector.reject_body(
                channel, f"collector:/v1/{kind}", raw, "invalid_content_encoding", str(exc)
            )
        return await self.collector.handle(kind, body, marketplace)
