"""The read API's pages: one customer's journey across channels, and the experience overview.

Server-rendered HTML with the charts drawn here as SVG: no script, no build step, nothing fetched from elsewhere,
so the pages work offline and behind the same read keys as the JSON routes. Every value that came from data is
escaped (``html.escape``): identifiers, traits and alert messages are what customers and source systems wrote.

``journey_page`` draws a lane per channel over event time, the journey stages as bands behind the lanes, each
touchpoint as a dot (moments of truth as diamonds, survey scores beside them), each issue as a line through its
contacts from the first to the resolving one (a repeat contact ringed, a channel switch visible as the line
changing lanes), alerts as marks above the lanes, and merges below. ``overview_page`` draws the experience
figures of each channel over time (provisional windows hollow), the latest alerts and the worst-served customers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from itertools import pairwise
from typing import Any
from urllib.parse import quote

from schemas.touchpoint import Channel
from streams.inspection import survey_scores

#: Touchpoints a journey page draws at most (the customer's latest); the JSON timeline pages through all of them.
JOURNEY_TOUCHPOINTS = 500
#: The experience figures the overview charts, with their titles.
OVERVIEW_METRICS = {
    "nps": "NPS",
    "csat": "CSAT %",
    "ces": "CES (1-7)",
    "fcr": "First-contact resolution %",
    "confirmed_fcr": "Confirmed first-contact resolution %",
    "experience_gap": "Experience gap %",
    "repeat_contact_rate": "Repeat contacts %",
    "purchases": "Purchases",
}
#: Days of windows the overview charts.
OVERVIEW_DAYS = 60
#: Alerts on the overview and on a journey page (the latest), and customers in the worst-served table.
OVERVIEW_ALERTS, JOURNEY_ALERTS, WORST_SERVED = 20, 50, 10
#: Merges a journey page lists at most (the first); the JSON merges route lists them all.
JOURNEY_MERGES = 200

_CHANNELS = [c.value for c in Channel]
_COLOURS = {"store": "#1b9e77", "phone": "#d95f02", "web": "#7570b3", "ecommerce": "#e7298a", "overall": "#444"}
_STAGE_COLOURS = {"pre_purchase": "#eef3fb", "purchase": "#eefbef", "post_purchase": "#fdf3e7"}

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; margin: .3em 0; } td, th { padding: .2em .6em; border-bottom: 1px solid #ddd;
text-align: left; vertical-align: top; } th { background: #f4f4f4; }
.facts span { margin-right: 1.2em; } .muted { color: #777; } .charts { display: flex; flex-wrap: wrap; gap: 1em; }
svg text { font: 11px system-ui, sans-serif; } form { margin: .5em 0 1em; } input[type=text] { width: 22em; }
.provisional { fill: #fff; } .legend span { margin-right: 1em; }
"""


def _page(title: str, body: str) -> str:
    search = (
        '<form id="search" method="get" action="/ui/customers">'
        '<input type="text" name="ref" placeholder="customer id or type:value, e.g. email:ann@example.org">'
        ' <button type="submit">Find customer</button> <a href="/ui/">Overview</a></form>'
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · cxstream</title>'
        f"<style>{_STYLE}</style></head><body>{search}{body}</body></html>"
    )


def _when(at: datetime | None) -> str:
    return "" if at is None else at.strftime("%Y-%m-%d %H:%M")


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _table(table_id: str, headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """A table whose cells are HTML already escaped by the caller."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p id="{table_id}" class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def customer_path(ref: str) -> str:
    """The path of the journey page of ``ref`` (a customer id or ``type:value``), ``/`` in it quoted.

    A ref of dots alone has no such path: browsers resolve the segment ``..`` (and ``%2E%2E``) away.
    """
    return f"/ui/customers/{quote(ref, safe='')}"


def customer_link(customer_id: str) -> str:
    """A link to a customer's journey page."""
    return f'<a href="{escape(customer_path(customer_id))}">{escape(customer_id)}</a>'


class _TimeScale:
    """Maps event times onto the x axis of a chart ``width`` wide, with ``left`` for the lane labels."""

    def __init__(self, times: Sequence[datetime], left: float, width: float) -> None:
        start, end = min(times).timestamp(), max(times).timestamp()
        pad = max((end - start) * 0.03, 3600.0)
        self.start, self.span = start - pad, end - start + 2 * pad
        self.left, self.width = left, width

    def x(self, at: datetime) -> float:
        return round(self.left + (at.timestamp() - self.start) / self.span * self.width, 1)

    def ticks(self, y: float, count: int = 6) -> list[str]:
        """Date labels along the axis at ``y`` (the outer ones kept inside the chart)."""
        step = self.span / count
        labels = []
        for i in range(count + 1):
            anchor = "start" if i == 0 else "end" if i == count else "middle"
            day = datetime.fromtimestamp(self.start + i * step, UTC).strftime("%Y-%m-%d")
            x = self.left + i * self.width / count
            labels.append(f'<text class="tick" x="{x}" y="{y}" text-anchor="{anchor}">{day}</text>')
        return labels


# --- the journey -------------------------------------------------------------------------------------------------


@dataclass
class Journey:
    """What a journey page shows of one customer (rows as ``sinks.queries`` reads them)."""

    profile: dict[str, Any]
    touchpoints: list[dict[str, Any]]
    total_touchpoints: int
    alerts: list[dict[str, Any]] = field(default_factory=list)
    merges: list[dict[str, Any]] = field(default_factory=list)
    #: The customer has more alerts, or merges, than ``alerts`` and ``merges`` hold.
    more_alerts: bool = False
    more_merges: bool = False
    #: How far back a contact counts earlier contacts about the same issue key, seconds
    #: (``CustomerPolicy.lookback``); a contact further from the previous one starts a new line.
    lookback: Callable[[str], float] = lambda _key: float("inf")


_LANE_H, _LEFT, _WIDTH, _TOP = 56, 110, 900, 40


def journey_page(journey: Journey) -> str:
    """The HTML page of one customer's journey across channels."""
    profile = journey.profile
    customer_id = str(profile["customer_id"])
    facts = " ".join(
        f"<span>{escape(label)}: <b>{escape(str(profile.get(name)))}</b></span>"
        for label, name in (
            ("stage", "stage"),
            ("events", "events"),
            ("purchases", "purchases"),
            ("revenue", "revenue"),
            ("contacts", "contacts"),
            ("returns", "returns"),
            ("open issues", "open_issues"),
        )
    )
    identifiers = ", ".join(escape(key) for key in profile.get("identifiers", []))
    traits = profile.get("traits") or {}
    trait_text = ", ".join(f"{escape(str(k))}={escape(str(v))}" for k, v in sorted(traits.items()))
    shown = len(journey.touchpoints)
    note = (
        f'<p class="muted">The latest {shown} of {journey.total_touchpoints} touchpoints are drawn; '
        f"the JSON timeline (/v1/customers/…/timeline) pages through all of them.</p>"
        if shown < journey.total_touchpoints
        else ""
    )
    body = (
        f"<h1>Customer {escape(customer_id)}</h1>"
        f'<p class="facts">{facts}</p>'
        f'<p class="muted">first seen {_when(profile.get("first_seen"))}, last seen {_when(profile.get("last_seen"))}'
        f"</p><p>identifiers: {identifiers or 'none'}</p>"
        + (f"<p>traits: {trait_text}</p>" if trait_text else "")
        + "<h2>Journey</h2>"
        + note
        + _journey_svg(journey)
        + '<p class="legend">'
        + "".join(
            f'<span style="background:{colour}">&nbsp;{escape(stage.replace("_", "-"))}&nbsp;</span>'
            for stage, colour in _STAGE_COLOURS.items()
        )
        + "<span>● touchpoint</span><span>◆ moment of truth</span><span>— issue, ◯ repeat contact,"
        " ✓ resolved</span><span>▼ alert</span></p>"
        + "<h2>Alerts</h2>"
        + _more(journey.more_alerts, f"The latest {len(journey.alerts)} alerts", "alerts")
        + _table(
            "alerts",
            ("time", "rule", "severity", "message"),
            (
                (_when(a["occurred_at"]), escape(a["rule"]), escape(a["severity"]), escape(a.get("message") or ""))
                for a in journey.alerts
            ),
            "No alerts.",
        )
        + "<h2>Merges</h2>"
        + _more(journey.more_merges, f"The first {len(journey.merges)} merges", "merges")
        + _table(
            "merges",
            ("time", "merged customer", "event", "identifiers that linked them"),
            (
                (
                    _when(m["occurred_at"]),
                    escape(m["merged_id"]),
                    escape(m["event_id"]),
                    escape(", ".join(f"{k}:{v}" for k, v in (m.get("identifiers") or {}).items())),
                )
                for m in journey.merges
            ),
            "No other customer was merged into this one.",
        )
        + "<h2>Touchpoints</h2>"
        + _table(
            "touchpoints",
            ("time", "channel", "type", "stage", "moments", "amount", "issue", "scores"),
            (
                (
                    _when(row["occurred_at"]),
                    escape(row["channel"]),
                    escape(row["type"]),
                    escape(row["stage"]),
                    escape(row["moments"] or ""),
                    "" if row["amount"] is None else escape(f"{row['amount']} {row['currency'] or ''}"),
                    escape(_issue_text(row)),
                    escape(survey_scores(row)),
                )
                for row in reversed(journey.touchpoints)
            ),
            "No touchpoints.",
        )
    )
    return _page(f"Customer {customer_id}", body)


def _more(more: bool, shown: str, route: str) -> str:
    """The note that a list shows part of what the customer has, and where the rest is."""
    if not more:
        return ""
    return f'<p class="muted">{escape(shown)} are shown; /v1/customers/…/{escape(route)} has them all.</p>'


def _issue_text(row: dict[str, Any]) -> str:
    if not row.get("issue_key"):
        return ""
    flags = [
        word
        for word, on in (
            ("repeat", row.get("repeat_contact")),
            ("resolved", row.get("resolved")),
            ("contradicted", row.get("resolution_contradicted")),
        )
        if on
    ]
    return str(row["issue_key"]) + (f" ({', '.join(flags)})" if flags else "")


def _journey_svg(journey: Journey) -> str:
    touchpoints = journey.touchpoints
    channels = [c for c in _CHANNELS if any(row["channel"] == c for row in touchpoints)] or _CHANNELS[:1]
    lanes = {channel: _TOP + i * _LANE_H + _LANE_H / 2 for i, channel in enumerate(channels)}
    height = _TOP + len(channels) * _LANE_H + 30
    if not touchpoints:
        return f'<svg id="journey" width="{_LEFT + _WIDTH + 20}" height="{height}"></svg>'
    scale = _TimeScale([row["occurred_at"] for row in touchpoints], _LEFT, _WIDTH)
    parts: list[str] = []
    # Stage bands: each touchpoint's stage from it to the next touchpoint, runs of one stage joined.
    bands: list[tuple[str, float, float]] = []
    for i, row in enumerate(touchpoints):
        x0 = scale.x(row["occurred_at"])
        x1 = scale.x(touchpoints[i + 1]["occurred_at"]) if i + 1 < len(touchpoints) else _LEFT + _WIDTH
        if bands and bands[-1][0] == row["stage"]:
            bands[-1] = (row["stage"], bands[-1][1], x1)
        else:
            bands.append((row["stage"], x0, x1))
    lanes_bottom = _TOP + len(channels) * _LANE_H
    for stage, x0, x1 in bands:
        parts.append(
            f'<rect class="stage-band" data-stage="{escape(stage)}" x="{x0}" y="{_TOP}" width="{max(x1 - x0, 1)}" '
            f'height="{lanes_bottom - _TOP}" fill="{_STAGE_COLOURS.get(stage, "#f6f6f6")}"><title>'
            f"{escape(stage)}</title></rect>"
        )
    for channel, y in lanes.items():
        parts.append(
            f'<g class="lane" data-channel="{escape(channel)}"><line x1="{_LEFT}" x2="{_LEFT + _WIDTH}" y1="{y}" '
            f'y2="{y}" stroke="#ccc"/><text x="8" y="{y + 4}">{escape(channel)}</text></g>'
        )
    parts += scale.ticks(lanes_bottom + 18)
    parts += _issues_svg(touchpoints, scale, lanes, journey.lookback)
    for row in touchpoints:
        parts.append(_touchpoint_svg(row, scale.x(row["occurred_at"]), lanes[row["channel"]]))
    for alert in journey.alerts:
        x = min(max(scale.x(alert["occurred_at"]), _LEFT), _LEFT + _WIDTH)
        parts.append(
            f'<path class="alert-mark" d="M{x - 6},{_TOP - 22} h12 l-6,10 z" fill="#c0392b"><title>'
            f"{escape(_when(alert['occurred_at']))} {escape(alert['rule'])}: {escape(alert.get('message') or '')}"
            "</title></path>"
        )
    return (
        f'<svg id="journey" xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 20}" height="{height}">'
        + "".join(parts)
        + "</svg>"
    )


def _touchpoint_svg(row: dict[str, Any], x: float, y: float) -> str:
    colour = _COLOURS.get(row["channel"], "#333")
    title = escape(f"{_when(row['occurred_at'])} {row['channel']} {row['type']} ({row['stage']})")
    attributes = f'data-event-id="{escape(row["event_id"])}" data-type="{escape(row["type"])}"'
    if row["moments"]:
        title += escape(f"; moments: {row['moments']}")
        shape = (
            f'<path class="touchpoint moment" {attributes} data-moments="{escape(row["moments"])}" '
            f'd="M{x},{y - 8} l8,8 l-8,8 l-8,-8 z" fill="{colour}"><title>{title}</title></path>'
        )
    else:
        shape = (
            f'<circle class="touchpoint" {attributes} cx="{x}" cy="{y}" r="5" fill="{colour}">'
            f"<title>{title}</title></circle>"
        )
    scores = survey_scores(row)
    if scores:
        shape += f'<text class="score" x="{x + 9}" y="{y - 9}">{escape(scores)}</text>'
    return shape


def _issues_svg(
    touchpoints: list[dict[str, Any]], scale: _TimeScale, lanes: dict[str, float], lookback: Callable[[str], float]
) -> list[str]:
    """A line per issue through its contacts in time order; repeat contacts ringed, the resolving one ticked.

    A key names one issue only within its lookback, as the domain counts contacts: a contact further from the
    previous one about the same key (two delivery complaints months apart) starts a line of its own.
    """
    issues: list[tuple[str, list[dict[str, Any]]]] = []
    latest: dict[str, list[dict[str, Any]]] = {}
    for row in touchpoints:
        key = row.get("issue_key")
        if not key:
            continue
        contacts = latest.get(key)
        gap = None if contacts is None else (row["occurred_at"] - contacts[-1]["occurred_at"]).total_seconds()
        if contacts is None or gap is None or gap > lookback(key):
            contacts = latest[key] = []
            issues.append((key, contacts))
        contacts.append(row)
    parts = []
    for key, contacts in issues:
        points = " ".join(f"{scale.x(r['occurred_at'])},{lanes[r['channel']]}" for r in contacts)
        switches = sum(1 for a, b in pairwise(contacts) if a["channel"] != b["channel"])
        resolved = next((r for r in contacts if r.get("resolved")), None)
        title = f"issue {key}: {len(contacts)} contact(s), {switches} channel switch(es)" + (
            f", resolved {_when(resolved['occurred_at'])}" if resolved else ", not resolved"
        )
        parts.append(
            f'<polyline class="issue" data-issue="{escape(key)}" data-switches="{switches}" points="{points}" '
            f'fill="none" stroke="#c0392b" stroke-width="2" stroke-dasharray="5 3"><title>{escape(title)}</title>'
            "</polyline>"
        )
        for r in contacts:
            x, y = scale.x(r["occurred_at"]), lanes[r["channel"]]
            if r.get("repeat_contact"):
                parts.append(
                    f'<circle class="repeat" cx="{x}" cy="{y}" r="10" fill="none" stroke="#c0392b" stroke-width="2">'
                    f"<title>repeat contact on {escape(key)}</title></circle>"
                )
            if r.get("resolved"):
                parts.append(f'<text class="resolved" x="{x - 4}" y="{y + 22}" fill="#1e8449">✓</text>')
    return parts


# --- the overview ------------------------------------------------------------------------------------------------


@dataclass
class Overview:
    """What the overview page shows (rows as ``sinks.queries`` reads them)."""

    #: Figures of ``OVERVIEW_METRICS`` per channel (and overall, key ``overall``), one window length.
    figures: list[dict[str, Any]]
    window: str
    alerts: list[dict[str, Any]]
    worst_served: list[dict[str, Any]]


_CHART_W, _CHART_H, _CHART_LEFT = 420, 200, 44


def overview_page(overview: Overview) -> str:
    """The HTML page of the experience figures over time, the latest alerts and the worst-served customers."""
    by_metric: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in overview.figures:
        by_metric.setdefault(row["metric"], {}).setdefault(row["key"], []).append(row)
    charts = "".join(_chart(metric, title, by_metric.get(metric, {})) for metric, title in OVERVIEW_METRICS.items())
    legend = "".join(f'<span style="color:{colour}">━ {escape(key)}</span>' for key, colour in _COLOURS.items())
    body = (
        "<h1>Customer experience</h1>"
        f'<p class="muted">Per channel and overall, {escape(overview.window)} windows, the last {OVERVIEW_DAYS} days '
        "with data. Hollow points are provisional windows (still open, or within their grace for late events).</p>"
        f'<p class="legend">{legend}</p><div class="charts">{charts}</div>'
        "<h2>Latest alerts</h2>"
        + _table(
            "latest-alerts",
            ("time", "customer", "rule", "severity", "message"),
            (
                (
                    _when(a["occurred_at"]),
                    customer_link(a["customer_id"]),
                    escape(a["rule"]),
                    escape(a["severity"]),
                    escape(a.get("message") or ""),
                )
                for a in overview.alerts
            ),
            "No alerts yet.",
        )
        + "<h2>Worst-served customers</h2>"
        + f'<p class="muted">Most alerts over the last {OVERVIEW_DAYS} days charted first; then open issues and contacts.</p>'
        + _table(
            "worst-served",
            ("customer", "alerts", "latest alert", "open issues", "contacts", "stage", "last seen"),
            (
                (
                    customer_link(c["customer_id"]),
                    str(c["alerts"]),
                    _when(c["latest_alert"]),
                    str(c["open_issues"]),
                    str(c["contacts"]),
                    escape(c["stage"]),
                    _when(c["last_seen"]),
                )
                for c in overview.worst_served
            ),
            "No customer has an alert.",
        )
    )
    return _page("Overview", body)


def _chart(metric: str, title: str, series: dict[str, list[dict[str, Any]]]) -> str:
    """A line chart of one metric: a line per key, a point per window (hollow while provisional)."""
    points = [row for rows in series.values() for row in rows if row["value"] is not None]
    head = f'<figure><figcaption><b>{escape(title)}</b></figcaption><svg class="chart" data-metric="{escape(metric)}"'
    size = f' width="{_CHART_W}" height="{_CHART_H}" xmlns="http://www.w3.org/2000/svg">'
    if not points:
        return f'{head}{size}<text x="{_CHART_LEFT}" y="{_CHART_H / 2}">no figures yet</text></svg></figure>'
    scale = _TimeScale([row["window_start"] for row in points], _CHART_LEFT, _CHART_W - _CHART_LEFT - 10)
    low = min(row["value"] for row in points)
    high = max(row["value"] for row in points)
    if high == low:
        low, high = low - 1, high + 1
    top, bottom = 10, _CHART_H - 24

    def y(value: float) -> float:
        return round(bottom - (value - low) / (high - low) * (bottom - top), 1)

    parts = [
        f'<line x1="{_CHART_LEFT}" x2="{_CHART_LEFT}" y1="{top}" y2="{bottom}" stroke="#999"/>',
        f'<text x="2" y="{top + 8}">{_number(high)}</text><text x="2" y="{bottom}">{_number(low)}</text>',
    ]
    parts += scale.ticks(_CHART_H - 6, 3)
    for key in sorted(series, key=lambda k: (k == "overall", k)):
        rows = [row for row in series[key] if row["value"] is not None]
        colour = _COLOURS.get(key, "#888")
        line = " ".join(f"{scale.x(r['window_start'])},{y(r['value'])}" for r in rows)
        dash = ' stroke-dasharray="4 3"' if key == "overall" else ""
        parts.append(
            f'<polyline class="series" data-key="{escape(key)}" points="{line}" fill="none" stroke="{colour}"'
            f' stroke-width="1.5"{dash}/>'
        )
        for r in rows:
            provisional = r["status"] == "provisional"
            parts.append(
                f'<circle class="point{" provisional" if provisional else ""}" data-key="{escape(key)}" '
                f'data-status="{escape(r["status"])}" cx="{scale.x(r["window_start"])}" cy="{y(r["value"])}" r="3" '
                f'stroke="{colour}" fill="{"#fff" if provisional else colour}"><title>{escape(key)} '
                f"{_when(r['window_start'])}: {_number(r['value'])} ({escape(r['status'])}, "
                f"{_number(r['denominator'], 0)} answers/base)</title></circle>"
            )
    return head + size + "".join(parts) + "</svg></figure>"


def not_found_page(ref: str) -> str:
    """The page for a reference that names no customer."""
    return _page(
        "Not found", f"<h1>No customer {escape(ref)}</h1><p>Try a customer id or an identifier type:value.</p>"
    )
