"""The worker's HTTP surface: /metrics and the collector only, every read bounded in time and in size.

What a client can make the worker do before it has shown a write key is answered at once and costs nothing:
the write key is checked from the headers, before a byte of the body is read or inflated (measured before: an
unauthenticated client made the worker inflate gzip up to the body limit, and got 413 before 401). Bodies are read
by the collector itself, compressed as sent (aiohttp's own decompression is off), and inflated with a bound. A
browser (analytics.js, ``sendBeacon``) cannot send the key in a header: a ``text/plain``, uncompressed request without
``Authorization`` is read within the same bounds, and refused 401 unless its body names a write key (``writeKey``),
before anything is published; any other request without the header is refused at once. A request from a browser origin not in ``CXSTREAM_COLLECTOR_ALLOWED_ORIGINS`` is refused
403 at once (CORS: ``Cors``).

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

from config.settings import Settings, normalise_origin
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


#: Request headers a browser may send to the collector (a preflight asking for others is answered without them).
CORS_REQUEST_HEADERS = ("Content-Type", "Authorization", "Content-Encoding")

#: How long a browser may reuse a preflight's answer, seconds (Chromium caps it at 7,200).
CORS_MAX_AGE_S = 7200


class Cors:
    """Which browser origins may call the collector (``CXSTREAM_COLLECTOR_ALLOWED_ORIGINS``), and the headers that
    say so. A request without an ``Origin`` header is not a browser's cross-origin call and is not concerned."""

    def __init__(self, allowed: list[str]) -> None:
        self.any = "*" in allowed
        self.allowed = frozenset(origin for origin in allowed if origin != "*")  # normalised by the settings

    def headers(self, origin: str | None) -> dict[str, str] | None:
        """The CORS headers of an answer to ``origin`` (empty without an Origin); None when it is refused."""
        if origin is None:
            return {}
        if normalise_origin(origin) in self.allowed:
            # The browser's own spelling is echoed: it compares the header with the Origin it sent.
            # Credentials (cookies, HTTP Basic) only with an origin named in full, never with a wildcard.
            return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}
        if self.any:
            return {"Access-Control-Allow-Origin": "*"}
        return None

    def preflight(self, origin: str | None) -> CollectorReply:
        """The answer to ``OPTIONS``: 204 with what a browser may send, or 403 for an origin not allowed."""
        headers = self.headers(origin)
        if not headers:
            return CollectorReply(403, {"error": f"origin {origin!r} may not call the collector"})
        headers |= {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ", ".join(CORS_REQUEST_HEADERS),
            "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
        }
        return CollectorReply(204, headers=headers)


class CollectorHttp:
    """The collector's HTTP answers: origin and write key first, then the body, read and inflated within bounds
    and in time."""

    def __init__(self, settings: Settings, collector: Collector) -> None:
        self.settings = settings
        self.collector = collector
        self.cors = Cors(settings.collector_allowed_origins)
        limit = settings.collector_max_body_bytes
        self.too_large = CollectorReply(413, {"error": f"body larger than {limit} bytes"})
        self.unauthorised = CollectorReply(
            401, {"error": "invalid or missing write key"}, {"WWW-Authenticate": 'Basic realm="cxstream"'}
        )

    def preflight(self, request: web.Request) -> CollectorReply:
        """Answer a browser's CORS preflight (``OPTIONS``)."""
        return self.cors.preflight(request.headers.get("Origin"))

    async def respond(self, request: web.Request, kind: str, marketplace: str | None = None) -> CollectorReply:
        """Answer a collector request (``kind``: a Segment call, batch or ecommerce), with its CORS headers."""
        cors = self.cors.headers(request.headers.get("Origin"))
        if cors is None:
            return CollectorReply(
                403, {"error": f"origin {request.headers.get('Origin')!r} may not call the collector"}
            )
        reply = await self._respond(request, kind, marketplace)
        reply.headers.update(cors)
        return reply

    async def _respond(self, request: web.Request, kind: str, marketplace: str | None) -> CollectorReply:
        authorization = request.headers.get("Authorization")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
        # The write key comes as HTTP Basic user name (Segment's server libraries), or, from a browser, in the body:
        # analytics.js and sendBeacon send "simple" requests, text/plain and uncompressed, with no header to carry
        # it. Any other request without the header is refused at once, its body neither read nor inflated.
        in_body = (
            authorization is None
            and kind != "ecommerce"
            and encoding == "identity"
            and request.content_type == "text/plain"
        )
        if not in_body and not self.collector.authorised(authorization):
            return CollectorReply(401, dict(self.unauthorised.body), dict(self.unauthorised.headers))
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
        if in_body and not self.collector.authorised_body(body):
            # Nothing was inflated beyond the limit, and nothing is published or dead-lettered for an unknown key.
            return CollectorReply(401, dict(self.unauthorised.body), dict(self.unauthorised.headers))
        return await self.collector.handle(kind, body, marketplace)
