"""The domain's policies, built from the settings: the one place where ``Settings`` meets ``streams.domain``.

The domain reads no settings. Each of its parts takes a small frozen policy of exactly what it reads
(``IdentityPolicy``, ``CustomerPolicy``, ``AlertPolicy``, ``MetricPolicy``, ``DropPolicy``); the worker, the CLI, the tests and
the tools build them here, once, from the ``Settings`` they were given.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings
from schemas.windows import window_seconds
from streams.domain.aggregate import MetricPolicy
from streams.domain.alerts import AlertPolicy
from streams.domain.customer import CustomerPolicy, LowScores
from streams.domain.engagement import WEIGHT_NAMES, EngagementPolicy
from streams.domain.experience_drops import DropPolicy
from streams.domain.identifiers import BlockedPatterns, IdentifierHashing
from streams.domain.identity import IdentityPolicy
from streams.domain.windows import parse_window


@dataclass(frozen=True, slots=True)
class Policies:
    """Every policy of the domain, read from one ``Settings``."""

    identity: IdentityPolicy
    customer: CustomerPolicy
    alerts: AlertPolicy
    metrics: MetricPolicy
    #: Experience-drop alerts; None when no metric is watched.
    drops: DropPolicy | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Policies:
        """The policies the settings ask for."""
        alerts = AlertPolicy(
            negative_moments_threshold=settings.negative_moments_alert, issue_target_s=settings.issue_target_s
        )
        return cls(
            identity=IdentityPolicy(
                hashing=identifier_hashing(settings),
                limits=dict(settings.identifier_limits),
                blocked=tuple(settings.blocked_identifiers),
                blocked_patterns=BlockedPatterns(settings.blocked_identifier_patterns),
                default_region=settings.default_phone_region,
                priority=tuple(settings.identifier_priority),
                custom_types=frozenset(settings.custom_identifier_types),
                merge_max_touchpoints=settings.merge_max_touchpoints,
            ),
            customer=CustomerPolicy(
                timeline_limit=settings.timeline_limit,
                repeat_window_s=settings.repeat_contact_window_s,
                issue_memory_s=settings.issue_memory_s,
                grace_s=settings.window_grace_s,
                alert_span_s=alerts.longest_window_s,
                contradiction_window_s=settings.resolution_contradiction_window_s,
                low_scores=LowScores(settings.low_nps_max, settings.low_csat_max, settings.low_ces_max),
                engagement=engagement_policy(settings),
            ),
            alerts=alerts,
            metrics=MetricPolicy(
                windows=tuple(parse_window(name) for name in settings.metric_windows),
                customer_windows=tuple(parse_window(name) for name in settings.customer_metric_windows),
                grace_s=settings.window_grace_s,
            ),
            drops=drop_policy(settings),
        )


def drop_policy(settings: Settings) -> DropPolicy | None:
    """What experience-drop alerts compare; None when ``CXSTREAM_EXPERIENCE_DROP_MARGINS`` watches nothing."""
    if not settings.experience_drop_margins:
        return None
    seconds = window_seconds(settings.experience_drop_window)
    assert seconds is not None, "the settings refuse the all-time window"
    return DropPolicy(
        window=settings.experience_drop_window,
        window_s=seconds,
        baseline_windows=settings.experience_drop_baseline_windows,
        margins={str(metric): margin for metric, margin in settings.experience_drop_margins.items()},
        min_answers=settings.experience_drop_min_answers,
        min_z=settings.experience_drop_min_z,
    )


def engagement_policy(settings: Settings) -> EngagementPolicy:
    """The engagement score's parameters the settings give."""
    return EngagementPolicy(
        half_life_days=settings.engagement_half_life_days,
        scale=settings.engagement_scale,
        horizon_weeks=settings.engagement_horizon_weeks,
        weights=tuple(settings.engagement_weights[name] for name in WEIGHT_NAMES),
    )


#: The HMAC key of suppression entries when CXSTREAM_IDENTIFIER_SALT is not set (README: set it, or anyone
#: holding a list of e-mails can test them against the entries).
DEFAULT_SUPPRESSION_SALT = "cxstream-suppression"


def suppression_salt(settings: Settings) -> str:
    """The HMAC key of erased people's suppression entries (``streams.erasure``): the identifier salt when set."""
    return settings.identifier_salt or DEFAULT_SUPPRESSION_SALT


def identifier_hashing(settings: Settings) -> IdentifierHashing | None:
    """How PII identifiers are hashed (by the adapters, the collector and the worker alike); None when
    ``CXSTREAM_HASH_IDENTIFIERS`` is off."""
    if not settings.hash_identifiers:
        return None
    return IdentifierHashing(
        settings.identifier_salt,
        settings.default_phone_region,
        BlockedPatterns(settings.blocked_identifier_patterns),
        frozenset(str(kind) for kind in settings.hashed_identifier_types),
    )
