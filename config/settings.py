"""The one settings object of cxstream, read from ``CXSTREAM_*`` environment variables."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import pydantic_settings
from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.outputs import ENGAGEMENT_WEIGHTS, WatchedMetric
from schemas.touchpoint import CUSTOM_TYPE_PATTERN, IdentifierName, IdentifierType
from schemas.windows import window_seconds

ENV_PREFIX = "CXSTREAM_"
#: The collector's default write key: public (it is in this README), for the embedded default on loopback only.
DEV_WRITE_KEY = "dev-write-key"
_TOPIC_CHARS = re.compile(r"[a-zA-Z0-9._-]*")


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the environment variable."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every tunable of cxstream. Each field is set by the environment variable ``CXSTREAM_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- connections -------------------------------------------------------------------------
    kafka_url: str = Field(
        "kafka://127.0.0.1:9092",
        description="Kafka bootstrap URL(s), kafka://host:port[,host:port]. The embedded broker listens on its port.",
    )
    database_url: str = Field(
        "sqlite:///cxstream.db",
        description="SQLAlchemy URL of the results database: sqlite:///FILE or postgresql+psycopg://user@host/db.",
    )
    topic_prefix: str = Field("cx.", description="Prefix of every topic name.")
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of the topics cxstream creates.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of the topics cxstream creates.")
    web_port: int = Field(6066, ge=1, le=65535, description="The worker's HTTP port (/metrics, collector).")
    web_host: str = Field("127.0.0.1", description="Address the worker's HTTP server binds to.")
    web_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="An HTTP client has this long to send a request's headers (from connecting or from its previous answer; an idle connection is closed then) and as long again for its body (else 408), seconds.",
    )
    data_dir: Path = Field(Path("var"), description="Directory for the worker's local data (one per worker).")
    worker_id: str = Field(
        "worker-1",
        description="Name of this worker in logs and in Prometheus labels; unique per running worker of a group (its outputs' transactional id): a worker started with an id in use waits for it.",
    )
    app_id: str = Field("cxstream", description="Faust application id: the consumer group of the workers.")

    output_transactions: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Publish each committed batch's downstream records in one Kafka transaction, so a read_committed consumer sees each exactly once even across worker crashes: on, off (at least once), or auto (on when the broker grants a transactional producer, as Apache Kafka does; off on the embedded broker).",
    )

    # --- consumer-group timings (see README: the embedded broker joins after ~half the session) ----
    broker_session_timeout: float = Field(6.0, gt=0, description="Consumer session timeout, seconds.")
    broker_heartbeat_interval: float = Field(2.0, gt=0, description="Consumer heartbeat interval, seconds.")
    broker_max_poll_interval: float = Field(300.0, gt=0, description="Max seconds between polls before eviction.")
    broker_fetch_max_wait: float = Field(
        0.1,
        gt=0,
        le=30,
        description="Most seconds a consumer fetch waits at the broker for records (Faust fixes 1.5; see README).",
    )

    # --- processing ----------------------------------------------------------------------------
    batch_max_events: int = Field(
        5000, ge=1, description="Most events the worker applies in one transaction while it keeps up with its input."
    )
    batch_max_events_behind: int = Field(
        20_000,
        ge=1,
        description="Most events in one transaction while the worker is behind (CXSTREAM_BATCH_BEHIND_S): a bigger batch costs less CPU per event and more memory (README, Scaling); not below CXSTREAM_BATCH_MAX_EVENTS.",
    )
    batch_behind_s: float = Field(
        10.0,
        gt=0,
        description="The worker is behind while the input records waiting for it would take longer than this to apply, seconds (estimated from its recent batches).",
    )
    stream_buffer_records: int = Field(
        500,
        ge=1,
        description="Input records the worker buffers ahead of its batches (and takes at once); with envelopes each holds many events.",
    )
    max_record_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest channel-topic record the worker decodes, bytes; a larger one is dead-lettered record_too_large.",
    )
    batch_max_wait: float = Field(0.2, gt=0, description="Seconds the worker waits to fill a batch before applying it.")
    shutdown_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Most seconds a worker takes to stop after SIGTERM or Ctrl-C; then it exits anyway (what it did not acknowledge is redelivered).",
    )
    offset_gap_grace_s: float = Field(
        30.0,
        gt=0,
        description="Seconds the worker seeks back to a missing input offset before taking the gap as real.",
    )
    window_grace_s: float = Field(
        3 * 86400.0,
        ge=0,
        description="A metric window turns final once the event-time watermark passes its end plus this, seconds; later events still revise it. Events up to this late are applied from the state in memory, older ones read their customer's history from SQL.",
    )
    partition_idle_s: float = Field(
        10.0,
        gt=0,
        description="An input partition with no new record and no backlog for this long stops holding the event-time watermark back, seconds.",
    )
    max_event_age_s: float | None = Field(
        None,
        gt=0,
        description="Opt-in: events older than the event-time watermark minus this are dead-lettered too_late, seconds. Unset: every valid event is applied, whatever its age.",
    )
    issue_memory_s: float = Field(
        30 * 86400.0,
        gt=0,
        description="How long contacts about one issue id count as the same issue (contact number, time to resolution), seconds of event time.",
    )
    timeline_limit: int = Field(
        200,
        ge=1,
        description="Most entries a customer's state keeps of those later events can change or alert rules read (contacts, purchases, surveys, moments); older ones are read back from SQL when needed.",
    )
    state_cache_customers: int = Field(
        50_000,
        ge=0,
        description="Customer states a worker keeps in memory between batches (measured ~7 KB each on the benchmark; saves reading them back).",
    )
    repeat_contact_window_s: float = Field(
        7 * 86400.0, gt=0, description="A contact about an issue contacted within this window is a repeat contact."
    )
    resolution_contradiction_window_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="A resolution the company recorded is contradicted when, within this many seconds after it, the customer contacts again about the same issue (any channel) or gives a low survey answer (experience_gap, confirmed_fcr); 0: never.",
    )
    low_nps_max: int = Field(
        6, ge=0, le=10, description="An NPS answer at most this (a detractor) contradicts a recent resolution."
    )
    low_csat_max: int = Field(
        2, ge=1, le=5, description="A CSAT answer (1-5) at most this contradicts a recent resolution."
    )
    low_ces_max: int = Field(
        3,
        ge=1,
        le=7,
        description="A CES answer (1-7, higher is easier) at most this contradicts a recent resolution.",
    )
    issue_target_s: float = Field(48 * 3600.0, gt=0, description="An issue open longer than this raises an alert.")
    negative_moments_alert: int = Field(3, ge=1, description="Negative moments within 7 days that raise an alert.")
    engagement_half_life_days: float = Field(
        28.0,
        gt=0,
        allow_inf_nan=False,
        description="Engagement score: a week's touchpoints count half as much this many days before the customer's latest event (README: Engagement score).",
    )
    engagement_scale: float = Field(
        20.0,
        gt=0,
        allow_inf_nan=False,
        description="Engagement score: the decayed weighted count E that scores 63 (100 * (1 - exp(-E / scale))).",
    )
    engagement_horizon_weeks: int = Field(
        52,
        ge=1,
        le=520,
        description="Engagement score: weeks counted, up to the week of the customer's latest event; each customer's state keeps one small row per week with events.",
    )
    engagement_weights: dict[str, float] = Field(
        default_factory=lambda: dict(ENGAGEMENT_WEIGHTS),
        description='Engagement score weights, JSON (names left out keep their default): {"touch": 1, "purchase": 5, "positive_survey": 3, "negative_survey": 3, "negative_moment": 2}; the negative kinds are subtracted.',
    )
    metric_windows: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["1h", "1d", "7d", "30d", "all"],
        description="Metric windows for channel and overall scopes (comma-separated: 1h,1d,7d,30d,all).",
    )
    customer_metric_windows: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["all"],
        description="Metric windows kept per customer (comma-separated); each adds rows per event.",
    )
    experience_drop_margins: dict[WatchedMetric, float] = Field(
        default_factory=lambda: dict[WatchedMetric, float](
            {"nps": 20.0, "csat": 15.0, "fcr": 15.0, "experience_gap": 15.0, "repeat_contact_rate": 15.0}
        ),
        description='Metrics experience-drop alerts watch, and how much worse than the baseline fires, in the metric\'s unit (NPS points, percentage points, CES points), JSON: {"nps": 20, "csat": 15, "fcr": 15, "experience_gap": 15, "repeat_contact_rate": 15}; {} turns them off. Also ces and confirmed_fcr.',
    )
    experience_drop_window: str = Field(
        "1d",
        description="Short window of experience-drop alerts (a channel's or the company's figure worse than its own baseline): one of CXSTREAM_METRIC_WINDOWS, not all.",
    )
    experience_drop_baseline_windows: int = Field(
        7, ge=1, le=366, description="How many short windows before the current one make an experience-drop baseline."
    )
    experience_drop_min_answers: int = Field(
        30,
        ge=1,
        description="Fewest answers (the figure's denominator: survey answers, issues, resolutions, contacts) over the short window and over the baseline for an experience-drop alert to fire: fewer are noise.",
    )
    experience_drop_min_z: float = Field(
        3.0,
        ge=0,
        allow_inf_nan=False,
        description="How many standard errors of the difference (a two-sample z score) an experience drop must also reach to fire: a margin alone is crossed by chance where windows hold a few dozen answers. 0 turns the test off.",
    )

    # --- identity --------------------------------------------------------------------------------
    hash_identifiers: bool = Field(
        False,
        description="Store PII identifiers (email and phone; CXSTREAM_HASHED_IDENTIFIER_TYPES) only as salted hashes.",
    )
    identifier_salt: str = Field(
        "",
        validate_default=True,
        description="Salt for hashed identifiers (the HMAC key); required when CXSTREAM_HASH_IDENTIFIERS is on.",
    )
    dead_letter_originals: Literal["keep", "hash", "drop"] = Field(
        "keep",
        description="What a dead letter carries of the rejected record: keep (its original bytes, raw e-mails and "
        "phones included), hash (a digest of them, salted with CXSTREAM_IDENTIFIER_SALT when set) or drop (nothing).",
    )
    default_phone_region: str = Field("GB", description="Region for phone numbers written without a country code.")
    custom_identifier_types: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Identifier types of your own (a membership number, a CRM of another name), comma-separated: lower-case letters, digits and _, starting with a letter. Source records carry them in an identifiers object (Segment: context.externalIds); they are stitched like the built-in types, after them in strength unless CXSTREAM_IDENTIFIER_PRIORITY says otherwise.",
    )
    identifier_limits: dict[IdentifierName, int] = Field(
        # One web user id per customer: a browser shared by two people who log in (one anonymous id, two user ids)
        # must not merge them; the anonymous id stays with the first.
        default_factory=lambda: dict[IdentifierType | str, int](
            {IdentifierType.CRM_ID: 1, IdentifierType.WEB_USER_ID: 1, IdentifierType.WEB_ANONYMOUS_ID: 50}
        ),
        description='Most identifiers of a type one customer may hold, JSON: {"crm_id": 1, "web_user_id": 1, "web_anonymous_id": 50}.',
    )
    blocked_identifiers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["email:test@example.com", "email:noreply@example.com", "phone:+10000000000"],
        description="Identifiers never used for stitching, as type:value, comma-separated.",
    )
    split_max_touchpoints: int = Field(
        100_000,
        ge=1,
        description="Most touchpoints a customer split by hand (`cxstream split`, `POST /v1/splits`) may have, and most a worker's batch applies again for splits: a split applies all of its customer's events again in one batch, in memory (1.2 KB each that stays, 3.5 KB each that moves). Workers refuse a larger one (marked done, audit row split_refused); the command and the API refuse it up front.",
    )
    merge_max_touchpoints: int = Field(
        100_000,
        ge=1,
        description="Most touchpoints the customers one link merges may hold together (an event carrying identifiers of two customers, or `cxstream merge`): a merge reads their touchpoints back into memory (1.2-3.5 KB each), so a worker refuses a larger one and the event stays with its strongest identifier's customer, as when a per-type limit refuses a link (counted in cxstream_identifiers_rejected_total{reason=\"merge_too_large\"}). Guards against an identifier everyone shares, such as a till's house loyalty card; `cxstream merge` refuses up front.",
    )
    identifier_priority: Annotated[list[IdentifierName], NoDecode] = Field(
        default_factory=lambda: list[IdentifierType | str](IdentifierType),
        description="Identifier types, strongest first, comma-separated: a customer's id derives from its strongest identifier, and an event's strongest identifier is always linked (the others within the limits and rules). Types left out follow in the default order. Set it before the first event: after a change a customer is renamed only when a later event links something new to it.",
    )
    hashed_identifier_types: Annotated[list[IdentifierName], NoDecode] = Field(
        default_factory=lambda: list[IdentifierType | str]([IdentifierType.EMAIL, IdentifierType.PHONE]),
        description="The identifier types CXSTREAM_HASH_IDENTIFIERS stores as salted hashes, comma-separated: add those that hold personal data in your sources (a web_user_id that is an e-mail, a custom type such as a national id). Always includes email and phone. Set it before the first event, like the salt: a type added later gives its identifiers new keys, which customers formed before, erasures and never-link rules do not hold. A worker leaves out (and counts blocked) the values an adapter hashed of types it stores raw.",
    )
    blocked_identifier_patterns: dict[IdentifierName, str] = Field(
        default_factory=dict,
        description='Identifier values never used for stitching, by pattern: a regular expression per type, searched in the normalised value (e-mails lower-case, phones E.164) before any hashing, JSON: {"email": "^test[0-9]*@", "phone": "^\\+1555"} (none by default).',
    )

    # --- collector -------------------------------------------------------------------------------
    write_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEV_WRITE_KEY],
        description="Write keys accepted by the HTTP collector (HTTP Basic user name, as Segment), comma-separated.",
    )
    read_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Keys accepted by the read API (`cxstream api`) as HTTP Basic user name, comma-separated; separate from the write keys. Empty: the API does not start.",
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Keys allowed to change the identity graph through the read API (`POST /v1/erasures`, `POST /v1/merges`, `POST /v1/splits`; HTTP Basic user name), comma-separated; separate from the read keys. Empty: the API erases, merges and splits nothing (`cxstream erase`, `merge` and `split` still do).",
    )
    collector_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web origins (scheme://host[:port]) whose pages may call the collector from a browser (CORS), comma-separated; * for any origin (then without credentials). Empty: browsers are refused, server-side clients are not concerned.",
    )
    collector_max_body_bytes: int = Field(
        512 * 1024, ge=1024, description="Largest collector request body, bytes, as sent and once decompressed (413)."
    )
    collector_max_message_bytes: int = Field(
        32 * 1024,
        ge=256,
        description="Largest collector message (a single call's body or one item of a batch), bytes, as Segment's 32 KB; a larger one is dead-lettered message_too_large.",
    )
    collector_max_batch_items: int = Field(
        2500,
        ge=1,
        description="Most messages in one /v1/batch call; a batch with more is answered 400 and dead-lettered whole as too_many_items.",
    )
    collector_send_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Most seconds a collector request waits for the broker to acknowledge its records before it is answered 503 with Retry-After.",
    )

    @field_validator(
        "metric_windows",
        "customer_metric_windows",
        "blocked_identifiers",
        "identifier_priority",
        "custom_identifier_types",
        "hashed_identifier_types",
        "write_keys",
        "read_keys",
        "admin_keys",
        "collector_allowed_origins",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("metric_windows", "customer_metric_windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for name in value:
            window_seconds(name)
        return value

    @field_validator("experience_drop_window")
    @classmethod
    def _drop_window(cls, value: str, info: ValidationInfo) -> str:
        if not info.data.get("experience_drop_margins", True):
            return value  # no alert watches anything: the window need not exist
        windows = info.data.get("metric_windows")
        if windows is not None and value not in windows:
            raise ValueError(f"{value!r} is not one of CXSTREAM_METRIC_WINDOWS {windows}")
        if window_seconds(value) is None:
            raise ValueError("a tumbling window is needed (the all-time window has no windows before it)")
        return value

    @field_validator("experience_drop_margins")
    @classmethod
    def _margins(cls, value: dict[WatchedMetric, float]) -> dict[WatchedMetric, float]:
        bad = {metric: margin for metric, margin in value.items() if not 0 < margin < math.inf}
        if bad:
            raise ValueError(f"margins must be above 0 and finite: {bad}")
        return value

    @field_validator("metric_windows", "write_keys")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one value")
        return value

    @field_validator("worker_id", "app_id", "web_host")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _directory(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        # Kafka topic names: ASCII letters, digits, '.', '_' and '-', at most 249 characters (the longest cxstream
        # topic adds 22 to the prefix).
        if not _TOPIC_CHARS.fullmatch(value) or len(value) > 200:
            raise ValueError("use at most 200 of the characters a-z A-Z 0-9 . _ - (Kafka topic names)")
        return value

    @field_validator("custom_identifier_types")
    @classmethod
    def _custom_types(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not re.fullmatch(CUSTOM_TYPE_PATTERN, name)]
        if bad:
            raise ValueError(f"names of lower-case letters, digits and _ (at most 32, a letter first), got {bad}")
        # user_id and anonymous_id: how references spell the web types (Segment's names).
        taken = [name for name in value if name in {*IdentifierType, "anonymous", "user_id", "anonymous_id"}]
        if taken:
            raise ValueError(f"{taken} are built-in type names (or Segment's names of them)")
        return list(dict.fromkeys(value))

    @field_validator("engagement_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(ENGAGEMENT_WEIGHTS))
        if unknown:
            raise ValueError(f"unknown weights {unknown}: expected some of {list(ENGAGEMENT_WEIGHTS)}")
        bad = {name: w for name, w in value.items() if not 0 <= w < float("inf")}
        if bad:
            raise ValueError(f"weights must be finite and at least 0: {bad}")
        return {**ENGAGEMENT_WEIGHTS, **value}

    @field_validator("identifier_limits")
    @classmethod
    def _limits(cls, value: dict[IdentifierName, int], info: ValidationInfo) -> dict[IdentifierName, int]:
        _known_types(value, info)
        bad = {str(kind): n for kind, n in value.items() if n < 1}
        if bad:
            raise ValueError(f"limits must be at least 1: {bad}")
        return value

    @field_validator("blocked_identifiers")
    @classmethod
    def _blocked(cls, value: list[str], info: ValidationInfo) -> list[str]:
        types = {t.value for t in IdentifierType} | set(info.data.get("custom_identifier_types", ()))
        bad = [item for item in value if item.partition(":")[0] not in types or not item.partition(":")[2]]
        if bad:
            raise ValueError(f"expected type:value with a type among {sorted(types)}, got {bad}")
        return value

    @field_validator("identifier_priority")
    @classmethod
    def _priority(cls, value: list[IdentifierName], info: ValidationInfo) -> list[IdentifierName]:
        _known_types(value, info)
        twice = sorted({str(kind) for kind in value if value.count(kind) > 1})
        if twice:
            raise ValueError(f"each type at most once, got {twice} more than once")
        custom = info.data.get("custom_identifier_types", [])
        return [*value, *(kind for kind in [*IdentifierType, *custom] if kind not in value)]

    @field_validator("hashed_identifier_types")
    @classmethod
    def _hashed_types(cls, value: list[IdentifierName], info: ValidationInfo) -> list[IdentifierName]:
        _known_types(value, info)
        missing = [str(kind) for kind in (IdentifierType.EMAIL, IdentifierType.PHONE) if kind not in value]
        if missing:
            raise ValueError(f"e-mail and phone are always hashed: add {missing} to the list")
        return list(dict.fromkeys(value))

    @field_validator("blocked_identifier_patterns")
    @classmethod
    def _patterns(cls, value: dict[IdentifierName, str], info: ValidationInfo) -> dict[IdentifierName, str]:
        _known_types(value, info)
        for kind, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{kind}: not a regular expression ({exc})") from None
        return value

    @field_validator("default_phone_region")
    @classmethod
    def _region(cls, value: str) -> str:
        import phonenumbers  # local: only this check needs it at load

        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("expected a region code such as GB, US or DE")
        return value.upper()

    @field_validator("collector_allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        allowed = []
        for origin in value:
            normal = "*" if origin == "*" else normalise_origin(origin)
            if normal is None:
                raise ValueError(f"expected origins as scheme://host[:port] or *, got {origin!r}")
            allowed.append(normal)
        return allowed

    @field_validator("kafka_url")
    @classmethod
    def _kafka_url(cls, value: str) -> str:
        for part in value.split(","):
            url = urlsplit(part if "://" in part else f"kafka://{part}")
            if url.scheme not in ("kafka", "aiokafka") or not url.hostname or not url.port:
                raise ValueError(f"expected kafka://host:port[,host:port], got {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError(f"expected a sqlite:// or postgresql:// URL, got {value!r}")
        return value

    @field_validator("identifier_salt")
    @classmethod
    def _salt(cls, value: str, info: ValidationInfo) -> str:
        # Without a salt the "hash" is an HMAC with an empty key: anyone can recompute it from a list of e-mails.
        if info.data.get("hash_identifiers") and not value.strip():
            raise ValueError("required when CXSTREAM_HASH_IDENTIFIERS is on (an unsalted hash is recomputable)")
        return value

    @cached_property
    def bootstrap_servers(self) -> list[str]:
        """Kafka bootstrap servers as host:port strings, for kafka-python and aiokafka."""
        return [part.split("://", 1)[-1] for part in self.kafka_url.split(",")]

    @cached_property
    def kafka_port(self) -> int:
        """Port of the first bootstrap server: where the embedded broker listens."""
        return int(self.bootstrap_servers[0].rsplit(":", 1)[1])


#: Variables that meant something in earlier versions: set, they would be ignored silently, so they are refused.
REMOVED: dict[str, str] = {
    f"{ENV_PREFIX}ALLOWED_LATENESS_S": (
        "late events are no longer rejected by default; set CXSTREAM_MAX_EVENT_AGE_S to reject old events, "
        "CXSTREAM_WINDOW_GRACE_S for when windows turn final"
    ),
    f"{ENV_PREFIX}DEDUPE_HORIZON_S": (
        "duplicates are recognised by event id for ever (the touchpoints table); "
        "CXSTREAM_ISSUE_MEMORY_S is how long an issue id's contacts count as one issue"
    ),
}


def _known_types(names: Iterable[str], info: ValidationInfo) -> None:
    """Refuse identifier type names that are neither built-in nor declared in CXSTREAM_CUSTOM_IDENTIFIER_TYPES."""
    declared = set(info.data.get("custom_identifier_types", ()))
    unknown = sorted({str(n) for n in names if not isinstance(n, IdentifierType) and n not in declared})
    if unknown:
        raise ValueError(f"unknown identifier types {unknown} (declare your own in CXSTREAM_CUSTOM_IDENTIFIER_TYPES)")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise SettingsError naming the variable when a value is bad."""
    removed = [f"{name}: no longer read ({why})" for name, why in REMOVED.items() if name in os.environ]
    if removed:
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(removed))
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except pydantic_settings.SettingsError as exc:
        # A value pydantic-settings cannot even parse (bad JSON in a JSON setting): its message names the field.
        match = re.search(r'field "(\w+)"', str(exc))
        name = f"{ENV_PREFIX}{match.group(1).upper()}" if match else "a CXSTREAM_* variable"
        raise SettingsError(f"invalid configuration:\n  {name}: cannot be parsed ({exc.__cause__ or exc})") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{ENV_PREFIX}{field.upper()}: {message} (got {err.get('input')!r})")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def normalise_origin(origin: str) -> str | None:
    """A web origin as browsers compare them (lower-case scheme and host, no default port), or None if it is not
    ``scheme://host[:port]`` over http or https."""
    try:
        url = urlsplit(origin)
        port = url.port
    except ValueError:
        return None
    if url.scheme.lower() not in ("http", "https") or not url.hostname or url.username or url.password:
        return None
    if url.path or url.query or url.fragment or origin.endswith("/"):
        return None
    scheme = url.scheme.lower()
    default = {"http": 80, "https": 443}[scheme]
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def exposure_problems(settings: Settings) -> tuple[list[str], list[str]]:
    """Defaults that are unsafe outside a laptop: (errors that must stop a worker, warnings to log loudly).

    The public development write key is refused when the collector listens beyond loopback, and warned about
    against PostgreSQL (a production database on a laptop-only key).
    """
    errors, warnings = [], []
    if DEV_WRITE_KEY in settings.write_keys:
        if settings.web_host not in ("127.0.0.1", "localhost", "::1"):
            errors.append(
                f"{ENV_PREFIX}WRITE_KEYS: the public development key {DEV_WRITE_KEY} is refused when the collector "
                f"listens on {settings.web_host} ({ENV_PREFIX}WEB_HOST): set keys of your own"
            )
        elif settings.database_url.startswith("postgresql"):
            warnings.append(
                f"{ENV_PREFIX}WRITE_KEYS holds the public development key {DEV_WRITE_KEY} with a PostgreSQL results "
                "database: anyone who can reach the collector can write; set keys of your own"
            )
    return errors, warnings


def settings_markdown() -> str:
    """The README's configuration table, generated from the Settings fields so the two cannot drift."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(str(v) for v in default)
        elif isinstance(default, dict):
            default = ", ".join(f"{k}={v}" for k, v in default.items())
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | `{default}` | {info.description} |")
    return "\n".join(rows)
