"""Segment's own libraries against a running worker's collector: analytics.js in headless Chromium, analytics-node.

The browser test serves a shop page that loads analytics.js from the npm package (``tests/web``; no CDN, its
settings given inline), opens it in Debian's Chromium driven by Playwright, and reads what landed in SQL: every
call under one customer, with the identifiers the calls carried. The page is served from an allowed origin
(``CXSTREAM_COLLECTOR_ALLOWED_ORIGINS``); served from another origin, nothing lands. ``make test`` installs what
these need (``npm ci`` in tests/web, Debian's ``chromium``); without them the tests fail, never skip.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import Engine, select

from sinks import tables as t
from sinks.database import make_engine
from tests.support.browser import launch_chromium
from tests.support.processes import free_port, wait_until
from tests.support.workers import WorkerFactory, WorkerProcess

WEB = Path(__file__).resolve().parents[1] / "web"
ANALYTICS_JS = WEB / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
WRITE_KEY = "web-clients-key"


def node_modules() -> None:
    """Install Segment's libraries in tests/web (``make test`` has done it already: then this is instant)."""
    if not ANALYTICS_JS.exists():
        npm = shutil.which("npm")
        assert npm, "the web client tests need Node.js and npm (apt-get install nodejs npm)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True, capture_output=True)


class ShopPage(http.server.SimpleHTTPRequestHandler):
    """``/`` is the shop page, ``/ajs/...`` analytics.js's files as the npm package ships them."""

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        if path.startswith("/ajs/"):
            return str(ANALYTICS_JS / path.removeprefix("/ajs/"))
        return str(WEB / "analytics.html")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def shop() -> Iterator[int]:
    """The shop page's port on loopback."""
    node_modules()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), ShopPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def collector(shop: int, kafka_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker for the module, whose collector accepts the shop's origin (as 127.0.0.1, not as localhost)."""
    tmp = tmp_path_factory.mktemp("web-clients")
    factory = WorkerFactory(tmp, kafka_url)
    env = factory.env(
        f"sqlite:///{tmp / 'cxstream.db'}",
        f"t{uuid.uuid4().hex[:8]}.",
        write_keys=WRITE_KEY,
        collector_allowed_origins=f"http://127.0.0.1:{shop}",
        batch_max_wait="0.1",
    )
    try:
        yield factory.start(env)
    finally:
        factory.stop_all()


@dataclass
class Visit:
    """What the shop page did: analytics.js's anonymous id, and its calls to the collector as the browser saw them."""

    anonymous_id: str
    answered: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def open_shop(url: str) -> Visit:
    """Open the shop page in headless Chromium and wait until analytics.js has sent its calls."""
    answered: list[int] = []
    failed: list[str] = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.on("response", lambda r: answered.append(r.status) if "/v1/" in r.url else None)
            page.on("requestfailed", lambda r: failed.append(r.url) if "/v1/" in r.url else None)
            page.goto(url)
            return Visit(str(page.evaluate("window.sent")), answered, failed)
        finally:
            browser.close()


def database(worker: WorkerProcess) -> Engine:
    return make_engine(worker.env["CXSTREAM_DATABASE_URL"])


def touchpoints_of(engine: Engine, customer_id: str) -> list[str]:
    """Event types of a customer's touchpoints, in event-time order."""
    c = t.touchpoints.c
    with engine.connect() as conn:
        return list(conn.execute(select(c.type).where(c.customer_id == customer_id).order_by(c.occurred_at)).scalars())


def owner(engine: Engine, identifier: str) -> str | None:
    """The customer an identifier key belongs to, if it is known."""
    with engine.connect() as conn:
        found = conn.execute(select(t.identities.c.customer_id).where(t.identities.c.identifier == identifier))
        return found.scalar_one_or_none()


def test_analytics_js_in_chromium_lands_every_call_under_one_customer(collector: WorkerProcess, shop: int) -> None:
    run = uuid.uuid4().hex[:10]
    api = f"127.0.0.1:{collector.web_port}"
    visit = open_shop(f"http://127.0.0.1:{shop}/?key={WRITE_KEY}&api={api}&run={run}")
    assert visit.answered == [200] * 6 and not visit.failed, visit
    anonymous_id = visit.anonymous_id

    engine = database(collector)
    wait_until(lambda: len(touchpoints_of(engine, owner(engine, f"web_user_id:user-{run}") or "")) == 6, 60, "6 calls")
    customer = owner(engine, f"web_user_id:user-{run}")
    assert owner(engine, f"web_anonymous_id:{anonymous_id}") == customer, "the browsing before sign-up is theirs"
    assert owner(engine, f"email:{run}@example.org") == customer, "identify traits give the e-mail"
    assert owner(engine, "email:billing@acme.example") is None, "a group's traits are the account's, not the person's"
    assert customer is not None
    assert sorted(touchpoints_of(engine, customer)) == sorted(
        ["page_view", "product_view", "identify", "identify", "identify", "purchase"]
    ), "page, track, alias, identify, group and the order"
    with engine.connect() as conn:
        traits = conn.execute(select(t.customers.c.traits).where(t.customers.c.customer_id == customer)).scalar_one()
    assert traits == {"email": f"{run}@example.org", "plan": "gold"}, "identify traits on the profile, not the group's"


def test_a_page_from_an_origin_not_allowed_sends_nothing(collector: WorkerProcess, shop: int) -> None:
    run = uuid.uuid4().hex[:10]
    api = f"127.0.0.1:{collector.web_port}"
    # The same page from http://localhost:<port>: another origin than http://127.0.0.1:<port>.
    visit = open_shop(f"http://localhost:{shop}/?key={WRITE_KEY}&api={api}&run={run}")
    assert visit.failed and not visit.answered, f"the browser's calls were refused (CORS), not answered: {visit}"
    time.sleep(2)  # anything sent had time to land
    engine = database(collector)
    assert owner(engine, f"web_user_id:user-{run}") is None
    with engine.connect() as conn:
        found = conn.execute(select(t.touchpoints.c.source_id).where(t.touchpoints.c.source_id.contains(run))).all()
    assert found == []


def test_analytics_node_batches_land(collector: WorkerProcess) -> None:
    run = uuid.uuid4().hex[:10]
    node = shutil.which("node")
    assert node, "the analytics-node test needs Node.js"
    sent = subprocess.run(
        [node, str(WEB / "node_client.mjs"), f"http://127.0.0.1:{collector.web_port}", WRITE_KEY, run],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    engine = database(collector)
    customer = functools.partial(owner, engine, f"web_user_id:node-user-{run}")
    wait_until(lambda: len(touchpoints_of(engine, customer() or "")) == 9, 60, "9 calls")
    assert owner(engine, f"email:node-{run}@example.org") == customer()
    assert sorted(touchpoints_of(engine, customer() or "")) == sorted(["identify", *["product_view"] * 7, "page_view"])
