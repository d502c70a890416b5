"""The read API: ``cxstream api`` serves profiles, timelines and metric figures from the results database.

JSON over HTTP, documented at ``/openapi.json``, authenticated by read keys (``CXSTREAM_READ_KEYS``, the HTTP Basic
user name as for the collector's write keys, and never the same keys), paged by opaque cursors. A customer is
referred to by its customer id or by any identifier as ``type:value`` (``email:ann@example.org``): the value is
normalised, and hashed when identifier hashing is on, exactly as the adapters store it, so a lookup by e-mail
works with hashing on. Reads run in threads beside the event loop; SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from sqlalchemy import Engine

from config.settings import Settings
from schemas.api import ApiError, ApiFigure, ApiFigures, ApiProfile, ApiTimeline, ApiTouchpoint
from schemas.touchpoint import IdentifierType
from sinks.queries import (
    METRIC_FILTERS,
    customer_exists,
    customer_of_key,
    customer_profile,
    metric_page,
    timeline_page,
)
from streams.domain.identifiers import InvalidIdentifier, identifier_key, normalise_identifier
from streams.policies import identifier_hashing

#: Items of a page unless ``?limit=`` says otherwise, and the most it may say.
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """A parameter the API cannot use; the message says which and why."""


class ReadApi:
    """The routes of the read API over one results database."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.read_keys = frozenset(settings.read_keys)
        self.hashing = identifier_hashing(settings)

    def application(self) -> web.Application:
        """The aiohttp application: the JSON routes behind the read-key check, and the OpenAPI document."""
        app = web.Application(middlewares=[self._authenticate, self._errors])
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_get("/v1/customers/{ref}", self.customer)
        app.router.add_get("/v1/customers/{ref}/timeline", self.timeline)
        app.router.add_get("/v1/metrics", self.metrics)
        return app

    # --- middleware -----------------------------------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/") and not self._authorised(request.headers.get("Authorization")):
            return _json(
                ApiError(error="invalid or missing read key"), 401, {"WWW-Authenticate": 'Basic realm="cxstream"'}
            )
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return _json(ApiError(error=str(exc)), 400)

    def _authorised(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Basic "):
            return False
        try:
            user = base64.b64decode(authorization[6:], validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user in self.read_keys

    # --- routes ---------------------------------------------------------------------------------------------------

    async def customer(self, request: web.Request) -> web.Response:
        """``GET /v1/customers/{ref}``: the profile."""
        customer_id = await self._resolve(request.match_info["ref"])
        found = None if customer_id is None else await asyncio.to_thread(customer_profile, self.engine, customer_id)
        if found is None:
            return _json(ApiError(error=f"no customer {request.match_info['ref']!r}"), 404)
        found["traits"] = found.get("traits") or {}
        return _json(ApiProfile.model_validate(found))

    async def timeline(self, request: web.Request) -> web.Response:
        """``GET /v1/customers/{ref}/timeline?limit=&after=``: touchpoints in event-time order."""
        customer_id = await self._resolve(request.match_info["ref"])
        if customer_id is None:
            return _json(ApiError(error=f"no customer {request.match_info['ref']!r}"), 404)
        limit = _limit(request)
        after = _cursor(request, 2)
        position = None if after is None else (datetime.fromisoformat(after[0]), str(after[1]))
        rows = await asyncio.to_thread(timeline_page, self.engine, customer_id, position, limit + 1)
        more, rows = len(rows) > limit, rows[:limit]
        touchpoints = [ApiTouchpoint.model_validate(row) for row in rows]
        last = touchpoints[-1] if touchpoints else None
        cursor = _encode([last.occurred_at.isoformat(), last.event_id]) if more and last else None
        return _json(ApiTimeline(customer_id=customer_id, touchpoints=touchpoints, next=cursor))

    async def metrics(self, request: web.Request) -> web.Response:
        """``GET /v1/metrics?scope=&key=&metric=&window=&from=&to=&limit=&after=``: figures by window start."""
        filters = {name: request.query[name] for name in METRIC_FILTERS if request.query.get(name)}
        since, until = _time(request, "from"), _time(request, "to")
        limit = _limit(request)
        after = _cursor(request, 5)
        position = None if after is None else (datetime.fromisoformat(after[0]), *map(str, after[1:]))
        rows = await asyncio.to_thread(metric_page, self.engine, filters, since, until, position, limit + 1)  # type: ignore[arg-type]
        more, rows = len(rows) > limit, rows[:limit]
        figures = [ApiFigure.model_validate(row) for row in rows]
        last = figures[-1] if figures else None
        cursor = (
            _encode([last.window_start.isoformat(), last.scope, last.key, last.metric, last.window])
            if more and last
            else None
        )
        return _json(ApiFigures(figures=figures, next=cursor))

    async def openapi(self, _request: web.Request) -> web.Response:
        """``GET /openapi.json``: this API's OpenAPI 3.1 document."""
        return web.Response(body=orjson.dumps(openapi_document()), content_type="application/json")

    # --- references -----------------------------------------------------------------------------------------------

    async def _resolve(self, ref: str) -> str | None:
        return await asyncio.to_thread(self.resolve, ref)

    def resolve(self, ref: str) -> str | None:
        """The customer id ``ref`` names: a customer id, or an identifier ``type:value`` stored as the adapters
        store it (normalised; hashed when it is PII and hashing is on)."""
        if customer_exists(self.engine, ref):
            return ref
        kind_name, separator, value = ref.partition(":")
        try:
            kind = IdentifierType(kind_name)
            normal = normalise_identifier(kind, value, self.settings.default_phone_region)
        except (ValueError, InvalidIdentifier):
            return None
        if not separator:
            return None
        stored = normal if self.hashing is None else self.hashing.value(kind, normal)
        return customer_of_key(self.engine, identifier_key(kind, stored))


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode(), status=status, headers=headers, content_type="application/json"
    )


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def _time(request: web.Request, name: str) -> datetime | None:
    text = request.query.get(name)
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time, got {text!r}") from None
    if at.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone (Z or +hh:mm), got {text!r}")
    return at


def _encode(position: list[str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def _cursor(request: web.Request, size: int) -> list[Any] | None:
    text = request.query.get("after")
    if not text:
        return None
    try:
        position = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(position, list) and len(position) == size and all(isinstance(p, str) for p in position):
            datetime.fromisoformat(position[0])
            return position
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        pass
    raise BadRequest("after must be a cursor this API returned as next")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the read API, its schemas generated from the response models."""
    models = [ApiProfile, ApiTimeline, ApiFigures, ApiError]
    _, schemas = models_json_schema([(m, "serialization") for m in models], ref_template="#/components/schemas/{model}")

    def answer(model: type[BaseModel], what: str) -> dict[str, Any]:
        return {
            "description": what,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }

    refused = {
        "400": answer(ApiError, "a parameter cannot be used"),
        "401": answer(ApiError, "no valid read key"),
    }
    ref = {
        "name": "ref",
        "in": "path",
        "required": True,
        "description": "A customer id, or an identifier as type:value (email:ann@example.org, phone:+447700900123).",
        "schema": {"type": "string"},
    }
    page = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
        {
            "name": "after",
            "in": "query",
            "description": "The previous page's next cursor.",
            "schema": {"type": "string"},
        },
    ]
    figure_filters = [{"name": name, "in": "query", "schema": {"type": "string"}} for name in METRIC_FILTERS]
    window = [
        {
            "name": name,
            "in": "query",
            "description": f"Window start {op} (ISO 8601 with zone).",
            "schema": {"type": "string", "format": "date-time"},
        }
        for name, op in (("from", ">="), ("to", "<"))
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "cxstream read API", "version": "1"},
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "readKey": {"type": "http", "scheme": "basic", "description": "The read key as user name."}
            },
        },
        "security": [{"readKey": []}],
        "paths": {
            "/v1/customers/{ref}": {
                "get": {
                    "summary": "A customer's profile",
                    "parameters": [ref],
                    "responses": {
                        "200": answer(ApiProfile, "the profile"),
                        "404": answer(ApiError, "no such customer"),
                        **refused,
                    },
                }
            },
            "/v1/customers/{ref}/timeline": {
                "get": {
                    "summary": "A customer's touchpoints in event-time order",
                    "parameters": [ref, *page],
                    "responses": {
                        "200": answer(ApiTimeline, "a page"),
                        "404": answer(ApiError, "no such customer"),
                        **refused,
                    },
                }
            },
            "/v1/metrics": {
                "get": {
                    "summary": "Metric figures by window",
                    "parameters": [*figure_filters, *window, *page],
                    "responses": {"200": answer(ApiFigures, "a page"), **refused},
                }
            },
        },
    }


def run_api(settings: Settings, host: str, port: int) -> None:
    """Serve the read API in the foreground until SIGINT/SIGTERM."""
    from sinks.database import make_engine

    app = ReadApi(settings, make_engine(settings.database_url)).application()
    web.run_app(app, host=host, port=port, print=None)
