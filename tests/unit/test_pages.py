"""The pages escape what data holds: identifiers, traits, alert messages and issue keys come from outside."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from streams.pages import OVERVIEW_METRICS, Journey, Overview, customer_link, journey_page, overview_page

HOSTILE = '<script>alert("x")</script>'
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _touchpoint(n: int, channel: str, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "event_id": f"e{n}",
        "occurred_at": T0 + timedelta(hours=n),
        "channel": channel,
        "type": "support_contact",
        "stage": "post_purchase",
        "moments": "",
        "amount": None,
        "currency": None,
        "issue_id": None,
        "issue_key": None,
        "resolved": None,
        "repeat_contact": False,
        "nps": None,
        "csat": None,
        "ces": None,
    }
    row.update(fields)
    return row


def test_a_journey_escapes_what_customers_and_sources_wrote() -> None:
    html = journey_page(
        Journey(
            profile={
                "customer_id": "c-1",
                "stage": "post_purchase",
                "identifiers": [f"email:{HOSTILE}"],
                "traits": {"name": HOSTILE},
                "first_seen": T0,
                "last_seen": T0,
            },
            touchpoints=[
                _touchpoint(1, "phone", issue_key=HOSTILE, moments="complaint"),
                _touchpoint(2, "web", issue_key=HOSTILE, repeat_contact=True, resolved=True, csat=1),
            ],
            total_touchpoints=2,
            alerts=[{"occurred_at": T0, "rule": "repeat_contact", "severity": "warning", "message": HOSTILE}],
            merges=[{"occurred_at": T0, "merged_id": HOSTILE, "event_id": "e1", "identifiers": {"email": HOSTILE}}],
        )
    )
    assert "<script>" not in html
    assert html.count("&lt;script&gt;") >= 6
    assert 'data-switches="1"' in html, "the issue moved from phone to web"
    assert 'class="repeat"' in html and "CSAT 1" in html


def test_pages_without_data_still_render() -> None:
    empty = journey_page(
        Journey(profile={"customer_id": "c-2", "identifiers": []}, touchpoints=[], total_touchpoints=0)
    )
    assert 'id="journey"' in empty and "No touchpoints." in empty
    overview = overview_page(Overview(figures=[], window="1d", alerts=[], worst_served=[]))
    assert overview.count("no figures yet") == len(OVERVIEW_METRICS) and "No alerts yet." in overview


def test_a_journey_says_when_it_shows_part_of_the_alerts_or_merges_and_links_quote_slashes() -> None:
    profile = {"customer_id": "c-3", "identifiers": []}
    alerts = [{"occurred_at": T0, "rule": "issue_overdue", "severity": "warning", "message": ""}]
    merges = [{"occurred_at": T0, "merged_id": "c-4", "event_id": "e1", "identifiers": {}}]
    part = journey_page(
        Journey(
            profile=profile,
            touchpoints=[_touchpoint(1, "phone")],
            total_touchpoints=1,
            alerts=alerts,
            merges=merges,
            more_alerts=True,
            more_merges=True,
        )
    )
    assert "The latest 1 alerts are shown" in part and "The first 1 merges are shown" in part
    whole = journey_page(
        Journey(profile=profile, touchpoints=[_touchpoint(1, "phone")], total_touchpoints=1, alerts=alerts)
    )
    assert "are shown;" not in whole
    assert customer_link('a/b"<') == '<a href="/ui/customers/a%2Fb%22%3C">a/b&quot;&lt;</a>'


def test_contacts_about_one_key_beyond_its_lookback_are_separate_issues() -> None:
    rows = [
        _touchpoint(0, "phone", issue_key="reason:delivery"),
        _touchpoint(2, "web", issue_key="reason:delivery", repeat_contact=True),
        _touchpoint(24 * 90, "phone", issue_key="reason:delivery"),  # three months later: another delivery problem
    ]
    journey = Journey(
        profile={"customer_id": "c-3", "identifiers": []},
        touchpoints=rows,
        total_touchpoints=3,
        lookback=lambda _key: 7 * 86_400.0,
    )
    html = journey_page(journey)
    assert html.count('class="issue"') == 2
    assert 'data-switches="1"' in html and 'data-switches="0"' in html
