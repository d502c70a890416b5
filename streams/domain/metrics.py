"""Experience metrics as data: each metric is a formula over additive counters, so windows merge by addition.

Every figure is kept as integer-valued counters (``Counters``). Money is counted in ten-thousandths of the
currency unit and durations in milliseconds, so every counter holds an integer and sums are exact in any
order: a batch split, a crash and replay, or two workers adding into the same cell give bit-identical results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from schemas.outputs import MetricScope, Stage
from schemas.touchpoint import Channel, EventType
from streams.domain.entry import Entry

#: Additive counters of one window cell: counter name -> integer-valued count or sum.
Counters = dict[str, float]

#: Fixed-point factors: revenue is counted in 1/10,000 of the currency unit, durations in milliseconds.
MONEY_UNITS = 10_000
MS_PER_S = 1_000

#: Touchpoint types counted as visits: a store visit, or a web page view (the web's unit of a visit; there is
#: no sessionisation).
VISIT_TYPES: frozenset[EventType] = frozenset({EventType.STORE_VISIT, EventType.PAGE_VIEW})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Enum members as module constants: looking a member up on its class costs more than the comparison.
_PURCHASE = EventType.PURCHASE
_RETURN = EventType.RETURN
_POST_PURCHASE = Stage.POST_PURCHASE
_MICROSECOND = timedelta(microseconds=1)


def channel_counter(channel: Channel | str) -> str:
    """Name of the counter of touchpoints on one channel (the numerator of its channel mix)."""
    return f"touchpoints_{channel}"


#: Every counter, with what one timeline entry adds to it. The README table is generated from this.
COUNTERS: dict[str, str] = {
    "touchpoints": "1 per timeline entry",
    **{channel_counter(c): f"1 per timeline entry on channel `{c}`" for c in Channel},
    "nps_answers": "1 per entry with a survey NPS answer (0-10)",
    "nps_promoters": "1 per NPS answer of 9 or 10",
    "nps_passives": "1 per NPS answer of 7 or 8",
    "nps_detractors": "1 per NPS answer of 0 to 6",
    "csat_answers": "1 per entry with a survey CSAT answer (1-5)",
    "csat_satisfied": "1 per CSAT answer of 4 or 5",
    "ces_answers": "1 per entry with a survey CES answer (1-7)",
    "ces_sum": "the CES answer",
    "contacts": "1 per entry with `is_contact`",
    "repeat_contacts": "1 per contact with `repeat_contact`",
    "issues": "1 per contact with `contact_number == 1` (an issue's first contact)",
    "issues_resolved_first_contact": "1 per issue's first contact with `resolved is True`",
    "issues_confirmed_first_contact": (
        "1 per issue's first contact with `resolved is True` and `resolution_contradicted` false"
    ),
    "channel_switches": "1 per contact with `channel_switch`",
    "transfers": "`transfers` of each contact",
    "post_purchase_contacts": "1 per contact in stage `post_purchase`",
    "resolutions": "1 per entry with `time_to_resolution_s`",
    "resolution_ms": "`time_to_resolution_s` in milliseconds (rounded)",
    "contradicted_resolutions": "1 per entry with `resolution_contradicted`",
    "visits": "1 per entry of type `store_visit` or `page_view`",
    "purchases": "1 per entry of type `purchase`",
    "priced_purchases": "1 per purchase with an `amount`",
    "revenue_4dp": "`amount` of each purchase in 1/10,000 of the currency unit (rounded half-even)",
    "purchasers": (
        "1 per purchase that is the customer's first in the cell's window: `time_since_last_purchase_s` is "
        "None or reaches back before the window start (customer and overall scopes only)"
    ),
    "purchase_gaps": "1 per purchase with `time_since_last_purchase_s`",
    "purchase_gap_ms": "`time_since_last_purchase_s` of each purchase in milliseconds (rounded)",
    "returns": "1 per entry of type `return`",
}

#: Counters whose contribution depends on the window, not only on the entry (they do not roll up from
#: smaller windows into bigger ones, only add across batches of the same window cell).
WINDOW_DEPENDENT_COUNTERS: frozenset[str] = frozenset({"purchasers"})

ALL_SCOPES: frozenset[MetricScope] = frozenset(MetricScope)
_NO_CHANNEL: frozenset[MetricScope] = frozenset({MetricScope.CUSTOMER, MetricScope.OVERALL})


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric as data: ``value = factor * (sum of coef * counter) / units / denominator``.

    ``basis`` counts the entries the metric is over: every entry version that changes the metric's numerator
    or denominator moves it by one, added or withdrawn, which is what ``revision_of`` counts.
    """

    name: str
    unit: str
    scale: str
    formula: str
    description: str
    numerator: tuple[tuple[str, int], ...]
    denominator: str | None
    basis: str
    factor: float = 1.0
    units: int = 1
    scopes: frozenset[MetricScope] = ALL_SCOPES

    @property
    def counters(self) -> tuple[str, ...]:
        """Every counter the metric reads (basis included)."""
        names = [name for name, _ in self.numerator]
        if self.denominator is not None:
            names.append(self.denominator)
        names.append(self.basis)
        return tuple(dict.fromkeys(names))


def _count(name: str, counter: str, description: str) -> Metric:
    return Metric(name, "count", ">= 0", f"`{counter}`", description, ((counter, 1),), None, counter)


def _per_contact(name: str, counter: str, description: str) -> Metric:
    return Metric(
        name, "per contact", ">= 0", f"`{counter}` / `contacts`", description, ((counter, 1),), "contacts", "contacts"
    )


def _rate(name: str, num: str, den: str, description: str, scopes: frozenset[MetricScope] = ALL_SCOPES) -> Metric:
    return Metric(
        name, "%", "0 to 100", f"100 * `{num}` / `{den}`", description, ((num, 1),), den, den, 100.0, 1, scopes
    )


_METRICS: tuple[Metric, ...] = (
    Metric(
        "nps",
        "score",
        "-100 to 100",
        "100 * (`nps_promoters` - `nps_detractors`) / `nps_answers`",
        "Net Promoter Score of 0-10 answers: promoters 9-10, passives 7-8, detractors 0-6.",
        (("nps_promoters", 1), ("nps_detractors", -1)),
        "nps_answers",
        "nps_answers",
        factor=100.0,
    ),
    _rate("csat", "csat_satisfied", "csat_answers", "Customer satisfaction: share of 1-5 answers that are 4 or 5."),
    Metric(
        "ces",
        "score",
        "1 to 7",
        "`ces_sum` / `ces_answers`",
        'Customer effort: mean agreement (1-7) with "the company made it easy"; higher is easier.',
        (("ces_sum", 1),),
        "ces_answers",
        "ces_answers",
    ),
    _rate(
        "fcr",
        "issues_resolved_first_contact",
        "issues",
        "First-contact resolution: issues whose first contact resolved them / issues with a first contact "
        "in the window, across all channels.",
    ),
    _rate(
        "recorded_fcr",
        "issues_resolved_first_contact",
        "issues",
        "First-contact resolution as the company recorded it (the same figure as `fcr`), beside `confirmed_fcr`.",
    ),
    _rate(
        "confirmed_fcr",
        "issues_confirmed_first_contact",
        "issues",
        "First-contact resolution the customer confirmed: issues whose first contact resolved them and was not "
        "contradicted (no contact about the same issue, and no low survey answer, within the contradiction "
        "window) / issues with a first contact in the window.",
    ),
    _rate(
        "experience_gap",
        "contradicted_resolutions",
        "resolutions",
        "Resolutions the company recorded that the customer contradicted / resolutions recorded: the gap between "
        "what the company records and what the customer lives.",
    ),
    _rate(
        "repeat_contact_rate",
        "repeat_contacts",
        "contacts",
        "Contacts about an issue that already had a contact within the repeat-contact window / all contacts.",
    ),
    _count("contacts", "contacts", "Service and support contacts."),
    _count("channel_switches", "channel_switches", "Contacts on another channel than the issue's previous one."),
    _per_contact("channel_switches_per_contact", "channel_switches", "Channel switches per service contact."),
    Metric(
        "transfers",
        "count",
        ">= 0",
        "`transfers`",
        "Transfers between agents or queues during contacts.",
        (("transfers", 1),),
        None,
        "contacts",
    ),
    _per_contact("transfers_per_contact", "transfers", "Mean transfers per service contact."),
    _count("touchpoints", "touchpoints", "Timeline entries (every touchpoint)."),
    _count("visits", "visits", "Store visits and web page views."),
    _count("purchases", "purchases", "Purchases (orders, POS sales)."),
    Metric(
        "revenue",
        "currency",
        "any",
        "`revenue_4dp` / 10000",
        "Sum of purchase amounts (one currency assumed; amounts are not converted).",
        (("revenue_4dp", 1),),
        None,
        "priced_purchases",
        units=MONEY_UNITS,
    ),
    Metric(
        "purchase_frequency",
        "per customer",
        ">= 1",
        "`purchases` / `purchasers`",
        "Purchases per purchasing customer in the window (customer and overall scopes).",
        (("purchases", 1),),
        "purchasers",
        "purchases",
        scopes=_NO_CHANNEL,
    ),
    Metric(
        "average_order_value",
        "currency",
        "any",
        "`revenue_4dp` / 10000 / `priced_purchases`",
        "Mean amount of purchases that carry an amount.",
        (("revenue_4dp", 1),),
        "priced_purchases",
        "priced_purchases",
        units=MONEY_UNITS,
    ),
    *(
        _rate(
            f"channel_mix_{c}",
            channel_counter(c),
            "touchpoints",
            f"Share of touchpoints on channel `{c}`.",
            frozenset({MetricScope.OVERALL}),
        )
        for c in Channel
    ),
    Metric(
        "time_between_purchases",
        "seconds",
        ">= 0",
        "`purchase_gap_ms` / 1000 / `purchase_gaps`",
        "Mean time from a customer's previous purchase to a purchase.",
        (("purchase_gap_ms", 1),),
        "purchase_gaps",
        "purchase_gaps",
        units=MS_PER_S,
    ),
    _count("post_purchase_contacts", "post_purchase_contacts", "Service contacts in the post-purchase stage."),
    _count("returns", "returns", "Returns."),
    Metric(
        "time_to_resolution",
        "seconds",
        ">= 0",
        "`resolution_ms` / 1000 / `resolutions`",
        "Mean time from an issue's first contact to its resolution.",
        (("resolution_ms", 1),),
        "resolutions",
        "resolutions",
        units=MS_PER_S,
    ),
)

#: The metric registry: name -> definition, in publication order.
METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}

#: Basis counter -> the counter of entry versions withdrawn from it (see ``retraction``).
RETRACTED: dict[str, str] = {basis: f"{basis}_retracted" for basis in dict.fromkeys(m.basis for m in _METRICS)}

#: Rolling windows as of now, by name: how many daily cells (today's included) each sums.
ROLLING_WINDOWS: dict[str, int] = {"last_7d": 7, "last_30d": 30}
#: Scopes with rolling figures: channel and overall (a customer's cells are most of the table, and customers keep
#: no daily window by default; summing them on every read of the view would double its cost).
ROLLING_SCOPES: frozenset[MetricScope] = frozenset({MetricScope.CHANNEL, MetricScope.OVERALL})
#: The window of the cells rolling figures are summed from.
ROLLING_SOURCE_WINDOW = "1d"
#: Metrics that have rolling figures: those whose counters add up across days (not purchase frequency, whose
#: purchasers are counted per window).
ROLLING_METRICS: frozenset[str] = frozenset(m.name for m in _METRICS if not set(m.counters) & WINDOW_DEPENDENT_COUNTERS)

#: Metrics published for each scope, in registry order.
METRICS_BY_SCOPE: dict[MetricScope, tuple[Metric, ...]] = {
    scope: tuple(m for m in _METRICS if scope in m.scopes) for scope in MetricScope
}


def value_of(metric: Metric | str, counters: Mapping[str, float]) -> tuple[float, float, float | None]:
    """Return ``(numerator, denominator, value)`` of a metric over counters; value is None when denominator is 0.

    The numerator is in the metric's own unit (currency, seconds); count metrics have denominator 1.
    """
    m = METRICS[metric] if isinstance(metric, str) else metric
    numerator = 0.0
    for name, coef in m.numerator:
        numerator += coef * counters.get(name, 0)
    if m.units != 1:
        numerator /= m.units
    denominator = 1.0 if m.denominator is None else float(counters.get(m.denominator, 0))
    if denominator == 0:
        return numerator, denominator, None
    return numerator, denominator, m.factor * numerator / denominator


def revision_of(metric: Metric, counters: Mapping[str, float]) -> int:
    """The revision of a metric's figure: how many entry versions were added to or withdrawn from its basis.

    Without withdrawals this is the basis count itself; each withdrawal takes one from the basis and adds
    one to its ``_retracted`` counter, so basis + 2 * retracted counts both operations and never decreases.
    """
    basis = metric.basis
    return int(counters.get(basis, 0) + 2 * counters.get(RETRACTED[basis], 0))


def merge(into: Counters, other: Mapping[str, float]) -> Counters:
    """Add ``other`` into ``into`` (in place) and return it: how windows, batches and merged customers combine."""
    for name, count in other.items():
        into[name] = into.get(name, 0) + count
    return into


def _ms(seconds: float) -> int:
    return round(seconds * MS_PER_S)


def _money(amount: Decimal) -> int:
    return int((amount * MONEY_UNITS).to_integral_value())


def _put(counters: Counters, name: str, amount: int) -> None:
    # A zero sum is left out like a zero count, so stored counters never hold zeros (equal cells compare equal).
    if amount:
        counters[name] = amount


def contributions(entry: Entry) -> Counters:
    """The window-independent counters one timeline entry adds to every cell it falls in (zeros left out)."""
    out: Counters = {"touchpoints": 1, channel_counter(entry.channel): 1}
    survey = entry.survey
    if survey is not None:
        if survey.nps is not None:
            out["nps_answers"] = 1
            kind = "nps_promoters" if survey.nps >= 9 else "nps_passives" if survey.nps >= 7 else "nps_detractors"
            out[kind] = 1
        if survey.csat is not None:
            out["csat_answers"] = 1
            if survey.csat >= 4:
                out["csat_satisfied"] = 1
        if survey.ces is not None:
            out["ces_answers"] = 1
            out["ces_sum"] = survey.ces
    if entry.is_contact:
        out["contacts"] = 1
        if entry.repeat_contact:
            out["repeat_contacts"] = 1
        if entry.contact_number == 1:
            out["issues"] = 1
            if entry.resolved is True:
                out["issues_resolved_first_contact"] = 1
                if entry.resolution_contradicted is False:
                    out["issues_confirmed_first_contact"] = 1
        if entry.channel_switch:
            out["channel_switches"] = 1
        if entry.transfers:
            out["transfers"] = entry.transfers
        if entry.stage is _POST_PURCHASE:
            out["post_purchase_contacts"] = 1
    if entry.time_to_resolution_s is not None:
        out["resolutions"] = 1
        if entry.resolution_contradicted:
            out["contradicted_resolutions"] = 1
        _put(out, "resolution_ms", _ms(entry.time_to_resolution_s))
    etype = entry.type
    if etype is _PURCHASE:
        out["purchases"] = 1
        if entry.amount is not None:
            out["priced_purchases"] = 1
            _put(out, "revenue_4dp", _money(entry.amount))
        if entry.time_since_last_purchase_s is not None:
            out["purchase_gaps"] = 1
            _put(out, "purchase_gap_ms", _ms(entry.time_since_last_purchase_s))
    elif etype in VISIT_TYPES:
        out["visits"] = 1
    elif etype is _RETURN:
        out["returns"] = 1
    return out


def retraction(counters: Mapping[str, float]) -> Counters:
    """What withdrawing an entry version takes away: its counters negated, and a count per basis it was in."""
    out: Counters = {name: -count for name, count in counters.items()}
    for basis, retracted in RETRACTED.items():
        if counters.get(basis):
            out[retracted] = 1
    return out


def _epoch_us(ts: datetime) -> int:
    """Exact microseconds since the Unix epoch (no float rounding)."""
    return (ts - _EPOCH) // _MICROSECOND


def first_purchase_in_window(entry: Entry, window_start_us: int) -> bool:
    """True when a purchase entry is the customer's first purchase in a window starting at ``window_start_us``.

    Decided from the entry alone: its previous purchase (``time_since_last_purchase_s`` back) lies before the
    window start, or it has none. A late earlier purchase changes the next one's gap; the stitcher re-emits
    that entry, and withdrawing its old version keeps the count exact.
    """
    if entry.type is not _PURCHASE:
        return False
    gap = entry.time_since_last_purchase_s
    if gap is None:
        return True
    return _epoch_us(entry.occurred_at) - round(gap * 1_000_000) < window_start_us


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def metrics_markdown() -> str:
    """The metric and counter tables of the README, generated from the registry."""
    scope_names = [s.value for s in MetricScope]
    lines = [
        "| metric | unit | scale | formula | revision (basis) | scopes | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in _METRICS:
        scopes = ", ".join(s for s in scope_names if MetricScope(s) in m.scopes)
        lines.append(
            f"| `{m.name}` | {m.unit} | {m.scale} | {_md_escape(m.formula)} | `{m.basis}` | {scopes} "
            f"| {_md_escape(m.description)} |"
        )
    lines += ["", "| counter | what one timeline entry adds |", "|---|---|"]
    lines += [f"| `{name}` | {_md_escape(text)} |" for name, text in COUNTERS.items()]
    bases = ", ".join(f"`{basis}`" for basis in RETRACTED)
    lines.append(
        f"| `<basis>_retracted`, for each basis ({bases}) | 1 per withdrawn entry version (a re-emitted entry's "
        "replaced version) that counted in the basis: revision = basis + 2 * retracted |"
    )
    return "\n".join(lines) + "\n"
