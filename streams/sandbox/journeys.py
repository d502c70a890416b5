"""Deterministic simulator of multi-channel customer journeys, emitted as raw source records.

It is the traffic of ``make run``, of the benchmark and of the tests. A population of persons, each with a
ground-truth person id, lives through journeys across the four source systems: browsing the web site
anonymously, logging in, buying on the site, in a store or on a marketplace, deliveries (some late), support
contacts about them (phone calls, repeat calls, switches to a web ticket), returns and surveys. Every record is
a JSON object in the source system's own format (see the ``_store_record``, ``_call``, ``_web_event`` and
``_marketplace_status`` builders), serialised as one line.

Identity linkage is by construction: every identifier a person shows is tied to the rest of that person's
identifiers by records that carry two of them, the way the journey would really do so (a web login carries the
anonymous id, the user id and the e-mail; a person's first till receipt carries the loyalty id with their
e-mail and phone; a marketplace order with a buyer e-mail ties the buyer id). :func:`ground_truth` returns,
per person, the identifiers that stitching is expected to join into one customer.

Output is streamed in arrival order: journeys are generated a day at a time and everything due to arrive
before the next day's midnight is released, so memory holds about a day of serialised records plus the
follow-ups scheduled for later days (and the population itself), whatever the run's length.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo

import orjson

#: Source channels, in the order files and reports list them.
CHANNELS: tuple[str, ...] = ("store", "phone", "web", "ecommerce")

#: Start of the simulated period when none is given: spans the UK and US daylight-saving changes of 2024,
#: so store timestamps carry more than one UTC offset.
DEFAULT_START = datetime(2024, 3, 4, tzinfo=UTC)

#: Placeholder e-mails cashiers type when a customer declines to give one. They are in the default
#: ``CXSTREAM_BLOCKED_IDENTIFIERS``, are shared by many persons and are never part of the ground truth.
PLACEHOLDER_EMAILS: tuple[str, ...] = ("noreply@example.com", "test@example.com")
#: Channels ``simulate(degrade=...)`` can make worse from halfway through the period: their survey answers lower,
#: their issues resolved less often (the marketplace has neither).
DEGRADABLE: tuple[str, ...] = ("store", "phone", "web")
#: How far a degraded channel lowers the answers' mood (about one CSAT point per 1.0).
DEGRADED_MOOD = 2.0

RecordKind = Literal["ok", "duplicate", "late", "malformed"]


class SimRecord(NamedTuple):
    """One line as a source system delivers it, with the simulator's knowledge about it."""

    channel: str
    arrival_ts: datetime
    raw: bytes
    person_id: str | None
    kind: RecordKind


_DAY = 86400.0
_UTC = UTC
_WEB_OPTIONS = orjson.OPT_UTC_Z  # Segment libraries send UTC with a Z suffix

_FIRST_NAMES = (
    "olivia", "amelia", "isla", "ava", "mia", "ivy", "lily", "sophia", "grace", "freya", "noah", "oliver",
    "george", "arthur", "leo", "muhammad", "harry", "oscar", "jack", "theo", "priya", "aisha", "mateo",
    "sofia", "liam", "emma", "lucas", "chloe", "ethan", "zara",
)  # fmt: skip
_LAST_NAMES = (
    "smith", "jones", "taylor", "brown", "williams", "wilson", "johnson", "davies", "patel", "wright",
    "robinson", "walker", "thompson", "white", "hughes", "edwards", "green", "hall", "wood", "harris",
    "khan", "lewis", "martin", "garcia", "nguyen", "kim", "clarke", "murphy", "singh", "evans",
)  # fmt: skip
_EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example", "inbox.example")
_PRODUCT_ADJECTIVES = ("classic", "organic", "wireless", "compact", "deluxe", "everyday", "travel", "smart")
_PRODUCT_NOUNS = ("kettle", "headphones", "backpack", "lamp", "blender", "jacket", "trainers", "mug", "desk")
_SEARCHES = ("gift for dad", "waterproof jacket", "kettle", "usb-c charger", "running shoes", "desk lamp")
_PAGES = (("/", "Home"), ("/sale", "Sale"), ("/new", "New in"), ("/stores", "Find a store"))
_REVIEWS = {
    1: "Arrived broken, very disappointed.",
    2: "Not as described.",
    3: "It's okay.",
    4: "Good product, would buy again.",
    5: "Excellent, exactly what I wanted!",
}
# Regions: phone country, currency, stores (id, time zone), marketplaces, and the hours to add to a local
# clock to get UTC (standard time; being an hour out in summer only shifts the daily pattern).
_REGIONS: dict[str, dict[str, Any]] = {
    "GB": {
        "currency": "GBP",
        "stores": ("LDN-001", "LDN-002", "MAN-001", "BHM-001", "EDI-001", "BRS-001", "LDS-001"),
        "tz": ZoneInfo("Europe/London"),
        "marketplaces": ("amazon", "ebay", "zalando"),
        "utc_shift": 0.0,
    },
    "US": {
        "currency": "USD",
        "stores": ("SFO-001", "SFO-002", "OAK-001", "SJC-001", "LAX-001"),
        "tz": ZoneInfo("America/Los_Angeles"),
        "marketplaces": ("amazon", "ebay", "etsy"),
        "utc_shift": 8.0,
    },
}
_US_AREA_CODES = (
    "415", "628", "650", "510", "408", "669", "925", "707", "209", "530", "559", "661", "805", "818", "213",
    "310", "323", "424", "562", "626", "714", "949", "909", "951", "760", "619", "858", "916", "279", "831",
    "206", "253", "425", "360", "503", "971", "541", "702", "775", "480",
)  # fmt: skip
_MAX_CUSTOMERS = 40 * 10_000  # the US numbers +1 AAA 555 xxxx give 400,000 distinct phones

# Persona: share of the population, chance of being active on a day after joining, first journey,
# and the journeys of later active days with their weights. Capabilities a person lacks drop journeys.
_PERSONAS: dict[str, tuple[float, float, str, tuple[tuple[str, float], ...]]] = {
    "omnichannel": (
        0.30,
        0.09,
        "ropo",
        (
            ("browse", 2.0),
            ("web_order", 1.5),
            ("store_sale", 3.0),
            ("ropo", 1.0),
            ("store_visit", 1.5),
            ("marketplace", 1.0),
            ("enquiry", 0.75),
            ("nps", 0.5),
        ),
    ),
    "online": (0.25, 0.08, "browse", (("browse", 3.0), ("web_order", 3.0), ("marketplace", 1.5), ("nps", 0.5))),
    "store": (0.15, 0.08, "store_sale", (("store_sale", 5.0), ("store_visit", 3.0), ("enquiry", 1.0))),
    "marketplace": (0.10, 0.07, "marketplace", (("marketplace", 1.0),)),
    "browser": (0.12, 0.05, "browse", (("browse", 9.0), ("nps", 1.0))),
    "caller": (0.08, 0.06, "enquiry", (("enquiry", 1.0),)),
}
_PERSONA_NAMES = tuple(_PERSONAS)
_PERSONA_CUM = tuple(accumulate(share for share, *_ in _PERSONAS.values()))


def _discard(ts: float, channel: str, payload: dict[str, Any], person: _Person) -> None:
    """A sink that drops records: :func:`ground_truth` needs only who showed which identifiers."""


def _money(cents: int) -> str:
    """Format integer cents as the string decimal the store and marketplace feeds use ("42.50")."""
    return f"{cents // 100}.{cents % 100:02d}"


def _permute(index: int, salt: int, modulus: int, multiplier: int) -> int:
    """Map index to a scrambled but collision-free number below modulus (multiplier is coprime to it)."""
    return (index * multiplier + salt) % modulus


def _base36(value: int, width: int) -> str:
    """Encode value in upper-case base 36, zero-padded to width (marketplace buyer ids look like this)."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = []
    for _ in range(width):
        value, rem = divmod(value, 36)
        out.append(digits[rem])
    return "".join(reversed(out))


@functools.cache  # a handful of distinct menus
def _menu(
    persona: str, web: bool, account: bool, loyalty: bool, buyer: bool, callable_: bool
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The journeys a person can go on later, with cumulative weights: capabilities they lack drop out."""
    able = {
        "browse": web,
        "nps": web,
        "web_order": account,
        "ropo": account,
        "store_sale": loyalty or persona == "store",
        "store_visit": loyalty,
        "marketplace": buyer,
        "enquiry": callable_,
    }
    usable = [(name, weight) for name, weight in _PERSONAS[persona][3] if able[name]]
    return tuple(name for name, _ in usable), tuple(accumulate(weight for _, weight in usable))


class _Person:
    """A simulated person: identifiers per channel, linkage state and the identifiers already shown."""

    __slots__ = (
        "active_days",
        "buyer_bridged",
        "buyer_email_share",
        "buyer_id",
        "callable",
        "crm_id",
        "currency",
        "devices",
        "email",
        "email_typed",
        "first_day",
        "identified",
        "journeys",
        "k_buyer",
        "k_crm",
        "k_devices",
        "k_email",
        "k_loyalty",
        "k_phone",
        "k_user",
        "loyalty_id",
        "marketplace",
        "person_id",
        "persona",
        "phone",
        "phone_till",
        "region",
        "seen",
        "sentiment",
        "sessions",
        "store_bridged",
        "stores",
        "user_id",
        "utc_shift",
        "weights",
    )

    active_days: list[int]
    buyer_bridged: bool
    buyer_email_share: float
    buyer_id: str | None
    callable: bool
    crm_id: str | None
    currency: str
    devices: list[str]
    email: str | None
    email_typed: str | None
    first_day: int
    identified: list[bool]
    journeys: tuple[str, ...]
    k_buyer: str
    k_crm: str
    k_devices: list[str]
    k_email: str
    k_loyalty: str
    k_phone: str
    k_user: str
    loyalty_id: str | None
    marketplace: str | None
    person_id: str
    persona: str
    phone: str | None
    phone_till: str | None
    region: str
    seen: set[str]
    sentiment: float
    sessions: int
    store_bridged: bool
    stores: tuple[str, ...]
    user_id: str | None
    utc_shift: float
    weights: tuple[float, ...]

    def __init__(self) -> None:
        self.seen = set()
        self.sessions = 0
        self.store_bridged = False
        self.buyer_bridged = False


class _World:
    """Generates the population's journeys day by day; knows nothing of arrival, duplicates or garbage."""

    def __init__(
        self,
        customers: int,
        days: int,
        seed: int,
        start: datetime,
        placeholder_rate: float,
        degrade: str | None = None,
        degrade_from: float | None = None,
    ) -> None:
        if not 1 <= customers <= _MAX_CUSTOMERS:
            raise ValueError(f"customers must be between 1 and {_MAX_CUSTOMERS}, got {customers}")
        if days < 1:
            raise ValueError(f"days must be at least 1, got {days}")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if not 0.0 <= placeholder_rate < 1.0:
            raise ValueError(f"placeholder_rate must be in [0, 1), got {placeholder_rate}")
        self.rng = random.Random(f"cxstream-journeys-{seed}")
        self.random = self.rng.random  # bound once: the hot paths call them per record
        self.getrandbits = self.rng.getrandbits
        self.salt = random.Random(f"cxstream-ids-{seed}").randrange(1 << 30)
        self.t0 = start.timestamp()
        self.days = days
        self.end = self.t0 + days * _DAY
        self.placeholder_rate = placeholder_rate
        if degrade is not None and degrade not in DEGRADABLE:
            raise ValueError(f"degrade must be one of {', '.join(DEGRADABLE)}, got {degrade!r}")
        self.degraded = degrade
        self.degraded_from = self.t0 + days * _DAY / 2 if degrade_from is None else degrade_from
        # Where records go as they are made: the delivery layer serialises each at once, so payload dicts
        # never pile up (a day of them kept alive made the garbage collector a visible cost).
        self.sink: Callable[[float, str, dict[str, Any], _Person], None] = _discard
        self.counters = dict.fromkeys(("receipt", "visit", "call", "web_order", "mp_order", "issue"), 0)
        catalog_rng = random.Random(f"cxstream-catalog-{seed}")
        self.catalog = [
            (
                f"SKU-{10000 + i}",
                f"{catalog_rng.choice(_PRODUCT_ADJECTIVES)} {catalog_rng.choice(_PRODUCT_NOUNS)}",
                int(min(29999, max(299, catalog_rng.lognormvariate(7.6, 0.8)))) // 10 * 10 + 9,
            )
            for i in range(400)
        ]
        self.persons = [self._new_person(i) for i in range(customers)]
        self.schedule: list[list[_Person]] = [[] for _ in range(days)]
        for person in self.persons:
            for day in person.active_days:
                self.schedule[day].append(person)

    # --- population ----------------------------------------------------------------------------------

    def _new_person(self, index: int) -> _Person:
        rng = self.rng
        p = _Person()
        p.person_id = f"person-{index:06d}"
        p.persona = _PERSONA_NAMES[bisect.bisect(_PERSONA_CUM, rng.random() * _PERSONA_CUM[-1])]
        activity = _PERSONAS[p.persona][1]
        p.region = "GB" if rng.random() < 0.75 else "US"
        region = _REGIONS[p.region]
        p.currency = region["currency"]
        p.utc_shift = region["utc_shift"]
        p.sentiment = rng.gauss(0.0, 1.0)
        home = self._pick(region["stores"])
        p.stores = (home, home, home, self._pick(region["stores"]))  # mostly the home store
        p.email = p.email_typed = p.phone = p.phone_till = p.loyalty_id = p.crm_id = p.user_id = None
        p.buyer_id = p.marketplace = None
        p.devices = []
        persona = p.persona
        wants_email = persona in ("omnichannel", "online") or (
            persona in ("store", "marketplace") and rng.random() < 0.75
        )
        wants_phone = (
            (persona == "omnichannel" and rng.random() < 0.85)
            or (persona == "store" and (rng.random() < 0.7 or not wants_email))
            or persona == "caller"
        )
        if wants_email:
            self._give_email(p, index)
        if wants_phone:
            self._give_phone(p, index)
        if persona in ("omnichannel", "store") and (persona == "omnichannel" or rng.random() < 0.8):
            p.loyalty_id = f"LOY{_permute(index, self.salt, 10**9, 104_729):09d}"
        if p.phone is not None and (persona == "omnichannel" or rng.random() < 0.7):
            p.crm_id = f"CRM-{_permute(index, self.salt, 10**8, 15_485_863):08d}"
        if persona in ("omnichannel", "online", "browser"):
            n_devices = 1 if persona == "browser" else self._pick((1, 1, 2, 2, 3))
            p.devices = [self._uuid() for _ in range(n_devices)]
            if persona != "browser":
                p.user_id = f"usr_{_permute(index, self.salt, 1 << 32, 2_654_435_761):08x}"
        if persona == "marketplace" or (persona in ("omnichannel", "online") and rng.random() < 0.35):
            p.marketplace = self._pick(region["marketplaces"])
            p.buyer_id = "A" + _base36(_permute(index, self.salt, 36**12, 0x9E3779B97F4A7C15), 12)
            # Marketplace-only buyers share their e-mail on some orders; the others on the first one at least.
            p.buyer_email_share = 0.5 if persona == "marketplace" else 0.3
        p.identified = [False] * len(p.devices)
        p.callable = p.phone is not None
        p.k_email = f"email:{p.email}" if p.email else ""
        p.k_phone = f"phone:{p.phone}" if p.phone else ""
        p.k_loyalty = f"loyalty_id:{p.loyalty_id}" if p.loyalty_id else ""
        p.k_crm = f"crm_id:{p.crm_id}" if p.crm_id else ""
        p.k_user = f"web_user_id:{p.user_id}" if p.user_id else ""
        p.k_devices = [f"web_anonymous_id:{d}" for d in p.devices]
        p.k_buyer = f"marketplace_buyer_id:{p.marketplace}:{p.buyer_id}" if p.buyer_id else ""
        p.journeys, p.weights = _menu(
            persona,
            bool(p.devices),
            p.user_id is not None,
            p.loyalty_id is not None,
            p.buyer_id is not None,
            p.callable,
        )
        # Persons join at some point of the first 40% of the period, then come back now and then.
        p.first_day = int(rng.random() * max(1, math.ceil(self.days * 0.4)))
        rate = min(0.9, activity * self._pick((0.5, 1.0, 1.0, 2.0)))
        days = [p.first_day]
        log_q = math.log(1.0 - rate)
        day = p.first_day
        while True:
            day += 1 + int(math.log(1.0 - rng.random()) / log_q)  # geometric gap between active days
            if day >= self.days:
                break
            days.append(day)
        p.active_days = days
        return p

    def _pick(self, options: tuple[Any, ...]) -> Any:
        """A uniformly random element (``random.choice`` is several times slower)."""
        return options[int(self.random() * len(options))]

    def _give_email(self, p: _Person, index: int) -> None:
        rng = self.rng
        first, last = self._pick(_FIRST_NAMES), self._pick(_LAST_NAMES)
        number = _permute(index, self.salt, 10**6, 6007)
        style = rng.randrange(3)
        local = (f"{first}.{last}{number}", f"{first[0]}{last}{number}", f"{first}_{last}{number}")[style]
        domain = self._pick(_EMAIL_DOMAINS)
        p.email = f"{local}@{domain}"
        # A quarter of people type their address capitalised; normalisation must fold it.
        p.email_typed = f"{local.title()}@{domain}" if rng.random() < 0.25 else p.email

    def _give_phone(self, p: _Person, index: int) -> None:
        if p.region == "GB":
            digits = f"{_permute(index, self.salt, 10**6, 7919):06d}"
            p.phone = f"+447700{digits}"
            # Tills store what the cashier typed: national or spaced international forms.
            p.phone_till = self._pick((f"07700 {digits}", f"+44 7700 {digits}", p.phone))
        else:
            slot = _permute(index, self.salt, _MAX_CUSTOMERS, 7919)
            area, line = _US_AREA_CODES[slot // 10_000], f"{slot % 10_000:04d}"
            p.phone = f"+1{area}555{line}"
            # Always international: a national US number would be read as British by the GB default region.
            p.phone_till = self._pick((f"+1 {area}-555-{line}", p.phone))

    def _uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        variant = "89ab"[int(h[16], 16) & 3]
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"  # a version 4 UUID

    def _next(self, counter: str) -> int:
        self.counters[counter] += 1
        return self.counters[counter]

    # --- emission ------------------------------------------------------------------------------------

    def _emit(self, p: _Person, ts: float, channel: str, payload: dict[str, Any], ids: Iterable[str]) -> None:
        p.seen.update(ids)
        self.sink(ts, channel, payload, p)

    def day(self, day: int) -> None:
        """Generate the journeys that start on ``day`` into the sink, their follow-ups on later days included."""
        for p in self.schedule[day]:
            if day == p.first_day:
                self._journey(p, day, _PERSONAS[p.persona][2])
            else:
                weights = p.weights
                self._journey(p, day, p.journeys[bisect.bisect(weights, self.random() * weights[-1])])

    def _local(self, p: _Person, day: int, earliest: float, latest: float) -> float:
        """A random moment of the person's local clock between two hours of the given day, as a UTC timestamp."""
        hour = self.rng.uniform(earliest, latest)
        return self.t0 + day * _DAY + (hour + p.utc_shift) * 3600.0

    def _journey(self, p: _Person, day: int, name: str) -> None:
        rng = self.rng
        if name == "browse":
            first_web_order = p.sessions == 0 and p.persona == "online" and rng.random() < 0.4
            ts = self._local(p, day, 7.0, 23.0)
            if first_web_order:
                self._web_order(p, ts)
            else:
                self._web_session(p, ts)
        elif name == "web_order":
            self._web_order(p, self._local(p, day, 7.0, 23.0))
        elif name == "ropo":
            # Research online, purchase offline: browse, then buy in store a few hours later.
            end = self._web_session(p, self._local(p, day, 7.0, 12.0))[0]
            self._store_sale(p, end + rng.uniform(1.0, 6.0) * 3600.0)
        elif name == "store_sale":
            self._store_sale(p, self._local(p, day, 9.0, 19.5))
        elif name == "store_visit":
            self._store_record(p, self._local(p, day, 9.0, 19.5), "visit")
        elif name == "marketplace":
            self._marketplace_order(p, self._local(p, day, 6.0, 23.5))
        elif name == "enquiry":
            self._enquiry(p, self._local(p, day, 8.0, 19.5))
        elif name == "nps":
            self._web_survey(p, self._local(p, day, 7.0, 23.0), mood=0.0, relationship=True)
        else:  # pragma: no cover - the persona tables only name the journeys above
            raise AssertionError(name)

    # --- web (Segment spec) --------------------------------------------------------------------------

    def _web_event(
        self,
        p: _Person,
        ts: float,
        dev: int,
        logged_in: bool,
        kind: str,
        event: str | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        # The hottest path of the simulator (most records are web events): kept free of helper calls.
        msg: dict[str, Any] = {
            "type": kind,
            "messageId": f"ajs-next-{self.getrandbits(128):032x}",
            "anonymousId": p.devices[dev],
        }
        if logged_in:
            msg["userId"] = p.user_id
            ids: tuple[str, ...] = (p.k_devices[dev], p.k_user)
        else:
            ids = (p.k_devices[dev],)
        msg["timestamp"] = datetime.fromtimestamp(ts, _UTC)
        if event is not None:
            msg["event"] = event
        if kind == "identify":
            msg["traits"] = {"email": p.email_typed}
            ids = (p.k_devices[dev], p.k_user, p.k_email)
        elif properties is not None:
            msg["properties"] = properties
        p.seen.update(ids)
        self.sink(ts, "web", msg, p)

    def _identify(self, p: _Person, ts: float, dev: int) -> None:
        """Log in on a device: the one record tying its anonymous id to the user id and the e-mail."""
        self._web_event(p, ts, dev, True, "identify")
        p.identified[dev] = True

    def _pick_device(self, p: _Person) -> int:
        p.sessions += 1
        return 0 if p.sessions == 1 else int(self.random() * len(p.devices))

    def _product(self) -> tuple[str, str, int]:
        # Skewed towards the first products of the catalogue: a few best sellers, a long tail.
        return self.catalog[int(len(self.catalog) * self.random() ** 3)]

    def _web_session(self, p: _Person, ts: float) -> tuple[float, int, bool]:
        """A browsing session; a registered person logs in during the first session on each device.

        Returns the time of the last event, the device and whether the session ended logged in.
        """
        rnd = self.random
        dev = self._pick_device(p)
        registered = p.user_id is not None
        logged_in = registered and p.identified[dev] and rnd() < 0.5
        steps = 1 + int(rnd() * 3)
        identify_at = int(rnd() * steps) if registered and not p.identified[dev] else -1
        page, title = _PAGES[int(rnd() * len(_PAGES))]
        self._web_event(p, ts, dev, logged_in, "page", None, {"path": page, "title": title})
        for step in range(steps):
            ts += 8.0 + 82.0 * rnd()
            if step == identify_at:
                self._identify(p, ts, dev)
                logged_in = True
                ts += 2.0 + 18.0 * rnd()
            r = rnd()
            if r < 0.3:
                props = {"query": _SEARCHES[int(rnd() * len(_SEARCHES))]}
                self._web_event(p, ts, dev, logged_in, "track", "Products Searched", props)
            elif r < 0.85:
                self._web_event(p, ts, dev, logged_in, "track", "Product Viewed", self._product_props(p))
            else:
                page, title = _PAGES[int(rnd() * len(_PAGES))]
                self._web_event(p, ts, dev, logged_in, "page", None, {"path": page, "title": title})
        if rnd() < 0.2:  # an abandoned cart
            ts += 5.0 + 55.0 * rnd()
            self._web_event(p, ts, dev, logged_in, "track", "Product Added", self._product_props(p, quantity=1))
        return ts, dev, logged_in

    def _product_props(self, p: _Person, quantity: int | None = None) -> dict[str, Any]:
        sku, name, cents = self._product()
        props: dict[str, Any] = {"product_id": sku, "sku": sku, "name": name, "price": cents / 100}
        if quantity is not None:
            props["quantity"] = quantity
        props["currency"] = p.currency
        return props

    def _basket(self) -> list[tuple[str, str, int, int]]:
        rnd = self.random
        return [(*self._product(), 1 if rnd() < 0.8 else 2) for _ in range((1, 1, 1, 2, 2, 3)[int(rnd() * 6)])]

    def _web_order(self, p: _Person, ts: float) -> None:
        """Browse, add to basket, log in if needed, check out; then maybe support, a refund, a survey."""
        rng = self.rng
        ts, dev, logged_in = self._web_session(p, ts)
        basket = self._basket()
        for sku, name, cents, qty in basket:
            ts += rng.uniform(5.0, 40.0)
            props = {"product_id": sku, "sku": sku, "name": name, "price": cents / 100, "quantity": qty}
            self._web_event(p, ts, dev, logged_in, "track", "Product Added", props)
        if not logged_in:
            ts += rng.uniform(5.0, 30.0)
            self._identify(p, ts, dev)  # checkout requires an account
            logged_in = True
        order_id = f"W{self._next('web_order'):08d}"
        total = sum(cents * qty for _, _, cents, qty in basket)
        products = [
            {"product_id": sku, "sku": sku, "name": name, "price": cents / 100, "quantity": qty}
            for sku, name, cents, qty in basket
        ]
        order = {"order_id": order_id, "revenue": total / 100, "currency": p.currency, "products": products}
        ts += rng.uniform(10.0, 60.0)
        self._web_event(p, ts, dev, True, "track", "Checkout Started", dict(order))
        ts += rng.uniform(30.0, 240.0)
        self._web_event(p, ts, dev, True, "track", "Order Completed", order)
        r = rng.random()
        if r < 0.08:
            refund_at = ts + rng.uniform(3.0, 12.0) * _DAY
            if rng.random() < 0.35:
                self._support(p, refund_at - rng.uniform(0.5, 2.0) * _DAY, "return_request", mood=-0.2)
            if refund_at < self.end:
                props = {"order_id": order_id, "total": total / 100, "currency": p.currency}
                self._web_event(p, refund_at, dev, True, "track", "Order Refunded", props)
        elif r < 0.26:
            reason = self._pick(("where_is_my_order", "damaged_item", "wrong_item"))
            self._support(p, ts + rng.uniform(2.0, 6.0) * _DAY, reason, mood=-0.4)
        elif r < 0.44:
            survey_at = ts + rng.uniform(1.0, 4.0) * _DAY
            if survey_at < self.end:
                self._web_survey(p, survey_at, mood=0.3, relationship=False)

    def _worse(self, channel: str, ts: float) -> float:
        """How much worse than usual the experience on ``channel`` is at ``ts``: ``DEGRADED_MOOD`` on the degraded
        channel from halfway through the period on, else 0."""
        return DEGRADED_MOOD if channel == self.degraded and ts >= self.degraded_from else 0.0

    def _web_survey(self, p: _Person, ts: float, mood: float, relationship: bool) -> None:
        """A survey answered on the web site (relationship NPS, or CSAT/CES after a purchase or a contact)."""
        rng = self.rng
        nps, csat, ces = self._scores(p, mood - self._worse("web", ts))
        if relationship:
            props: dict[str, Any] = {"survey_id": "relationship-nps", "nps": nps}
        else:
            props = {"survey_id": "transactional", "csat": csat}
            if rng.random() < 0.5:
                props["ces"] = ces
        registered = p.user_id is not None
        dev = rng.randrange(len(p.devices))
        if registered and not p.identified[dev]:
            dev = 0  # a link from the survey e-mail opens on a device the person already used
        self._web_event(p, ts, dev, registered, "track", "Survey Answered", props)

    def _scores(self, p: _Person, mood: float) -> tuple[int, int, int]:
        """NPS (0-10), CSAT (1-5) and CES (1-7) answers, driven by the person's disposition and the moment."""
        x = p.sentiment * 0.6 + mood + self.rng.gauss(0.0, 0.7)
        nps = min(10, max(0, round(7.6 + 2.0 * x)))
        csat = min(5, max(1, round(4.0 + 1.0 * x)))
        ces = min(7, max(1, round(5.3 + 1.3 * x)))
        return nps, csat, ces

    # --- store (POS) ---------------------------------------------------------------------------------

    def _store_record(
        self, p: _Person, ts: float, kind: str, basket: list[tuple[str, str, int, int]] | None = None
    ) -> None:
        """One till or door record; the person's first carries every identifier they give in store."""
        rng = self.rng
        store_id = self._pick(p.stores)
        rec: dict[str, Any]
        if kind == "visit":
            rec = {"visit_id": f"V-{store_id}-{self._next('visit'):08d}"}
        else:
            rec = {"receipt_id": f"{store_id}-{self._next('receipt'):08d}"}
        rec["store_id"] = store_id
        rec["occurred_at"] = datetime.fromtimestamp(int(ts), _REGIONS[p.region]["tz"])  # the till's local time
        rec["kind"] = kind
        ids: list[str] = []
        if p.loyalty_id is not None:
            rec["loyalty_id"] = p.loyalty_id
            ids.append(p.k_loyalty)
        bridge = not p.store_bridged
        if bridge or p.loyalty_id is None:
            # The first receipt (loyalty sign-up, or an e-receipt) records e-mail and phone together;
            # without a loyalty card every receipt needs one of them to find the customer.
            give_email = p.email is not None and (bridge or p.phone is None or rng.random() < 0.6)
            give_phone = p.phone is not None and (bridge or not give_email)
        else:
            r = rng.random()
            give_email = p.email is not None and r < 0.2
            give_phone = p.phone is not None and 0.2 <= r < 0.3
            if r > 1.0 - self.placeholder_rate:
                rec["email"] = self._pick(PLACEHOLDER_EMAILS)
        if give_email:
            rec["email"] = p.email_typed if rng.random() < 0.5 else p.email
            ids.append(p.k_email)
        if give_phone:
            rec["phone"] = p.phone_till
            ids.append(p.k_phone)
        if basket is not None:
            total = sum(cents * qty for _, _, cents, qty in basket)
            rec["total"] = _money(total)
            rec["currency"] = p.currency
            rec["items"] = [{"sku": sku, "qty": qty, "unit_price": _money(cents)} for sku, _, cents, qty in basket]
        if kind == "sale" and rng.random() < 0.15:
            rec["feedback"] = {"csat": self._scores(p, 0.3 - self._worse("store", ts))[1]}
        p.store_bridged = True
        self._emit(p, ts, "store", rec, ids)

    def _store_sale(self, p: _Person, ts: float) -> None:
        """A till sale; sometimes the goods come back later, sometimes a call about them."""
        rng = self.rng
        basket = self._basket()
        self._store_record(p, ts, "sale", basket)
        r = rng.random()
        if r < 0.06:
            back = ts + rng.uniform(1.0, 10.0) * _DAY
            if back < self.end:
                returned = [(*basket[0][:3], 1)]
                self._store_record(p, back, "return", returned)
        elif r < 0.14 and p.callable:
            self._support(p, ts + rng.uniform(1.0, 8.0) * _DAY, "product_fault", mood=-0.3)

    # --- phone (call centre) -------------------------------------------------------------------------

    def _call(
        self,
        p: _Person,
        ts: float,
        queue: str,
        reason: str,
        issue_id: str | None,
        resolved: bool,
        outbound: bool = False,
        transfers: int = 0,
        survey: dict[str, int] | None = None,
    ) -> float:
        """One call record, stamped with the call's start; returns when the call ended."""
        rng = self.rng
        wait = 0 if outbound else min(1800, int(rng.expovariate(1 / 75.0)))
        duration = rng.randint(60, 420) + 180 * transfers + (0 if resolved else rng.randint(0, 300))
        rec: dict[str, Any] = {
            "call_id": f"CALL-{self._next('call'):09d}",
            "occurred_at": datetime.fromtimestamp(int(ts), _UTC),
            "phone": p.phone,
        }
        ids: tuple[str, ...] = (p.k_phone,)
        if p.crm_id is not None and rng.random() < 0.9:  # the CRM does not always match the caller
            rec["crm_id"] = p.crm_id
            ids = (p.k_phone, p.k_crm)
        rec["direction"] = "outbound" if outbound else "inbound"
        rec["queue"] = queue
        rec["wait_seconds"] = wait
        rec["duration_seconds"] = duration
        rec["transfers"] = transfers
        rec["reason"] = reason
        if issue_id is not None:
            rec["issue_id"] = issue_id
        rec["resolved"] = resolved
        if survey is not None:
            rec["survey"] = survey
        self._emit(p, ts, "phone", rec, ids)
        return ts + wait + duration

    def _call_survey(self, p: _Person, ts: float, mood: float) -> dict[str, int]:
        """The post-call IVR survey: CSAT always, CES and NPS often."""
        rng = self.rng
        nps, csat, ces = self._scores(p, mood - self._worse("phone", ts))
        survey = {"csat": csat}
        if rng.random() < 0.7:
            survey["ces"] = ces
        if rng.random() < 0.5:
            survey["nps"] = nps
        return survey

    def _enquiry(self, p: _Person, ts: float) -> None:
        """A pre-purchase call: product, stock or opening hours questions, usually answered at once."""
        rng = self.rng
        survey = self._call_survey(p, ts, 0.3) if rng.random() < 0.1 else None
        reason = self._pick(("product_enquiry", "stock_check", "opening_hours"))
        self._call(
            p, ts, "sales", reason, None, rng.random() < (0.5 if self._worse("phone", ts) else 0.95), survey=survey
        )

    # --- support episodes ----------------------------------------------------------------------------

    def _support(self, p: _Person, ts: float, reason: str, mood: float) -> None:
        """An issue and its contacts: a first contact, repeats while unresolved, maybe a channel switch."""
        rng = self.rng
        if ts >= self.end:
            return
        can_call, can_web = p.callable, p.user_id is not None
        if not (can_call or can_web):
            return  # marketplace buyers take their problems to the marketplace
        issue_id = f"ISS-{self._next('issue'):08d}"
        channel = "phone" if can_call and (not can_web or rng.random() < 0.6) else "web"
        queue = {"return_request": "returns", "late_delivery": "delivery", "where_is_my_order": "delivery"}.get(
            reason, "support"
        )
        contacts = 0
        while True:
            contacts += 1
            # A degraded channel resolves fewer issues, and fewer at the first contact.
            worse = self._worse(channel, ts) > 0
            last = contacts == 3 or rng.random() < (0.65 if contacts == 1 else 0.6) - (0.35 if worse else 0.0)
            resolved = last and rng.random() < (0.5 if worse else 0.9)  # some issues stay open after the last contact
            outcome_mood = mood + (0.8 if resolved and contacts == 1 else -0.5 * contacts)
            if channel == "phone":
                transfers = rng.choices((0, 1, 2), (75, 20, 5))[0]
                outbound = contacts > 1 and rng.random() < 0.3  # the agent calls back
                survey = self._call_survey(p, ts, outcome_mood) if last and rng.random() < 0.45 else None
                end = self._call(p, ts, queue, reason, issue_id, resolved, outbound, transfers, survey)
            else:
                dev = self._logged_in_device(p)
                self._web_event(p, ts, dev, True, "page", properties={"path": "/help/contact", "title": "Contact us"})
                end = ts + rng.uniform(30.0, 300.0)
                props = {"issue_id": issue_id, "reason": reason}
                self._web_event(p, end, dev, True, "track", "Support Ticket Created", props)
                survey_at = end + rng.uniform(1.0, 24.0) * 3600.0
                if last and rng.random() < 0.35 and survey_at < self.end:
                    self._web_survey(p, survey_at, outcome_mood, relationship=False)
            if last:
                return
            ts = end + rng.uniform(0.3, 3.0) * _DAY
            if ts >= self.end:
                return
            if rng.random() < 0.4 and can_call and can_web:
                channel = "web" if channel == "phone" else "phone"  # a channel switch within one issue

    def _logged_in_device(self, p: _Person) -> int:
        """A device the person has already logged in on (the first one always is, after their first session)."""
        dev = self.rng.randrange(len(p.devices))
        return dev if p.identified[dev] else 0

    # --- marketplace ---------------------------------------------------------------------------------

    def _marketplace_order(self, p: _Person, ts: float) -> None:
        """An order's life on a marketplace: placed, shipped, delivered (maybe late), maybe returned."""
        rng = self.rng
        basket = self._basket()
        n = self._next("mp_order")
        order_id = (
            f"{200 + n % 800:03d}-{_permute(n, self.salt, 10**7, 7919):07d}-{_permute(n, 0, 10**7, 3_000_017):07d}"
        )
        email = None
        if p.email is not None and (not p.buyer_bridged or rng.random() < p.buyer_email_share):
            email = p.email  # the marketplace shares the buyer's e-mail with the first order at least
        order = (order_id, basket, email)
        self._marketplace_status(p, ts, order, "placed")
        if rng.random() < 0.04:
            self._marketplace_status(p, ts + rng.uniform(0.5, 20.0) * 3600.0, order, "cancelled")
            return
        shipped = ts + rng.uniform(0.3, 2.0) * _DAY
        self._marketplace_status(p, shipped, order, "shipped")
        late = rng.random() < 0.12
        delivered = shipped + rng.uniform(1.0, 3.0) * _DAY + (rng.uniform(2.0, 5.0) * _DAY if late else 0.0)
        if late and rng.random() < 0.6:
            self._support(p, shipped + rng.uniform(2.2, 3.0) * _DAY, "late_delivery", mood=-0.8)
        rating = None
        if rng.random() < 0.2:
            rating = min(5, max(1, self._scores(p, -0.8 if late else 0.2)[1]))
        self._marketplace_status(p, delivered, order, "delivered_late" if late else "delivered", rating)
        if not late and rng.random() < 0.06:
            self._support(p, delivered + rng.uniform(0.2, 3.0) * _DAY, "damaged_item", mood=-0.4)
        if rng.random() < (0.15 if late else 0.07):
            returned = delivered + rng.uniform(2.0, 10.0) * _DAY
            if rng.random() < 0.3:
                self._support(p, returned - 0.5 * _DAY, "return_request", mood=-0.3)
            self._marketplace_status(p, returned, order, "returned")

    def _marketplace_status(
        self,
        p: _Person,
        ts: float,
        order: tuple[str, list[tuple[str, str, int, int]], str | None],
        status: str,
        rating: int | None = None,
    ) -> None:
        """One marketplace feed record: the order as it stands after a status change.

        Status changes after the end of the period are not emitted; the order placement is part of the
        journey's own day and always is.
        """
        if ts >= self.end and status != "placed":
            return
        order_id, basket, email = order
        rec: dict[str, Any] = {"marketplace": p.marketplace, "order_id": order_id, "buyer_id": p.buyer_id}
        if email is not None:
            rec["buyer_email"] = email
            ids: tuple[str, ...] = (p.k_buyer, p.k_email)
            p.buyer_bridged = True
        else:
            ids = (p.k_buyer,)
        rec["occurred_at"] = datetime.fromtimestamp(int(ts), _UTC)
        rec["status"] = status
        rec["total"] = _money(sum(cents * qty for _, _, cents, qty in basket))
        rec["currency"] = p.currency
        rec["items"] = [{"sku": sku, "qty": qty, "unit_price": _money(cents)} for sku, _, cents, qty in basket]
        if rating is not None:
            rec["review"] = {"rating": rating, "text": _REVIEWS[rating]}
        self._emit(p, ts, "ecommerce", rec, ids)


# --- delivery: arrival times, duplicates, late records, garbage -------------------------------------------

_TIME_FIELD = {"store": "occurred_at", "phone": "occurred_at", "web": "timestamp", "ecommerce": "occurred_at"}
# Fields no reader of the format can do without; dropping one makes a record invalid, whatever the model.
_REQUIRED = {
    "store": ("store_id", "occurred_at", "kind"),
    "phone": ("call_id", "occurred_at", "phone"),
    "web": ("type", "messageId"),
    "ecommerce": ("order_id", "occurred_at", "status"),
}


def _corrupt(rng: random.Random, channel: str, payload: dict[str, Any], raw: bytes) -> bytes:
    """Realistic garbage made from a good record: each kind is something source systems really send."""
    how = rng.randrange(5)
    if how == 0:  # a writer died mid-line
        return raw[: rng.randrange(1, len(raw) - 1)]
    if how == 1:  # a Windows-1252 export: not UTF-8; the first value of every format is a string
        cut = raw.index(b'":"') + 3
        return raw[:cut] + b"Caf\xe9 " + raw[cut:]
    bad = dict(payload)
    if how == 2:  # a required field missing
        del bad[rng.choice(_REQUIRED[channel])]
    elif how == 3:  # wrong types
        if channel == "web" and "properties" in bad:
            bad["properties"] = orjson.dumps(bad["properties"]).decode()  # double-encoded JSON
        elif channel == "phone":
            bad["duration_seconds"] = f"{bad['duration_seconds'] // 60}m"
        elif "total" in bad:
            bad["total"] = bad["total"].replace(".", ",")  # a European decimal comma
        else:
            first = next(iter(bad))
            bad[first] = [bad[first]]  # an id as a list
    else:  # a timestamp without its zone
        field = _TIME_FIELD[channel]
        bad[field] = bad[field].replace(tzinfo=None)
    return orjson.dumps(bad, option=_WEB_OPTIONS if channel == "web" else 0)


def _arrival(rng: random.Random, t0: float, ts: float, channel: str, payload: dict[str, Any]) -> float:
    """When a store, phone or marketplace record reaches the pipeline in the normal course of things.

    (Web events arrive within two seconds, the collector's batching; that case is inlined in the hot loop.)
    """
    if channel == "store":
        return ts + 5.0 + rng.random() * 895.0  # tills upload every quarter of an hour
    if channel == "phone":
        # The call record is written when the call ends.
        return ts + payload["wait_seconds"] + payload["duration_seconds"] + 1.0 + rng.random() * 59.0
    return t0 + (math.floor((ts - t0) / 900.0) + 1.0) * 900.0 + rng.random() * 60.0  # the feed is polled


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def simulate(
    customers: int = 1000,
    days: int = 30,
    seed: int = 0,
    start: datetime | None = None,
    duplicate_rate: float = 0.02,
    late_rate: float = 0.02,
    malformed_rate: float = 0.0,
    max_late: timedelta = timedelta(hours=6),
    placeholder_rate: float = 0.005,
    degrade: str | None = None,
    warmup_days: int = 0,
) -> Iterator[SimRecord]:
    """Yield the simulated records of ``customers`` persons over ``days`` days, in arrival order.

    Journeys start within ``[start, start + days)``; their follow-ups (deliveries, calls, returns) are cut at
    the end of the period. The same arguments always give the same records, byte for byte.

    Rates are fractions of the good records: ``late_rate`` of them arrive between ``max_late / 6`` and
    ``max_late`` after they occurred (keep ``max_late`` under the allowed lateness); ``duplicate_rate`` of
    them are sent again, the same bytes, up to an hour after the first copy; ``malformed_rate`` of them are
    accompanied by a garbled copy (``person_id`` None). Duplicates and garbage are extra lines: the good
    records, and with them the ground truth, do not depend on the rates, and ``malformed_rate`` only adds
    lines to a run with the same other arguments. ``placeholder_rate`` of repeat till receipts carry a
    placeholder e-mail (:data:`PLACEHOLDER_EMAILS`) that stitching must not use. ``degrade`` names a channel
    (:data:`DEGRADABLE`) whose experience gets worse from halfway through the period: lower survey answers, fewer
    issues resolved (at the first contact especially), as a test of alerts on the whole.

    ``warmup_days``: the journeys start that many days before ``start`` and only what occurs from ``start`` on
    is sent, as a business already running when tracking begins. Without it everyone's journey begins with the
    period: for about 12 days contacts shift from enquiries to issues after purchases (first-contact resolution
    falls from ~100% to ~55%, repeat contacts rise from 0 to ~20%), a trend a baseline rightly reports. The
    ``customers`` are then spread over ``warmup_days + days``.

    Arguments are checked at once (ValueError); records are generated lazily as the iterator is consumed.
    """
    for name, value in (
        ("duplicate_rate", duplicate_rate),
        ("late_rate", late_rate),
        ("malformed_rate", malformed_rate),
    ):
        _check_rate(name, value)
    if max_late <= timedelta(0):
        raise ValueError(f"max_late must be positive, got {max_late}")
    if warmup_days < 0:
        raise ValueError(f"warmup_days must be at least 0, got {warmup_days}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    start = start or DEFAULT_START
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    begin = start.timestamp()
    world = _World(
        customers,
        days + warmup_days,
        seed,
        datetime.fromtimestamp(begin - warmup_days * _DAY, _UTC),
        placeholder_rate,
        degrade,
        begin + days * _DAY / 2,
    )
    return _stream(world, seed, duplicate_rate, late_rate, malformed_rate, max_late.total_seconds(), begin)


def _stream(
    world: _World,
    seed: int,
    duplicate_rate: float,
    late_rate: float,
    malformed_rate: float,
    max_late: float,
    begin: float,
) -> Iterator[SimRecord]:
    # Streams of their own: rates never change the journeys, and garbage never changes the other deliveries.
    rng = random.Random(f"cxstream-delivery-{seed}")
    random_ = rng.random
    garbage_rng = random.Random(f"cxstream-garbage-{seed}")
    dumps = orjson.dumps
    fromtimestamp = datetime.fromtimestamp
    new_record = tuple.__new__  # SimRecord's own __new__ is Python code, this is not
    t0 = world.t0
    # Records not yet delivered: (arrival, channel, raw, person id, kind). Sorting a day at a time by arrival
    # with a stable sort is cheaper than a heap, and keeps ties in generation order, hence deterministic.
    pending: list[tuple[float, str, bytes, str | None, RecordKind]] = []
    add = pending.append

    def deliver(ts: float, channel: str, payload: dict[str, Any], person: _Person) -> None:
        if ts < begin:
            return  # the warm-up's: before tracking began
        # orjson's result keeps its 4 KiB working buffer; a right-sized copy makes a held record cost its length.
        raw = memoryview(dumps(payload, option=_WEB_OPTIONS if channel == "web" else 0)).tobytes()
        pid = person.person_id
        if random_() < late_rate:
            arrival = ts + max_late * (1.0 + 5.0 * random_()) / 6.0
            add((arrival, channel, raw, pid, "late"))
        else:
            arrival = ts + 0.05 + random_() * 2.0 if channel == "web" else _arrival(rng, t0, ts, channel, payload)
            add((arrival, channel, raw, pid, "ok"))
        if duplicate_rate and random_() < duplicate_rate:
            add((arrival + 1.0 + random_() * 3599.0, channel, raw, pid, "duplicate"))
        if malformed_rate and garbage_rng.random() < malformed_rate:
            garbage = _corrupt(garbage_rng, channel, payload, raw)
            add((arrival + garbage_rng.random() * 5.0, channel, garbage, None, "malformed"))

    world.sink = deliver
    by_arrival = itemgetter(0)
    for day in range(world.days + 1):
        if day < world.days:
            world.day(day)
            # Every journey of a later day starts at or after that day's midnight: what arrives before is final.
            cutoff = t0 + (day + 1) * _DAY
        else:
            cutoff = math.inf
        pending.sort(key=by_arrival)
        ready = bisect.bisect_left(pending, cutoff, key=by_arrival)
        for arrival, channel, raw, pid, kind in pending[:ready]:
            yield new_record(SimRecord, (channel, fromtimestamp(arrival, _UTC), raw, pid, kind))
        del pending[:ready]


def ground_truth(
    customers: int,
    seed: int,
    days: int = 30,
    start: datetime | None = None,
    placeholder_rate: float = 0.005,
) -> dict[str, frozenset[str]]:
    """Map each person id to the identifier keys (``type:value``, normalised) stitching should join into one customer.

    Takes the journey arguments of :func:`simulate` (delivery rates do not change journeys). Keys are
    normalised as ``streams.domain.identifiers.normalise_identifier`` does: lower-case e-mail, E.164 phone,
    ``marketplace_buyer_id:<marketplace>:<buyer_id>``, web ids as sent. Placeholder e-mails are left out.
    """
    world = _World(customers, days, seed, start or DEFAULT_START, placeholder_rate)
    for day in range(days):
        world.day(day)
    return {p.person_id: frozenset(p.seen) for p in world.persons}


def write_files(records: Iterable[SimRecord], out_dir: Path | str) -> dict[str, Path]:
    """Write each channel's records to ``<out_dir>/<channel>.jsonl``, one per line in arrival order.

    Every channel gets a file, empty if it had no records. Returns the path of each channel's file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {channel: out / f"{channel}.jsonl" for channel in CHANNELS}
    files = {channel: path.open("wb") for channel, path in paths.items()}
    try:
        for record in records:
            files[record.channel].write(record.raw + b"\n")
    finally:
        for handle in files.values():
            handle.close()
    return paths
