"""The read API's pages in Debian's headless Chromium: the overview and a customer's journey, from a simulated run.

The database is filled by the batch processor from a simulated population (merges, alerts, repeat contacts); the
API runs as the real command; the browser authenticates with a read key as a user would, finds a customer by
e-mail through the search form, and the test checks the drawn DOM against the database and saves screenshots.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, sync_playwright
from sqlalchemy import Engine, distinct, func, select

from sinks import tables as t
from sinks.database import make_engine
from tests.support.browser import launch_chromium
from tests.support.population import fill
from tests.support.read_api import READ_KEY, read_api


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine]]:
    """The read API over a filled SQLite database: (base URL, engine)."""
    tmp = tmp_path_factory.mktemp("pages")
    url = f"sqlite:///{tmp}/results.db"
    fill(url, hashing=False)
    with read_api(url, tmp / "api.log") as base:
        yield base, make_engine(url)


@pytest.fixture(scope="module")
def page(site: tuple[str, Engine]) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context(
                http_credentials={"username": READ_KEY, "password": ""}, viewport={"width": 1100, "height": 900}
            )
            yield context.new_page()
        finally:
            browser.close()


def _count(engine: Engine, query: object) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(query) or 0)  # type: ignore[call-overload]


def test_pages_need_a_read_key(site: tuple[str, Engine]) -> None:
    base, _ = site
    refused = requests.get(f"{base}/ui/", timeout=10)
    assert refused.status_code == 401 and "Basic" in refused.headers["WWW-Authenticate"]
    assert requests.get(f"{base}/ui/", auth=("a-write-key", ""), timeout=10).status_code == 401
    missing = requests.get(f"{base}/ui/customers/email:nobody@example.org", auth=(READ_KEY, ""), timeout=10)
    assert missing.status_code == 404 and "No customer" in missing.text


def test_the_overview_charts_each_channels_figures_and_lists_alerts_and_the_worst_served(
    site: tuple[str, Engine], page: Page, tmp_path: Path
) -> None:
    base, engine = site
    page.goto(f"{base}/ui/")
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    m = t.metrics.c
    for metric in ("nps", "csat", "fcr", "repeat_contact_rate", "purchases"):
        chart = f'svg.chart[data-metric="{metric}"]'
        channels = _count(
            engine,
            select(func.count(distinct(m.key))).where(
                m.scope == "channel", m.metric == metric, m["window"] == "1d", m.value.is_not(None)
            ),
        )
        assert channels > 0, f"the population has {metric} figures"
        assert page.locator(f"{chart} polyline.series").count() == channels + 1, "a line per channel, and overall"
        points = _count(
            engine,
            select(func.count()).where(
                m.scope.in_(("channel", "overall")), m.metric == metric, m["window"] == "1d", m.value.is_not(None)
            ),
        )
        assert page.locator(f"{chart} circle.point").count() == points, "a point per daily figure"
    assert page.locator("circle.point.provisional").count() > 0, "open windows are marked provisional"
    alerts = _count(engine, select(func.count()).select_from(t.alerts))
    assert page.locator("#latest-alerts tr").count() == min(alerts, 20) + 1
    page.locator("#worst-served a").first.click()
    page.wait_for_url("**/ui/customers/**")
    assert page.locator("svg#journey .alert-mark").count() >= 1, "the worst-served customer has alerts"


def test_a_journey_found_by_e_mail_draws_lanes_stages_moments_issues_alerts_and_merges(
    site: tuple[str, Engine], page: Page, tmp_path: Path
) -> None:
    base, engine = site
    tp, merges, alerts, ids = t.touchpoints.c, t.identity_merges.c, t.alerts.c, t.identities.c
    # The customer with the most to draw: merges, repeat contacts, channels, alerts.
    repeats = select(func.count()).where(tp.customer_id == t.customers.c.customer_id, tp.repeat_contact)
    merged = select(func.count()).where(merges.survivor_id == t.customers.c.customer_id)
    channels = select(func.count(distinct(tp.channel))).where(tp.customer_id == t.customers.c.customer_id)
    with engine.connect() as conn:
        customer_id = conn.scalar(
            select(t.customers.c.customer_id)
            .where(
                select(ids.identifier)
                .where(ids.customer_id == t.customers.c.customer_id, ids.id_type == "email")
                .exists()
            )
            .order_by(
                (merged.scalar_subquery() > 0).desc(),
                (repeats.scalar_subquery() > 0).desc(),
                channels.scalar_subquery().desc(),
                t.customers.c.customer_id,
            )
            .limit(1)
        )
        email = conn.scalar(select(ids.id_value).where(ids.customer_id == customer_id, ids.id_type == "email"))
        rows = conn.execute(
            select(tp.channel, tp.moments, tp.issue_key, tp.repeat_contact, tp.stage).where(
                tp.customer_id == customer_id
            )
        ).all()
    page.goto(f"{base}/ui/")
    page.fill("#search input[name=ref]", email.upper())  # a bare e-mail, normalised as the adapters store it
    page.click("#search button")
    page.wait_for_url("**/ui/customers/*")
    page.screenshot(path=str(tmp_path / "journey.png"), full_page=True)
    assert page.locator("h1").inner_text() == f"Customer {customer_id}"
    journey = page.locator("svg#journey")
    drawn_lanes = journey.locator("g.lane").evaluate_all("gs => gs.map(g => g.dataset.channel)")
    assert sorted(drawn_lanes) == sorted({row.channel for row in rows})
    assert journey.locator(".touchpoint").count() == len(rows)
    assert journey.locator(".touchpoint.moment").count() == sum(1 for row in rows if row.moments)
    drawn_stages = journey.locator("rect.stage-band").evaluate_all("rs => rs.map(r => r.dataset.stage)")
    assert set(drawn_stages) == {row.stage for row in rows}
    issues = {row.issue_key for row in rows if row.issue_key}
    assert journey.locator("polyline.issue").count() == len(issues)
    assert journey.locator("circle.repeat").count() == sum(1 for row in rows if row.repeat_contact) > 0
    assert journey.locator(".alert-mark").count() == _count(
        engine, select(func.count()).where(alerts.customer_id == customer_id)
    )
    merge_count = _count(engine, select(func.count()).where(merges.survivor_id == customer_id))
    assert merge_count > 0 and page.locator("#merges tr").count() == merge_count + 1
    assert page.locator("#touchpoints tr").count() == len(rows) + 1


def test_odd_references_find_no_customer_and_are_shown_escaped(site: tuple[str, Engine]) -> None:
    base, _ = site
    auth = (READ_KEY, "")

    def search(ref: str) -> requests.Response:
        return requests.get(f"{base}/ui/customers", params={"ref": ref}, auth=auth, timeout=10)

    # A slash stays in the reference (quoted %2F in the redirect), and the page escapes what it echoes.
    slash = search("email:<b>a/b</b>@example.org")
    assert slash.status_code == 404 and "a%2Fb" in slash.url, "one path segment: the slash quoted"
    assert "No customer email:&lt;b&gt;a/b&lt;/b&gt;@example.org" in slash.text and "<b>a/b" not in slash.text
    # ".." is not followed to the overview (a browser resolves the segment away).
    dots = search("..")
    assert dots.status_code == 404 and "No customer .." in dots.text
    # NUL, which PostgreSQL refuses in any text, and a long unicode reference: not found, not a server error.
    assert requests.get(f"{base}/ui/customers/a%00b", auth=auth, timeout=10).status_code == 404
    assert search("email:" + "é" * 1000 + "@example.org").status_code == 404
