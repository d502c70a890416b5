"""The pages escape what data holds: identifiers, traits, alert messages and issue keys come from outside."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from streams.pages import Journey, Overview, journey_page, overview_page

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
    assert overview.count("no figures yet") == 6 and "No alerts yet." in overview
