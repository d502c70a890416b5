"""The one settings object of cxstream, read from ``CXSTREAM_*`` environment variables."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.touchpoint import IdentifierType

ENV_PREFIX = "CXSTREAM_"


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
    data_dir: Path = Field(Path("var"), description="Directory for the worker's local data (one per worker).")
    worker_id: str = Field("worker-1", description="Name of this worker in logs and in Prometheus labels.")
    app_id: str = Field("cxstream", description="Faust application id: the consumer group of the workers.")

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
    batch_max_events: int = Field(5000, ge=1, description="Most events the worker applies in one transaction.")
    stream_buffer_records: int = Field(
        500,
        ge=1,
        description="Input records the worker buffers ahead of its batches (and takes at once); with envelopes each holds many events.",
    )
    batch_max_wait: float = Field(0.2, gt=0, description="Seconds the worker waits to fill a batch before applying it.")
    offset_gap_grace_s: float = Field(
        30.0,
        gt=0,
        description="Seconds the worker seeks back to a missing input offset before taking the gap as real.",
    )
    allowed_lateness_s: float = Field(
        3 * 86400.0, ge=0, description="Event-time lateness accepted, seconds; later events are dead-lettered too_late."
    )
    dedupe_horizon_s: float = Field(
        30 * 86400.0, gt=0, description="How long a customer's seen event ids are remembered, seconds of event time."
    )
    timeline_limit: int = Field(200, ge=1, description="Recent timeline entries kept in each customer's state.")
    state_cache_customers: int = Field(
        50_000,
        ge=0,
        description="Customer states a worker keeps in memory between batches (measured ~7 KB each on the benchmark; saves reading them back).",
    )
    repeat_contact_window_s: float = Field(
        7 * 86400.0, gt=0, description="A contact about an issue contacted within this window is a repeat contact."
    )
    issue_target_s: float = Field(48 * 3600.0, gt=0, description="An issue open longer than this raises an alert.")
    negative_moments_alert: int = Field(3, ge=1, description="Negative moments within 7 days that raise an alert.")
    metric_windows: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["1h", "1d", "7d", "30d", "all"],
        description="Metric windows for channel and overall scopes (comma-separated: 1h,1d,7d,30d,all).",
    )
    customer_metric_windows: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["all"],
        description="Metric windows kept per customer (comma-separated); each adds rows per event.",
    )

    # --- identity --------------------------------------------------------------------------------
    hash_identifiers: bool = Field(False, description="Store PII identifiers (email, phone) only as salted hashes.")
    identifier_salt: str = Field("", description="Salt for hashed identifiers; required when hash_identifiers is on.")
    default_phone_region: str = Field("GB", description="Region for phone numbers written without a country code.")
    identifier_limits: dict[IdentifierType, int] = Field(
        default_factory=lambda: {IdentifierType.CRM_ID: 1, IdentifierType.WEB_ANONYMOUS_ID: 50},
        description='Most identifiers of a type one customer may hold, JSON: {"crm_id": 1, "web_anonymous_id": 50}.',
    )
    blocked_identifiers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["email:test@example.com", "email:noreply@example.com", "phone:+10000000000"],
        description="Identifiers never used for stitching, as type:value, comma-separated.",
    )

    # --- collector -------------------------------------------------------------------------------
    write_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["dev-write-key"],
        description="Write keys accepted by the HTTP collector (HTTP Basic user name, as Segment), comma-separated.",
    )
    collector_max_body_bytes: int = Field(512 * 1024, ge=1024, description="Largest collector request body, bytes.")

    @field_validator("metric_windows", "customer_metric_windows", "blocked_identifiers", "write_keys", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("metric_windows", "customer_metric_windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        from streams.domain.windows import parse_window  # local: config must not import the domain at load

        for name in value:
            parse_window(name)
        return value

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

    @cached_property
    def bootstrap_servers(self) -> list[str]:
        """Kafka bootstrap servers as host:port strings, for kafka-python and aiokafka."""
        return [part.split("://", 1)[-1] for part in self.kafka_url.split(",")]

    @cached_property
    def kafka_port(self) -> int:
        """Port of the first bootstrap server: where the embedded broker listens."""
        return int(self.bootstrap_servers[0].rsplit(":", 1)[1])


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise SettingsError naming the variable when a value is bad."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems)) from None


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
