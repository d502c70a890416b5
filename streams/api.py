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
import functools
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from config.settings import Settings
from schemas.api import (
    ApiAlert,
    ApiAlerts,
    ApiEngagement,
    ApiEngagementChannel,
    ApiError,
    ApiExperienceAlert,
    ApiExperienceAlerts,
    ApiFigure,
    ApiFigures,
    ApiMerge,
    ApiMerges,
    ApiProfile,
    ApiTimeline,
    ApiTouchpoint,
    ErasureRequest,
    ErasureResult,
    MergeRequest,
    MergeResult,
    SegmentCursor,
    SegmentEvent,
    SegmentExternalId,
    SegmentList,
    SegmentTraits,
    SplitRequest,
    SplitResult,
)
from sinks.queries import (
    ALERT_FILTERS,
    EXPERIENCE_ALERT_FILTERS,
    METRIC_FILTERS,
    alert_page,
    customer_figures,
    customer_identities,
    customer_merges,
    customer_profile,
    engagement_quantiles,
    experience_alert_page,
    latest_alerts,
    latest_touchpoints,
    metric_page,
    metric_series,
    timeline_page,
    worst_served,
)
from streams import pages
from streams.auth import basic_user
from streams.erasure import Mode, NoSuchCustomer, erase
from streams.identity_rules import BadIdentifier, merge_customers, split_customer
from streams.kafka import BrokerUnreachable
from streams.policies import Policies, identifier_hashing, suppression_salt
from streams.recent import ENGAGEMENT_TTL_S, Recent
from streams.references import find_customer

#: Segment's Profile API's answer for a profile it does not know.
SEGMENT_NOT_FOUND = "Resource not found"

#: Items of a page unless ``?limit=`` says otherwise, and the most it may say.
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
#: A profile's latest alerts, at most (its own figures are a few dozen per window kept per customer: all shown).
PROFILE_ALERTS = 10


#: Where Segment's Profile API serves a profile; the space id is accepted and ignored (one space here).
SEGMENT_PROFILE = "/v1/spaces/{space}/collections/users/profiles/{ref}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)

#: Paths behind the read keys: the JSON routes and the pages (a browser asks for the key as the user name).
_PROTECTED = ("/v1/", "/ui")
#: The routes that change anything, behind the admin keys.
ERASURES = "/v1/erasures"
MERGES = "/v1/merges"
SPLITS = "/v1/splits"
ADMIN_ROUTES = frozenset({ERASURES, MERGES, SPLITS})
#: Seconds an erasure request waits for the outbox rows committed before it (a running worker publishes them
#: within seconds); the answer says how many were left (``unpublished_before``).
API_OUTBOX_WAIT_S = 10.0


class BadRequest(Exception):
    """A parameter the API cannot use; the message says which and why."""


class NoCustomer(Exception):
    """The route's ``ref`` names no customer; the message is the 404's error text."""


class ReadApi:
    """The routes of the read API over one results database."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.read_keys = frozenset(settings.read_keys)
        self.admin_keys = frozenset(settings.admin_keys)
        self.hashing = identifier_hashing(settings)
        self.customer_policy = Policies.from_settings(settings).customer
        # One scan of every customer row: requests share an answer for a minute, as the worker's gauges do.
        self.engagement_rows = Recent(functools.partial(engagement_quantiles, engine), ENGAGEMENT_TTL_S)

    def application(self) -> web.Application:
        """The aiohttp application: the JSON routes behind the read-key check, and the OpenAPI document."""
        app = web.Application(middlewares=[self._authenticate, self._errors])
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_get("/v1/customers/{ref}", self.customer)
        app.router.add_get("/v1/customers/{ref}/timeline", self.timeline)
        app.router.add_get("/v1/customers/{ref}/alerts", self.customer_alerts)
        app.router.add_get("/v1/customers/{ref}/merges", self.merges)
        app.router.add_get("/v1/metrics", self.metrics)
        app.router.add_get("/v1/alerts", self.alerts)
        app.router.add_get("/v1/experience-alerts", self.experience_alerts)
        app.router.add_get("/v1/engagement", self.engagement)
        app.router.add_post(ERASURES, self.erasure)
        app.router.add_post(MERGES, self.merge)
        app.router.add_post(SPLITS, self.split)
        app.router.add_get(f"{SEGMENT_PROFILE}/traits", self.segment_traits)
        app.router.add_get(f"{SEGMENT_PROFILE}/external_ids", self.segment_external_ids)
        app.router.add_get(f"{SEGMENT_PROFILE}/events", self.segment_events)
        app.router.add_get("/ui/", self.overview_page)
        app.router.add_get("/ui", self.overview_page)
        app.router.add_get("/ui/customers", self.search_page)
        app.router.add_get("/ui/customers/{ref}", self.journey_page)
        return app

    # --- middleware -----------------------------------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ADMIN_ROUTES:  # admin keys only: a read key does not erase or merge
            if basic_user(request.headers.get("Authorization")) not in self.admin_keys:
                return _json(
                    ApiError(error="invalid or missing admin key (CXSTREAM_ADMIN_KEYS)"),
                    401,
                    {"WWW-Authenticate": 'Basic realm="cxstream admin"'},
                )
            return await handler(request)
        if request.path.startswith(_PROTECTED) and not self._authorised(request.headers.get("Authorization")):
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
        except NoCustomer as exc:
            return _json(ApiError(error=str(exc)), 404)
        except SQLAlchemyError as exc:
            # The results database is away or not set up: say so in the API's own shape, and that a retry may work.
            first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            log.warning("read API: %s %s: database error: %s", request.method, request.path, first)
            return _json(ApiError(error=f"the results database cannot answer: {first}"), 503, {"Retry-After": "5"})

    def _authorised(self, authorization: str | None) -> bool:
        return basic_user(authorization) in self.read_keys

    # --- routes ---------------------------------------------------------------------------------------------------

    async def erasure(self, request: web.Request) -> web.Response:
        """``POST /v1/erasures``: erase one person (``streams.erasure``), as ``cxstream erase`` does."""
        body = await _body(request, ErasureRequest)
        actor = self._actor(request)
        try:
            report = await asyncio.to_thread(
                erase,
                self.settings,
                body.ref,
                mode=Mode(body.mode),
                actor=actor,
                reason=body.reason,
                wait_s=API_OUTBOX_WAIT_S,
            )
        except NoSuchCustomer as exc:
            raise NoCustomer(str(exc)) from None
        except BrokerUnreachable as exc:
            return _json(ApiError(error=str(exc)), 503, {"Retry-After": "5"})
        log.info("read API: erasure %s by %s", report.erasure_id, actor)
        return _json(ErasureResult.model_validate(report.as_json()))

    def _actor(self, request: web.Request) -> str:
        """Who asked, as the audit trail records it: the admin key by a fingerprint keyed like the suppression
        entries (an audit log that leaks does not let anyone test guesses of the key)."""
        key = basic_user(request.headers.get("Authorization")) or ""
        return (
            f"api:{hmac.new(suppression_salt(self.settings).encode(), key.encode(), hashlib.sha256).hexdigest()[:12]}"
        )

    async def merge(self, request: web.Request) -> web.Response:
        """``POST /v1/merges``: merge two customers by hand (``streams.identity_rules.merge_customers``), as
        ``cxstream merge`` does; waits a few seconds for a worker to apply it."""
        body = await _body(request, MergeRequest)
        actor = self._actor(request)
        try:
            report = await asyncio.to_thread(
                merge_customers,
                self.settings,
                body.first,
                body.second,
                actor=actor,
                reason=body.reason,
                wait_s=API_OUTBOX_WAIT_S,
            )
        except BadIdentifier as exc:
            return _json(ApiError(error=str(exc)), 409)
        log.info("read API: merge %s by %s", report.merge_id, actor)
        return _json(MergeResult.model_validate(report.as_json()))

    async def split(self, request: web.Request) -> web.Response:
        """``POST /v1/splits``: split identifiers off a customer by hand (``streams.identity_rules.split_customer``),
        as ``cxstream split`` does; waits a few seconds for a worker to apply it."""
        body = await _body(request, SplitRequest)
        actor = self._actor(request)
        try:
            report = await asyncio.to_thread(
                split_customer,
                self.settings,
                body.customer,
                body.identifiers,
                actor=actor,
                reason=body.reason,
                wait_s=API_OUTBOX_WAIT_S,
            )
        except BadIdentifier as exc:
            return _json(ApiError(error=str(exc)), 409)
        log.info("read API: split %s by %s", report.split_id, actor)
        return _json(SplitResult.model_validate(report.as_json()))

    async def customer(self, request: web.Request) -> web.Response:
        """``GET /v1/customers/{ref}``: the profile."""
        customer_id = await self._customer(request)
        found = await asyncio.to_thread(self._profile, customer_id)
        if found is None:  # merged away between the two reads
            raise NoCustomer(_no_customer(request))
        return _json(ApiProfile.model_validate(found))

    def _profile(self, customer_id: str) -> dict[str, Any] | None:
        found = customer_profile(self.engine, customer_id)
        if found is not None:
            found["traits"] = found.get("traits") or {}
            found["metrics"] = customer_figures(self.engine, customer_id)
            found["latest_alerts"] = latest_alerts(self.engine, PROFILE_ALERTS, customer_id)
        return found

    async def timeline(self, request: web.Request) -> web.Response:
        """``GET /v1/customers/{ref}/timeline?limit=&after=``: touchpoints in event-time order."""
        customer_id = await self._customer(request)
        fetch = functools.partial(timeline_page, self.engine, customer_id)
        rows, cursor = await _paged(request, fetch, ("occurred_at", "event_id"))
        touchpoints = [ApiTouchpoint.model_validate(row) for row in rows]
        return _json(ApiTimeline(customer_id=customer_id, touchpoints=touchpoints, next=cursor))

    async def metrics(self, request: web.Request) -> web.Response:
        """``GET /v1/metrics?scope=&key=&metric=&window=&from=&to=&limit=&after=``: figures by window start."""
        filters = _filters(request, METRIC_FILTERS)
        fetch = functools.partial(metric_page, self.engine, filters, _time(request, "from"), _time(request, "to"))
        rows, cursor = await _paged(request, fetch, ("window_start", "scope", "key", "metric", "window"))
        return _json(ApiFigures(figures=[ApiFigure.model_validate(row) for row in rows], next=cursor))

    async def engagement(self, _request: web.Request) -> web.Response:
        """``GET /v1/engagement``: the engagement score's quantiles per channel of touch, and over all customers, as
        read at most a minute before (``ENGAGEMENT_TTL_S``)."""
        rows = await asyncio.to_thread(self.engagement_rows.get)
        return _json(ApiEngagement(channels=[ApiEngagementChannel.model_validate(row) for row in rows]))

    async def customer_alerts(self, request: web.Request) -> web.Response:
        """``GET /v1/customers/{ref}/alerts?limit=&after=``: a customer's alerts by time."""
        customer_id = await self._customer(request)
        return await self._alerts(request, {"customer_id": customer_id})

    async def alerts(self, request: web.Request) -> web.Response:
        """``GET /v1/alerts?customer_id=&rule=&severity=&from=&to=&limit=&after=``: alerts by time."""
        return await self._alerts(request, _filters(request, ALERT_FILTERS))

    async def _alerts(self, request: web.Request, filters: dict[str, str]) -> web.Response:
        fetch = functools.partial(alert_page, self.engine, filters, _time(request, "from"), _time(request, "to"))
        rows, cursor = await _paged(request, fetch, ("occurred_at", "alert_id"))
        return _json(ApiAlerts(alerts=[ApiAlert.model_validate(row) for row in rows], next=cursor))

    async def experience_alerts(self, request: web.Request) -> web.Response:
        """``GET /v1/experience-alerts?scope=&key=&metric=&status=&from=&to=&limit=&after=``: experience-drop alerts by
        window start (``from``/``to`` bound it)."""
        filters = _filters(request, EXPERIENCE_ALERT_FILTERS)
        fetch = functools.partial(
            experience_alert_page, self.engine, filters, _time(request, "from"), _time(request, "to")
        )
        rows, cursor = await _paged(request, fetch, ("window_start", "alert_id"))
        alerts = [ApiExperienceAlert.model_validate(row) for row in rows]
        return _json(ApiExperienceAlerts(experience_alerts=alerts, next=cursor))

    async def merges(self, request: web.Request) -> web.Response:
        """``GET /v1/customers/{ref}/merges?limit=&after=``: the customers merged into this one, with their evidence,
        by event time, a page at a time (a customer can absorb thousands, through a shared identifier)."""
        customer_id = await self._customer(request)
        fetch = functools.partial(customer_merges, self.engine, customer_id)
        rows, cursor = await _paged(request, fetch, ("occurred_at", "merged_id"))
        return _json(ApiMerges(merges=[ApiMerge.model_validate(row) for row in rows], next=cursor))

    # --- pages -----------------------------------------------------------------------------------------------------

    async def journey_page(self, request: web.Request) -> web.Response:
        """``GET /ui/customers/{ref}``: one customer's journey across channels (HTML)."""
        ref = request.match_info["ref"]
        customer_id = await self._resolve(ref)
        journey = None if customer_id is None else await asyncio.to_thread(self._journey, customer_id)
        if journey is None:
            return _html(pages.not_found_page(ref), 404)
        return _html(pages.journey_page(journey))

    def _journey(self, customer_id: str) -> pages.Journey | None:
        profile = customer_profile(self.engine, customer_id)
        if profile is None:
            return None
        touchpoints, total = latest_touchpoints(self.engine, customer_id, pages.JOURNEY_TOUCHPOINTS)
        # One more than the page shows tells it there are more (a customer may have thousands of either).
        alerts = latest_alerts(self.engine, pages.JOURNEY_ALERTS + 1, customer_id)
        merges = customer_merges(self.engine, customer_id, limit=pages.JOURNEY_MERGES + 1)
        return pages.Journey(
            profile=profile,
            touchpoints=touchpoints,
            total_touchpoints=total,
            alerts=alerts[: pages.JOURNEY_ALERTS],
            merges=merges[: pages.JOURNEY_MERGES],
            more_alerts=len(alerts) > pages.JOURNEY_ALERTS,
            more_merges=len(merges) > pages.JOURNEY_MERGES,
            lookback=self.customer_policy.lookback,
        )

    async def search_page(self, request: web.Request) -> web.Response:
        """``GET /ui/customers?ref=``: the search form's target; redirects to the customer's journey page."""
        ref = request.query.get("ref", "").strip()
        if not ref:
            raise web.HTTPFound("/ui/")
        if not ref.strip("."):  # "..": a browser would resolve the redirect to /ui/customers/.. into /ui/
            return _html(pages.not_found_page(ref), 404)
        raise web.HTTPFound(pages.customer_path(ref))

    async def overview_page(self, _request: web.Request) -> web.Response:
        """``GET /ui/``: the experience figures over time per channel, the latest alerts, the worst-served."""
        return _html(pages.overview_page(await asyncio.to_thread(self._overview)))

    def _overview(self) -> pages.Overview:
        windows = [w for w in self.settings.metric_windows if w != "all"]
        # Days read best over the overview's 60 days; an hourly window would be 1,440 points a line.
        window = next((w for w in ("1d", "7d", "30d") if w in windows), windows[0] if windows else "all")
        figures = metric_series(
            self.engine, ("channel", "overall"), window, list(pages.OVERVIEW_METRICS), pages.OVERVIEW_DAYS
        )
        for row in figures:
            if row["scope"] == "overall":
                row["key"] = "overall"
        # Who was served worst over the days the charts show (not since the beginning: that only grows).
        latest = max((row["window_start"] for row in figures), default=None)
        since = None if latest is None else latest - timedelta(days=pages.OVERVIEW_DAYS)
        return pages.Overview(
            figures=figures,
            window=window,
            alerts=latest_alerts(self.engine, pages.OVERVIEW_ALERTS),
            worst_served=worst_served(self.engine, pages.WORST_SERVED, since),
        )

    # --- Segment's Profile API --------------------------------------------------------------------------------------

    async def segment_traits(self, request: web.Request) -> web.Response:
        """Segment's ``.../profiles/{type}:{value}/traits``."""
        customer_id = await self._customer(request, SEGMENT_NOT_FOUND)
        found = await asyncio.to_thread(customer_profile, self.engine, customer_id)
        if found is None:
            raise NoCustomer(SEGMENT_NOT_FOUND)
        return _json(SegmentTraits(traits=found.get("traits") or {}, cursor=_last_page(request)))

    async def segment_external_ids(self, request: web.Request) -> web.Response:
        """Segment's ``.../profiles/{type}:{value}/external_ids``."""
        customer_id = await self._customer(request, SEGMENT_NOT_FOUND)
        rows = await asyncio.to_thread(customer_identities, self.engine, customer_id)
        hashed = self.hashing.types if self.hashing is not None else frozenset()
        data = [
            SegmentExternalId(
                id=row["id_value"],
                type=row["id_type"],
                encoding="hashed" if row["id_type"] in hashed else "none",
                created_at=row["first_seen"],
            )
            for row in rows
        ]
        return _json(SegmentList(data=data, cursor=_last_page(request)))

    async def segment_events(self, request: web.Request) -> web.Response:
        """Segment's ``.../profiles/{type}:{value}/events?limit=&next=``: touchpoints as events, in time order."""
        customer_id = await self._customer(request, SEGMENT_NOT_FOUND)
        fetch = functools.partial(timeline_page, self.engine, customer_id)
        rows, following = await _paged(request, fetch, ("occurred_at", "event_id"), "next")
        data = [
            SegmentEvent(
                type="track",
                event=row["type"],
                message_id=row["event_id"],
                timestamp=row["occurred_at"],
                properties={
                    k: v for k, v in row.items() if k not in ("event_id", "occurred_at", "type") and v not in (None, "")
                },
            )
            for row in rows
        ]
        cursor = SegmentCursor(url=request.path, has_more=following is not None, next=following or "")
        return _json(SegmentList(data=data, cursor=cursor))

    async def openapi(self, _request: web.Request) -> web.Response:
        """``GET /openapi.json``: this API's OpenAPI 3.1 document."""
        return web.Response(body=orjson.dumps(openapi_document()), content_type="application/json")

    # --- references -----------------------------------------------------------------------------------------------

    async def _resolve(self, ref: str) -> str | None:
        return await asyncio.to_thread(self.resolve, ref)

    async def _customer(self, request: web.Request, not_found: str | None = None) -> str:
        """The customer id the route's ``ref`` names; ``NoCustomer`` (a 404 saying ``not_found``, by default which
        reference was not found) when none."""
        customer_id = await self._resolve(request.match_info["ref"])
        if customer_id is None:
            raise NoCustomer(not_found or _no_customer(request))
        return customer_id

    def resolve(self, ref: str) -> str | None:
        """The customer id ``ref`` names (``streams.references.find_customer``)."""
        return find_customer(self.engine, ref, self.hashing, self.settings.default_phone_region)


def _no_customer(request: web.Request) -> str:
    return f"no customer {request.match_info['ref']!r}"


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


_Body = TypeVar("_Body", bound=BaseModel)


async def _body(request: web.Request, model: type[_Body]) -> _Body:
    """An admin route's JSON body as ``model``; 400 naming the first bad field."""
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadRequest(f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}") from None


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode(), status=status, headers=headers, content_type="application/json"
    )


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", str(DEFAULT_LIMIT))
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:  # int("²") fails
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


def _filters(request: web.Request, names: tuple[str, ...]) -> dict[str, str]:
    """The equality filters among ``names`` that the query gives (empty ones ignored)."""
    filters = {name: request.query[name] for name in names if request.query.get(name)}
    for name, value in filters.items():
        if "\x00" in value:  # PostgreSQL refuses NUL in a parameter: a 400, not a 500
            raise BadRequest(f"{name} must not hold a NUL character")
    return filters


async def _paged(
    request: web.Request,
    fetch: Callable[[Any, int], list[dict[str, Any]]],
    key: tuple[str, ...],
    cursor_name: str = "after",
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of rows: ``fetch(position, n)`` reads up to n rows after a position (the ``key`` columns' values,
    the first a time) in a thread; returns the page and the cursor of the next one (None on the last page)."""
    limit = _limit(request)
    after = _cursor(request, len(key), cursor_name)
    position = None if after is None else (datetime.fromisoformat(after[0]), *map(str, after[1:]))
    rows = await asyncio.to_thread(fetch, position, limit + 1)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, _encode([last[key[0]].isoformat(), *(str(last[name]) for name in key[1:])])


def _encode(position: list[str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def _last_page(request: web.Request) -> SegmentCursor:
    return SegmentCursor(url=request.path, has_more=False, next="")


def _cursor(request: web.Request, size: int, name: str = "after") -> list[Any] | None:
    text = request.query.get(name)
    if not text:
        return None
    try:
        position = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if (
            isinstance(position, list)
            and len(position) == size
            and all(isinstance(p, str) and "\x00" not in p for p in position)
        ):
            datetime.fromisoformat(position[0])
            return position
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        pass
    raise BadRequest(f"{name} must be a cursor this API returned as next")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the read API, its schemas generated from the response models."""
    models = [
        ApiProfile,
        ApiTimeline,
        ApiFigures,
        ApiAlerts,
        ApiExperienceAlerts,
        ApiMerges,
        ApiEngagement,
        ApiError,
        SegmentTraits,
        SegmentList,
        ErasureRequest,
        ErasureResult,
        MergeRequest,
        MergeResult,
        SplitRequest,
        SplitResult,
    ]
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
    times = [{**param, "description": param["description"].replace("Window start", "Time")} for param in window]
    alert_filters = [{"name": name, "in": "query", "schema": {"type": "string"}} for name in ALERT_FILTERS]
    experience_filters = [
        {"name": name, "in": "query", "schema": {"type": "string"}} for name in EXPERIENCE_ALERT_FILTERS
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "cxstream read API", "version": "1"},
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "readKey": {"type": "http", "scheme": "basic", "description": "The read key as user name."},
                "adminKey": {"type": "http", "scheme": "basic", "description": "An admin key as user name."},
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
            "/v1/customers/{ref}/alerts": {
                "get": {
                    "summary": "A customer's alerts by time",
                    "parameters": [ref, *page],
                    "responses": {
                        "200": answer(ApiAlerts, "a page"),
                        "404": answer(ApiError, "no such customer"),
                        **refused,
                    },
                }
            },
            "/v1/customers/{ref}/merges": {
                "get": {
                    "summary": "The customers merged into this one, with their evidence, by event time",
                    "parameters": [ref, *page],
                    "responses": {
                        "200": answer(ApiMerges, "a page"),
                        "404": answer(ApiError, "no such customer"),
                        **refused,
                    },
                }
            },
            "/v1/alerts": {
                "get": {
                    "summary": "Alerts by time",
                    "parameters": [*alert_filters, *times, *page],
                    "responses": {"200": answer(ApiAlerts, "a page"), **refused},
                }
            },
            "/v1/experience-alerts": {
                "get": {
                    "summary": "Experience-drop alerts (a channel's or the company's figure below its own baseline) by "
                    "window start",
                    "parameters": [*experience_filters, *window, *page],
                    "responses": {"200": answer(ApiExperienceAlerts, "a page"), **refused},
                }
            },
            **{
                f"/v1/spaces/{{space}}/collections/users/profiles/{{ref}}/{what}": {
                    "get": {
                        "summary": f"Segment Profile API: a profile's {what}",
                        "parameters": [
                            {"name": "space", "in": "path", "required": True, "schema": {"type": "string"}},
                            ref,
                        ],
                        "responses": {
                            "200": answer(model, what),
                            "404": answer(ApiError, "no such profile"),
                            **refused,
                        },
                    }
                }
                for what, model in (("traits", SegmentTraits), ("external_ids", SegmentList), ("events", SegmentList))
            },
            ERASURES: {
                "post": {
                    "summary": "Erase one person (GDPR Art. 17): rows removed, their events suppressed, tombstones",
                    "security": [{"adminKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErasureRequest"}}},
                    },
                    "responses": {
                        "200": answer(ErasureResult, "what was erased"),
                        "400": answer(ApiError, "a field cannot be used"),
                        "401": answer(ApiError, "no valid admin key"),
                        "404": answer(ApiError, "no such customer"),
                        "503": answer(ApiError, "the broker or the database cannot answer"),
                    },
                }
            },
            MERGES: {
                "post": {
                    "summary": "Merge two customers stitching did not link (applied by a worker's next batch)",
                    "security": [{"adminKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MergeRequest"}}},
                    },
                    "responses": {
                        "200": answer(MergeResult, "the merge, and the survivor once applied"),
                        "400": answer(ApiError, "a field cannot be used"),
                        "401": answer(ApiError, "no valid admin key"),
                        "409": answer(
                            ApiError,
                            "no such customer, one customer twice, a never-link rule, or more touchpoints together than CXSTREAM_MERGE_MAX_TOUCHPOINTS",
                        ),
                        "503": answer(ApiError, "the database cannot answer"),
                    },
                }
            },
            SPLITS: {
                "post": {
                    "summary": "Split identifiers, and the events that came only through them, off a customer",
                    "security": [{"adminKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SplitRequest"}}},
                    },
                    "responses": {
                        "200": answer(SplitResult, "the split, and both sides once applied"),
                        "400": answer(ApiError, "a field cannot be used"),
                        "401": answer(ApiError, "no valid admin key"),
                        "409": answer(
                            ApiError,
                            "no such customer, an identifier it does not hold, nothing left, or a customer of more "
                            "touchpoints than CXSTREAM_SPLIT_MAX_TOUCHPOINTS (nothing recorded); or a worker refused "
                            "the split for that reason (its never-link rules stay)",
                        ),
                        "503": answer(ApiError, "the database cannot answer"),
                    },
                }
            },
            "/v1/engagement": {
                "get": {
                    "summary": "The engagement score's quartiles and 90th percentile per channel of touch, and overall",
                    "responses": {"200": answer(ApiEngagement, "the distribution"), **refused},
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
