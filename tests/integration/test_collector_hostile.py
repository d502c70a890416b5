"""The collector under hostile or unlucky clients: huge batches, slow or unauthenticated connections, compressed
bombs, a broker gone. One record, one request or one outage never stops the worker (issue 19).

Real `cxstream worker` processes at the default settings (the default write key included), except where a
setting is what a test is about; requests go over real sockets; what was published is read back from the broker and
from SQL.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
import pytest
import requests
from sqlalchemy import Engine, create_engine, text

from config.topics import Topics
from schemas.deadletter import DeadLetter
from schemas.touchpoint import Channel, derive_event_id
from streams.sandbox.embedded_broker import start_broker, stop_process
from tests.support.kafka import read_topic
from tests.support.processes import free_port, wait_until
from tests.support.segment import track
from tests.support.workers import WorkerFactory, WorkerProcess

WRITE_KEY = "dev-write-key"  # the default CXSTREAM_WRITE_KEYS
DEFAULT_MAX_BODY = 512 * 1024
DEFAULT_MAX_ITEMS = 2500


@dataclass
class Site:
    """A running worker: where to post, where its results land."""

    worker: WorkerProcess
    kafka_url: str
    topics: Topics
    engine: Engine

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.worker.web_port}{path}"

    def post(
        self,
        path: str,
        body: bytes,
        auth: tuple[str, str] | None = (WRITE_KEY, ""),
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> requests.Response:
        return requests.post(
            self.url(path),
            data=body,
            auth=auth,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=timeout,
        )

    def in_sql(self, event_id: str) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(text("SELECT 1 FROM touchpoints WHERE event_id = :e"), {"e": event_id}).first() is not None
            )

    def dead_letters(self, marker: bytes, count: int, timeout: float = 20) -> list[DeadLetter]:
        """The dead letters whose original bytes hold ``marker``, once ``count`` of them are there."""

        def found(records: list[tuple[bytes | None, bytes]]) -> list[DeadLetter]:
            return [
                dead for _, value in records if marker in (dead := DeadLetter.model_validate_json(value)).original()
            ]

        records = read_topic(
            self.kafka_url, self.topics.deadletter, until=lambda r: len(found(r)) >= count, timeout=timeout
        )
        return found(records)

    def tree_rss(self) -> int:
        """Resident memory of the worker and its children (the apply process), bytes."""
        proc = psutil.Process(self.worker.proc.pid)
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):  # a child may end meanwhile
                total += p.memory_info().rss
        return total


def start_site(factory: WorkerFactory, kafka_url: str, tmp: Path, **settings: str) -> Site:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    db = tmp / f"{prefix}db"
    worker = factory.start(factory.env(f"sqlite:///{db}", prefix, **settings))
    site = Site(worker, kafka_url, Topics(prefix), create_engine(f"sqlite:///{db}"))
    # Wait until the worker applies what it is sent (its consumer group joined), so later timings measure it.
    message_id = f"warm-{uuid.uuid4().hex}"
    assert site.post("/v1/track", orjson.dumps(track(message_id))).status_code == 200
    wait_until(lambda: site.in_sql(derive_event_id(Channel.WEB, message_id)), 60, "the worker to apply a first event")
    return site


@pytest.fixture(scope="module")
def site(kafka_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("hostile")
    factory = WorkerFactory(tmp, kafka_url)
    try:
        yield start_site(factory, kafka_url, tmp)
    finally:
        factory.stop_all()


class PeakRss:
    """Samples a worker's tree RSS in a thread while a block runs."""

    def __init__(self, site: Site) -> None:
        self.site, self.peak, self._stop = site, 0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.baseline = self.site.tree_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.site.tree_rss())
            time.sleep(0.05)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.site.tree_rss())


# --- 1. one request never stops the job ----------------------------------------------------------


def test_a_quarter_million_item_batch_is_refused_at_once_and_the_worker_stays_usable(site: Site) -> None:
    body = b'{"batch":[' + b",".join([b"0"] * 250_000) + b"]}"
    assert len(body) <= DEFAULT_MAX_BODY  # within the body limit: only the item cap refuses it

    with PeakRss(site) as rss:
        started = time.monotonic()
        reply = site.post("/v1/batch", body)
        answered = time.monotonic() - started

    assert reply.status_code == 400, reply.text
    assert str(DEFAULT_MAX_ITEMS) in reply.json()["error"] and "250000" in reply.json()["error"]
    assert answered < 3, f"answered after {answered:.1f}s"
    assert rss.peak - rss.baseline < 100 * 2**20, f"worker tree RSS {rss.baseline >> 20} -> {rss.peak >> 20} MB"

    # An unrelated valid request right after is answered, and applied, promptly.
    message_id = f"after-{uuid.uuid4().hex}"
    started = time.monotonic()
    reply = site.post("/v1/track", orjson.dumps(track(message_id)))
    assert reply.status_code == 200, reply.text
    assert time.monotonic() - started < 1.5
    wait_until(lambda: site.in_sql(derive_event_id(Channel.WEB, message_id)), 5, "the next event to reach SQL")

    # Nothing lost: the refused body is one dead letter, whole.
    [dead] = [d for d in site.dead_letters(b'{"batch":[0,0,0,', 1) if d.original() == body]
    assert dead.reason == "too_many_items" and dead.stage == "collector" and dead.line is None


def test_the_largest_batch_of_invalid_items_is_answered_in_time_with_a_dead_letter_each(site: Site) -> None:
    run = uuid.uuid4().hex
    # Invalid (no timestamp), each spelled as a client might: spaces, key order, an escape.
    items = [
        f'{{ "messageId" : "{run}-{i}", "type":"track", "anonymousId": "a\\u00e9{i}", "event":"E" }}'.encode()
        for i in range(DEFAULT_MAX_ITEMS)
    ]
    body = b'{"batch": [' + b",\n".join(items) + b"]}"

    with PeakRss(site) as rss:
        started = time.monotonic()
        reply = site.post("/v1/batch", body)
        answered = time.monotonic() - started

    assert reply.status_code == 400, reply.text
    assert answered < 5, f"answered after {answered:.1f}s"
    assert rss.peak - rss.baseline < 150 * 2**20, f"worker tree RSS {rss.baseline >> 20} -> {rss.peak >> 20} MB"
    answer = reply.json()
    assert answer["accepted"] == 0
    assert [e["index"] for e in answer["errors"]] == list(range(DEFAULT_MAX_ITEMS))
    letters = site.dead_letters(run.encode(), DEFAULT_MAX_ITEMS, timeout=60)
    assert len(letters) == DEFAULT_MAX_ITEMS
    # Each item's bytes as sent, at its 1-based position in the batch, as a line of a file.
    assert sorted((d.line, d.original()) for d in letters) == [(i + 1, item) for i, item in enumerate(items)]
    assert {(d.reason, d.stage, d.source_file) for d in letters} == {
        ("validation_error", "collector", "collector:/v1/batch")
    }


def test_dead_letters_hold_the_bytes_as_sent_and_1_based_positions(site: Site) -> None:
    run = uuid.uuid4().hex
    good = orjson.dumps(track(f"{run}-good"))
    items = [
        good,
        f'{{ "type" : "track",  "messageId":"{run}-no-id-field", "event" : "E" }}'.encode(),  # no anonymousId
        f'"{run} \\u00e9 is a string"'.encode(),
        f'{{"messageId":"{run}-order","type":"track","anonymousId":"a","event":"E","n":1.50}}'.encode(),  # no time
        b"null",
        f'{{"type":"track","messageId":"{run}-big","anonymousId":"a","pad":"{"x" * 40_000}"}}'.encode(),
    ]
    body = b'{"sentAt": "2026-03-01T10:00:01Z", "batch": [' + b" , ".join(items) + b"]}"

    reply = site.post("/v1/batch", body)

    assert reply.status_code == 400, reply.text
    answer = reply.json()
    assert answer["accepted"] == 1
    expected = {2: "validation_error", 3: "not_an_object", 4: "validation_error", 5: "not_an_object"}
    expected[6] = "message_too_large"
    assert {e["index"] + 1: e["reason"] for e in answer["errors"]} == expected
    letters = {d.line: d for d in site.dead_letters(run.encode(), 4)}  # all but ``null``, which holds no marker
    assert sorted(letters) == [2, 3, 4, 6]
    for line, dead in letters.items():
        assert dead.original() == items[line - 1], f"item {line}: {dead.original()[:80]!r}"
        assert dead.reason == expected[line] and dead.stage == "collector"
    # ``null`` is there too, with its own bytes and place.
    assert [d for d in site.dead_letters(b"null", 1) if d.original() == b"null" and d.line == 5]

    # A single call: its body as sent, not the object completed with the type from the path.
    single = f'{{ "messageId" : "{run}-single",\n  "anonymousId": "a" }}'.encode()
    reply = site.post("/v1/track", single)
    assert reply.status_code == 400, reply.text
    [dead] = site.dead_letters(f"{run}-single".encode(), 1)
    assert dead.original() == single
    assert dead.line is None and dead.source_file == "collector:/v1/track"


# --- 2. the HTTP surface -------------------------------------------------------------------------


def raw_request(site: Site, head: bytes, body: bytes = b"", wait: float = 5) -> bytes:
    """Send ``head`` (and ``body``) on a socket of its own; what the server answers within ``wait`` seconds."""
    with socket.create_connection(("127.0.0.1", site.worker.web_port), timeout=wait) as sock:
        sock.sendall(head + body)
        return sock.recv(65536)


def test_the_write_key_is_checked_before_the_body_is_read_or_inflated(site: Site) -> None:
    # Headers announcing a large body that never comes: answered 401 at once, not after waiting for it.
    head = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400000\r\n\r\n"
    started = time.monotonic()
    answer = raw_request(site, head, wait=5)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert time.monotonic() - started < 2

    # A gzip bomb without a write key: 401, not 413 (it is not inflated).
    bomb = gzip.compress(b"[" * (20 * 2**20), 9)
    assert len(bomb) < DEFAULT_MAX_BODY
    reply = site.post("/v1/batch", bomb, auth=None, headers={"Content-Encoding": "gzip"})
    assert reply.status_code == 401, reply.text
    # Not even as a browser would send it (text/plain, where a body write key is looked for): only uncompressed.
    plain = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    assert site.post("/v1/batch", bomb, auth=None, headers=plain).status_code == 401
    reply = site.post("/v1/batch", b" " * (2 * DEFAULT_MAX_BODY), auth=("wrong-key", ""))
    assert reply.status_code == 401, reply.text


def test_compressed_bodies_are_inflated_within_the_limit(site: Site) -> None:
    run = uuid.uuid4().hex
    batch = orjson.dumps({"batch": [track(f"{run}-{i}") for i in range(20)]})
    for encoding, data in [("gzip", gzip.compress(batch)), ("deflate", zlib.compress(batch))]:
        reply = site.post("/v1/batch", data, headers={"Content-Encoding": encoding})
        assert reply.status_code == 200, f"{encoding}: {reply.text}"
        assert reply.json() == {"success": True, "accepted": 20}

    # A bomb with a write key: stopped at the limit, at once.
    bomb = gzip.compress(b" " * (200 * 2**20), 9)
    with PeakRss(site) as rss:
        started = time.monotonic()
        reply = site.post("/v1/batch", bomb, headers={"Content-Encoding": "gzip"})
        assert time.monotonic() - started < 2
    assert reply.status_code == 413, reply.text
    assert rss.peak - rss.baseline < 50 * 2**20

    # Not gzip at all: dead-lettered as sent; an unknown encoding: 415.
    corrupt = f"{run}-not-gzip".encode()
    reply = site.post("/v1/track", corrupt, headers={"Content-Encoding": "gzip"})
    assert reply.status_code == 400, reply.text
    [dead] = site.dead_letters(corrupt, 1)
    assert dead.original() == corrupt and dead.reason == "invalid_content_encoding"
    reply = site.post("/v1/track", batch, headers={"Content-Encoding": "br"})
    assert reply.status_code == 415, reply.text


@pytest.mark.parametrize("path", ["/", "/router/", "/router/topics", "/table/", "/graph/", "/stats/", "/performance/"])
def test_only_metrics_and_the_collector_are_served(site: Site, path: str) -> None:
    assert requests.get(site.url(path), timeout=5).status_code == 404
    assert requests.get(site.url("/metrics"), timeout=5).status_code == 200


def test_slow_clients_are_cut_off(workers: WorkerFactory, kafka_url: str) -> None:
    """Partial headers or a body that never ends hold a connection for CXSTREAM_WEB_READ_TIMEOUT_S, then not."""
    timeout = 2.0
    slow = start_site(workers, kafka_url, workers.tmp_path, web_read_timeout_s=str(timeout))
    port = slow.worker.web_port
    stalled = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Le")
        stalled.append(sock)
    slow_body = socket.create_connection(("127.0.0.1", port), timeout=10)
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    slow_body.sendall(
        f"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"type": "tr'
    )
    opened = time.monotonic()
    try:
        # Meanwhile, others are served.
        reply = slow.post("/v1/track", orjson.dumps(track(f"ok-{uuid.uuid4().hex}")), timeout=5)
        assert reply.status_code == 200, reply.text

        answer = slow_body.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - opened < timeout + 2
        for sock in stalled:
            sock.settimeout(max(0.1, opened + timeout + 3 - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):  # closed with data unread: a reset is a close too
                assert sock.recv(1024) == b"", "a stalled connection got an answer instead of being closed"
        # ... and the one that stopped sending its body, once its lingering time is over too.
        slow_body.settimeout(max(0.1, opened + 2 * timeout + 3 - time.monotonic()))
        while slow_body.recv(65536):
            pass
    except TimeoutError:
        raise AssertionError(
            f"a slow connection was still open {time.monotonic() - opened:.1f}s after it stalled"
        ) from None
    finally:
        for sock in [*stalled, slow_body]:
            sock.close()


def test_a_broker_outage_is_answered_503_promptly(tmp_path: Path) -> None:
    port = free_port()
    broker = start_broker(port, log_path=tmp_path / "tansu.log")  # a broker of its own, to take away
    kafka_url = f"kafka://127.0.0.1:{port}"
    factory = WorkerFactory(tmp_path, kafka_url)
    try:
        site = start_site(factory, kafka_url, tmp_path)
        stop_process(broker)
        for path, body in [
            ("/v1/track", orjson.dumps(track(f"down-{uuid.uuid4().hex}"))),
            ("/v1/batch", orjson.dumps({"batch": [track(f"down-{uuid.uuid4().hex}-{i}") for i in range(10)]})),
        ]:
            started = time.monotonic()
            reply = site.post(path, body, timeout=20)
            answered = time.monotonic() - started
            assert reply.status_code == 503, reply.text
            assert int(reply.headers["Retry-After"]) >= 1
            assert answered < 5 + 2, f"{path} answered after {answered:.1f}s"  # the default send timeout is 5 s
        assert requests.get(site.url("/metrics"), timeout=5).status_code == 200
    finally:
        stop_process(broker)
        for worker in factory.started:
            worker.kill()  # its broker is gone: a graceful stop would wait for it
