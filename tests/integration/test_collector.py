"""The HTTP collector of a running worker: Segment-compatible /v1/* calls and marketplace webhooks.

Requests go over HTTP to a real `cxstream worker`; what it published is read back from the broker with a separate
consumer. One worker serves the whole module (a worker start costs a consumer-group join); each test marks its
messages with ids of its own, and the tests that must publish nothing compare the topics' end offsets.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import requests

from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.touchpoint import Channel, EventType, TouchpointEvent, derive_event_id
from tests.support.kafka import read_topic
from tests.support.results import end_offsets
from tests.support.segment import track
from tests.support.workers import WorkerFactory, WorkerProcess

WRITE_KEY = "collector-test-key"
OTHER_WRITE_KEY = "second-key"
MAX_BODY_BYTES = 16 * 1024
SHOP = "https://shop.example.com"

Records = list[tuple[bytes | None, bytes]]


@dataclass
class Collector:
    """The module's worker and where its collector publishes."""

    worker: WorkerProcess
    kafka_url: str
    topics: Topics

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.worker.web_port}{path}"

    def post(self, path: str, body: bytes, auth: tuple[str, str] | None = (WRITE_KEY, "")) -> requests.Response:
        return requests.post(
            self.url(path), data=body, auth=auth, headers={"Content-Type": "application/json"}, timeout=30
        )

    @property
    def web(self) -> str:
        return self.topics.channel(Channel.WEB)

    def offsets(self) -> dict[tuple[str, int], int]:
        """End offsets of every topic the collector writes to."""
        return end_offsets(self.kafka_url, [*self.topics.channels, self.topics.deadletter])

    def events(self, topic: str, wanted: Callable[[TouchpointEvent], bool], count: int) -> list[TouchpointEvent]:
        """The events on ``topic`` that ``wanted`` picks, once ``count`` of them are there (or the topic is read)."""
        records = read_topic(self.kafka_url, topic, until=lambda r: len(_pick(r, wanted)) >= count, timeout=20)
        return _pick(records, wanted)

    def dead_letter(self, marker: bytes) -> DeadLetter | None:
        """The dead letter whose original bytes hold ``marker``."""

        def found(records: Records) -> list[DeadLetter]:
            letters = [DeadLetter.model_validate_json(value) for _, value in records]
            return [d for d in letters if marker in d.original()]

        records = read_topic(self.kafka_url, self.topics.deadletter, until=lambda r: bool(found(r)), timeout=20)
        letters = found(records)
        assert len(letters) <= 1, letters
        return letters[0] if letters else None


def _decode(value: bytes) -> list[dict[str, Any]]:
    """A record's events: one event, or an envelope (a JSON array of events)."""
    body = orjson.loads(value)
    return body if isinstance(body, list) else [body]


def _pick(records: Records, wanted: Callable[[TouchpointEvent], bool]) -> list[TouchpointEvent]:
    events = [TouchpointEvent.model_validate(item) for _, value in records for item in _decode(value)]
    return [event for event in events if wanted(event)]


@pytest.fixture(scope="module")
def collector(kafka_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    tmp = tmp_path_factory.mktemp("collector")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    factory = WorkerFactory(tmp, kafka_url)
    env = factory.env(
        f"sqlite:///{tmp / 'cxstream.db'}",
        prefix,
        write_keys=f"{WRITE_KEY},{OTHER_WRITE_KEY}",
        collector_max_body_bytes=str(MAX_BODY_BYTES),
        collector_allowed_origins=SHOP,
    )
    try:
        yield Collector(factory.start(env), kafka_url, Topics(prefix))
    finally:
        factory.stop_all()


@pytest.mark.conformance
def test_track_with_a_write_key_is_published_as_a_touchpoint(collector: Collector) -> None:
    message_id = f"ajs-{uuid.uuid4().hex}"
    message = track(message_id)
    del message["type"]  # the endpoint says what the call is, as in Segment's HTTP API

    # The second configured key works too; the password part of HTTP Basic is ignored, as by Segment.
    reply = collector.post("/v1/track", orjson.dumps(message), auth=(OTHER_WRITE_KEY, "ignored"))

    assert reply.status_code == 200, reply.text
    assert reply.json() == {"success": True, "accepted": 1}
    [event] = collector.events(collector.web, lambda e: e.source.id == message_id, 1)
    assert event.event_id == derive_event_id(Channel.WEB, message_id)
    assert event.channel is Channel.WEB
    assert event.type is EventType.PRODUCT_VIEW
    assert event.identifiers == {"web_anonymous_id": f"anon-{message_id}"}
    assert event.occurred_at.isoformat() == "2026-03-01T10:00:00+00:00"


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("no Authorization header", {}),
        ("an unknown write key", {"Authorization": "Basic " + base64.b64encode(b"wrong-key:").decode()}),
        ("a bearer token", {"Authorization": f"Bearer {WRITE_KEY}"}),
        ("base64 that is not", {"Authorization": "Basic !!!"}),
    ],
)
def test_requests_without_a_valid_write_key_are_refused(
    collector: Collector, name: str, headers: dict[str, str]
) -> None:
    before = collector.offsets()
    for path, body in [
        ("/v1/track", orjson.dumps(track(f"ajs-{uuid.uuid4().hex}"))),
        ("/v1/batch", orjson.dumps({"batch": [track(f"ajs-{uuid.uuid4().hex}")]})),
        ("/v1/track", b"not even json"),
        ("/v1/ecommerce/ebay", b"{}"),
    ]:
        reply = requests.post(collector.url(path), data=body, headers=headers, timeout=30)
        assert reply.status_code == 401, f"{name} on {path}: {reply.status_code} {reply.text}"
        assert reply.headers.get("WWW-Authenticate", "").startswith("Basic"), reply.headers
        assert "error" in reply.json()
    assert collector.offsets() == before, "nothing is published for an unauthorised request, not even a dead letter"


@pytest.mark.parametrize(
    ("path", "make_body", "reason"),
    [
        # a track call without its event name
        ("/v1/track", lambda m: orjson.dumps({k: v for k, v in track(m).items() if k != "event"}), "validation_error"),
        ("/v1/page", lambda m: orjson.dumps({"messageId": m, "anonymousId": "a"}), "validation_error"),  # no timestamp
        ("/v1/track", lambda m: b'{"messageId": "' + m.encode() + b'", "event": ', "invalid_json"),
        (
            "/v1/ecommerce/ebay",
            lambda m: orjson.dumps({"order_id": m, "buyer_id": "b", "status": "placed"}),
            "validation_error",
        ),
        # valid JSON of the wrong shape
        ("/v1/track", lambda m: orjson.dumps([track(m)]), "not_an_object"),
        ("/v1/identify", lambda m: orjson.dumps(m), "not_an_object"),
        ("/v1/batch", lambda m: orjson.dumps({"batch": {"0": track(m)}}), "invalid_batch"),
        ("/v1/batch", lambda m: orjson.dumps(track(m)), "invalid_batch"),
        # a batch whose one message is not an object
        ("/v1/batch", lambda m: orjson.dumps({"batch": [m]}), "not_an_object"),
    ],
    ids=[
        "track-without-event",
        "page-without-timestamp",
        "truncated-json",
        "order-without-total",
        "track-array",
        "identify-string",
        "batch-not-a-list",
        "batch-without-batch",
        "batch-of-a-string",
    ],
)
def test_an_invalid_message_is_answered_400_and_dead_lettered(
    collector: Collector, path: str, make_body: Callable[[str], bytes], reason: str
) -> None:
    marker = f"bad-{uuid.uuid4().hex}"
    before = {tp: n for tp, n in collector.offsets().items() if "touchpoints" in tp[0]}

    reply = collector.post(path, make_body(marker))

    assert reply.status_code == 400, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert body.get("error") or body.get("errors"), body
    if "errors" in body:
        assert body["success"] is False and body["accepted"] == 0
        assert [e["reason"] for e in body["errors"]] == [reason]
        assert body["errors"][0]["detail"]
    dead = collector.dead_letter(marker.encode())
    assert dead is not None, "the rejected message is on the dead-letter topic"
    assert dead.reason == reason
    assert dead.stage == "collector"
    assert dead.channel == ("ecommerce" if "ecommerce" in path else "web")
    assert dead.source_file == f"collector:{path.rsplit('/', 1)[0] if 'ecommerce' in path else path}"
    after = {tp: n for tp, n in collector.offsets().items() if "touchpoints" in tp[0]}
    assert after == before, "no touchpoint is published for a rejected message"


@pytest.mark.conformance
def test_a_batch_publishes_every_message(collector: Collector) -> None:
    run = uuid.uuid4().hex
    ids = [f"ajs-{run}-{i}" for i in range(40)]
    # Ten people, so that the events spread over partitions (envelopes go one per destination partition).
    batch = [track(mid, anonymousId=f"anon-{run}-{i % 10}") for i, mid in enumerate(ids)]
    batch[1] = {**batch[1], "type": "page", "name": "Home"}
    batch[2] = {**batch[2], "type": "identify", "userId": f"u-{run}", "traits": {"email": f"{run}@example.org"}}

    reply = collector.post("/v1/batch", orjson.dumps({"batch": batch, "sentAt": "2026-03-01T10:00:01.000Z"}))

    assert reply.status_code == 200, reply.text
    assert reply.json() == {"success": True, "accepted": len(ids)}
    events = collector.events(collector.web, lambda e: e.source.id.startswith(f"ajs-{run}-"), len(ids))
    assert sorted(e.source.id for e in events) == sorted(ids), "each message exactly once"
    assert {e.event_id for e in events} == {derive_event_id(Channel.WEB, mid) for mid in ids}
    by_id = {e.source.id: e for e in events}
    assert by_id[ids[1]].type is EventType.PAGE_VIEW
    assert by_id[ids[2]].type is EventType.IDENTIFY
    assert by_id[ids[2]].identifiers["email"] == f"{run}@example.org"


def test_a_batch_with_one_bad_message_publishes_the_good_ones(collector: Collector) -> None:
    run = uuid.uuid4().hex
    good = [track(f"ajs-{run}-{i}") for i in range(3)]
    bad = {k: v for k, v in track(f"ajs-{run}-bad").items() if k != "anonymousId"}

    reply = collector.post("/v1/batch", orjson.dumps({"batch": [good[0], bad, *good[1:]]}))

    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["accepted"] == 3 and body["success"] is False
    assert [(e["index"], e["reason"]) for e in body["errors"]] == [(1, "validation_error")]
    events = collector.events(collector.web, lambda e: e.source.id.startswith(f"ajs-{run}-"), 3)
    assert sorted(e.source.id for e in events) == sorted(m["messageId"] for m in good)
    dead = collector.dead_letter(f"ajs-{run}-bad".encode())
    assert dead is not None and dead.stage == "collector" and dead.line == 2  # its 1-based position


def test_a_body_over_the_limit_is_refused_with_413(collector: Collector) -> None:
    before = collector.offsets()
    message = track(f"ajs-{uuid.uuid4().hex}", properties={"padding": "x" * MAX_BODY_BYTES})

    reply = collector.post("/v1/track", orjson.dumps(message))

    assert reply.status_code == 413, reply.text
    assert "error" in reply.json()
    assert collector.offsets() == before

    # Far over the limit: the web server stops reading early, and still answers the collector's JSON 413.
    reply = collector.post("/v1/batch", b'{"batch": [' + b"0," * (1024 * 1024) + b"0]}")
    assert reply.status_code == 413, reply.text
    assert "error" in reply.json()
    reply = collector.post("/v1/ecommerce/ebay", b"x" * (2 * MAX_BODY_BYTES))
    assert reply.status_code == 413, reply.text
    assert "error" in reply.json()
    assert collector.offsets() == before

    # At the limit is accepted.
    message = track(f"ajs-{uuid.uuid4().hex}")
    size = len(orjson.dumps(message))
    message["properties"]["padding"] = "x" * (MAX_BODY_BYTES - size - len(',"padding":""'))
    body = orjson.dumps(message)
    assert len(body) == MAX_BODY_BYTES
    assert collector.post("/v1/track", body).status_code == 200


def test_a_marketplace_webhook_is_published_as_an_ecommerce_touchpoint(collector: Collector) -> None:
    order_id = f"order-{uuid.uuid4().hex}"
    order = {
        # the marketplace is the one in the path, whatever the body says
        "marketplace": "somewhere-else",
        "order_id": order_id,
        "buyer_id": "B-1",
        "buyer_email": "Buyer.One@Example.org",
        "occurred_at": "2026-03-01T12:00:00Z",
        "status": "placed",
        "total": "89.97",
        "currency": "EUR",
        "items": [{"sku": "JACKET-WP-M", "qty": 1, "unit_price": "89.97"}],
    }

    reply = collector.post("/v1/ecommerce/ebay-de", orjson.dumps(order))

    assert reply.status_code == 200, reply.text
    assert reply.json() == {"success": True, "accepted": 1}
    topic = collector.topics.channel(Channel.ECOMMERCE)
    [event] = collector.events(topic, lambda e: order_id in e.source.id, 1)
    assert event.source.system == "ebay-de"
    assert event.source.id == f"ebay-de:{order_id}:placed"
    assert event.event_id == derive_event_id(Channel.ECOMMERCE, f"ebay-de:{order_id}:placed")
    assert event.type is EventType.PURCHASE
    assert str(event.amount) == "89.97" and event.currency == "EUR"
    assert event.identifiers["email"] == "buyer.one@example.org"


def test_unknown_endpoints_are_404(collector: Collector) -> None:
    reply = collector.post("/v1/merge", orjson.dumps({"previousId": "a", "userId": "b"}))
    assert reply.status_code == 404
    assert "error" in reply.json()


def browser_post(collector: Collector, path: str, message: dict[str, Any], origin: str = SHOP) -> requests.Response:
    """What analytics.js sends from a page: text/plain, the write key in the body, no Authorization, an Origin."""
    headers = {"Content-Type": "text/plain", "Origin": origin}
    return requests.post(collector.url(path), data=orjson.dumps(message), headers=headers, timeout=30)


BROWSER_CALLS = [
    ("/v1/t", {}, EventType.PRODUCT_VIEW),
    ("/v1/p", {"type": "page", "name": "Home"}, EventType.PAGE_VIEW),
    ("/v1/s", {"type": "screen", "name": "Basket"}, EventType.PAGE_VIEW),
    ("/v1/i", {"type": "identify", "userId": "u-{run}", "traits": {"email": "{run}@example.org"}}, EventType.IDENTIFY),
    (
        "/v1/g",
        {"type": "group", "groupId": "acct-{run}", "traits": {"email": "billing@acme.example"}},
        EventType.IDENTIFY,
    ),
    ("/v1/a", {"type": "alias", "previousId": "anon-{run}", "userId": "u-{run}"}, EventType.IDENTIFY),
    ("/v1/screen", {"type": "screen", "name": "Basket"}, EventType.PAGE_VIEW),
    ("/v1/alias", {"type": "alias", "previousId": "anon-{run}", "userId": "u-{run}"}, EventType.IDENTIFY),
    ("/v1/group", {"type": "group", "groupId": "acct-{run}"}, EventType.IDENTIFY),
]


@pytest.mark.parametrize(("path", "changes", "kind"), BROWSER_CALLS, ids=[call[0] for call in BROWSER_CALLS])
def test_analytics_js_calls_from_an_allowed_origin_are_published(
    collector: Collector, path: str, changes: dict[str, Any], kind: EventType
) -> None:
    run = uuid.uuid4().hex
    filled = orjson.loads(orjson.dumps(changes).replace(b"{run}", run.encode()))
    message = {**track(f"ajs-{run}", anonymousId=f"anon-{run}"), **filled, "writeKey": WRITE_KEY}
    if message["type"] != "track":
        message.pop("event")

    reply = browser_post(collector, path, message)

    assert reply.status_code == 200, reply.text
    assert reply.headers["Access-Control-Allow-Origin"] == SHOP
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"
    (event,) = collector.events(collector.web, lambda e: e.source.id == f"ajs-{run}", 1)
    assert event.type is kind
    assert event.identifiers["web_anonymous_id"] == f"anon-{run}"
    if "userId" in message:
        assert event.identifiers["web_user_id"] == f"u-{run}", "an alias links its previous id to the user id"
    if message["type"] == "group":
        assert event.attributes["group_id"] == f"acct-{run}"
        assert "email" not in event.identifiers, "a group's traits describe the account, not the person"
    if message["type"] == "identify":
        assert event.identifiers["email"] == f"{run}@example.org"


def test_a_wrong_write_key_in_the_body_is_401_and_publishes_nothing(collector: Collector) -> None:
    before = collector.offsets()
    for key in ("not-a-key", None, ["collector-test-key"]):
        message = {**track(f"ajs-{uuid.uuid4().hex}"), "writeKey": key}
        reply = browser_post(collector, "/v1/t", message)
        assert reply.status_code == 401, (key, reply.text)
        assert reply.headers["Access-Control-Allow-Origin"] == SHOP, "the page can read why"
    assert collector.offsets() == before, "nothing published, nothing dead-lettered"


def test_cors_preflight_and_origins_not_allowed(collector: Collector) -> None:
    preflight = requests.options(
        collector.url("/v1/p"),
        headers={
            "Origin": SHOP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    assert preflight.headers["Vary"] == "Origin"

    other = "https://evil.example.net"
    refused = requests.options(
        collector.url("/v1/p"), headers={"Origin": other, "Access-Control-Request-Method": "POST"}, timeout=30
    )
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    before = collector.offsets()
    posted = browser_post(collector, "/v1/t", {**track(f"ajs-{uuid.uuid4().hex}"), "writeKey": WRITE_KEY}, other)
    assert posted.status_code == 403 and "Access-Control-Allow-Origin" not in posted.headers
    assert collector.offsets() == before, "nothing published from an origin not allowed"


def test_a_limit_above_the_web_servers_default_is_honoured(workers: WorkerFactory) -> None:
    """A batch over aiohttp's default 1 MiB cap, but under CXSTREAM_COLLECTOR_MAX_BODY_BYTES, is accepted."""
    limit = 2 * 1024 * 1024
    prefix = f"t{uuid.uuid4().hex[:8]}."
    env = workers.env(
        f"sqlite:///{workers.tmp_path / 'big.db'}", prefix, write_keys=WRITE_KEY, collector_max_body_bytes=str(limit)
    )
    big = Collector(workers.start(env), workers.kafka_url, Topics(prefix))
    run = uuid.uuid4().hex
    batch = [track(f"ajs-{run}-{i}", properties={"padding": "x" * 3000}) for i in range(400)]
    body = orjson.dumps({"batch": batch})
    assert 1024 * 1024 < len(body) < limit

    reply = big.post("/v1/batch", body)

    assert reply.status_code == 200, reply.text
    assert reply.json() == {"success": True, "accepted": len(batch)}
    events = big.events(big.web, lambda e: e.source.id.startswith(f"ajs-{run}-"), len(batch))
    assert len(events) == len(batch)
    assert big.post("/v1/batch", b" " * (limit + 1)).status_code == 413
