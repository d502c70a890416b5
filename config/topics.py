"""Topic names, all carrying the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.touchpoint import Channel


@dataclass(frozen=True, slots=True)
class Topics:
    """Names of every topic cxstream reads or writes."""

    prefix: str = "cx."

    def channel(self, channel: Channel | str) -> str:
        """Raw-but-valid touchpoints of one channel, as the adapters publish them."""
        return f"{self.prefix}touchpoints.{Channel(channel).value}"

    @property
    def channels(self) -> list[str]:
        """Every channel topic, in a stable order."""
        return [self.channel(c) for c in Channel]

    @property
    def deadletter(self) -> str:
        """Rejected records with their reason and original bytes."""
        return f"{self.prefix}deadletter"

    @property
    def timeline(self) -> str:
        """TimelineEntry records keyed by customer_id."""
        return f"{self.prefix}timeline"

    @property
    def profiles(self) -> str:
        """CustomerProfile records keyed by customer_id (compacted)."""
        return f"{self.prefix}profiles"

    @property
    def identity(self) -> str:
        """IdentityChange (merge) records keyed by the merged customer_id."""
        return f"{self.prefix}identity"

    @property
    def metrics(self) -> str:
        """MetricCellUpdate records (every figure of a cell) keyed by scope/key/window/start (compacted)."""
        return f"{self.prefix}metrics"

    @property
    def alerts(self) -> str:
        """Alert records keyed by customer_id (alert_id, in the value, is deterministic per cause)."""
        return f"{self.prefix}alerts"

    @property
    def experience_alerts(self) -> str:
        """ExperienceDropAlert records keyed by alert_id (compacted: the latest record of an alert is its status)."""
        return f"{self.prefix}experience-alerts"

    @property
    def outbox_commits(self) -> str:
        """Internal: per worker, the last outbox row published in a committed Kafka transaction (compacted, one
        partition). Written in the same transaction as the row's records, read at start to skip what is already
        published (``streams.downstream``)."""
        return f"{self.prefix}outbox-commits"

    @property
    def suppressions(self) -> str:
        """Erased people's identifiers as salted hashes, keyed by the hash (compacted): read by workers at start so
        that a database replaying the input topics drops their events too (``streams.erasure``)."""
        return f"{self.prefix}suppressions"

    @property
    def outputs(self) -> list[str]:
        """Every downstream topic."""
        return [self.timeline, self.profiles, self.identity, self.metrics, self.alerts, self.experience_alerts]

    @property
    def compacted(self) -> set[str]:
        """Topics whose consumers only need the latest value per key."""
        return {self.profiles, self.metrics, self.experience_alerts, self.outbox_commits, self.suppressions}
