"""Faults of a real Apache Kafka cluster: three KRaft nodes, replication factor 3, ``min.insync.replicas=2``.

Every test here runs the adapters (``cxstream simulate`` paced at a steady rate, acks=all, as an operator runs
it) and ``cxstream worker`` processes on the cluster of ``tests.support.apache_kafka``, injects one crash while
records flow, and checks the end state exactly against the oracle (``streams.domain.oracle.replay``) of every
event the adapters produced, computed offline from the same simulation:

* a broker leading channel partitions (not the active controller) is SIGKILLed mid-run and restarted: leadership
  moves to the in-sync replicas, the adapters and the worker follow it, and nothing acknowledged is lost;
* the active controller (the KRaft quorum's leader, which as a combined node also leads channel partitions) is
  SIGKILLed mid-run and restarted: the two remaining voters elect a new controller, which moves the partition
  leadership, and again nothing is lost;
* a worker is SIGKILLed while its consumer group rebalances (a second worker joining), on PostgreSQL: the other
  worker takes every partition from the offsets the database holds, the killed one comes back, and the results
  are those of an uninterrupted run.

"Nothing lost, nothing doubled": the channel topics hold every event id the adapters produced (re-sent copies
allowed), SQL holds one touchpoint row per event id with the oracle's customer, the oracle's customers and
identities, and the all-time counters (overall and per channel) count each event exactly once.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient
from sqlalchemy import Engine, func, select

from config.settings import Settings, load_settings
from config.topics import Topics
from schemas.touchpoint import Channel, TouchpointEvent
from sinks import tables as t
from sinks.database import make_engine
from streams.adapters.reader import Accepted, convert_one
from streams.domain.oracle import replay
from streams.kafka import ensure_topics
from streams.policies import Policies
from streams.sandbox.journeys import simulate
from tests.support.apache_kafka import ApacheKafkaCluster
from tests.support.faults import applied_count
from tests.support.processes import wait_until
from tests.support.results import caught_up, consumed_events, end_offsets, overall_counters, run_cli
from tests.support.workers import WorkerFactory

pytestmark = [pytest.mark.apache_kafka, pytest.mark.slow]

CUSTOMERS, DAYS, MALFORMED = 300, 5, 0.005
#: Records/s the adapters publish at: the 1,455 records of a simulation take about 15 s, so a crash lands with
#: a good part of them still to come.
RATE = 100.0
#: Seconds a killed broker stays down: longer than the broker session timeout (4 s) after which the controller
#: fences it and moves its leadership, so the outage is a real failover and not a blip.
OUTAGE_S = 6.0


@pytest.fixture
def kafka_url(apache_kafka_cluster: ApacheKafkaCluster) -> str:
    """The three-node cluster's URL: the ``workers`` factory of this module starts its workers on it."""
    return apache_kafka_cluster.url


def adapter_output(seed: int) -> list[TouchpointEvent]:
    """Every event the adapters produce from ``cxstream simulate`` of this module's traffic, computed offline."""
    records = simulate(customers=CUSTOMERS, days=DAYS, seed=seed, malformed_rate=MALFORMED)
    items = (convert_one(Channel(r.channel), r.raw, source_file="simulate", line=n) for n, r in enumerate(records, 1))
    return [item.event for item in items if isinstance(item, Accepted)]


class Adapters:
    """``cxstream simulate`` paced at ``RATE`` in a thread: the adapters publishing while a fault is injected."""

    def __init__(self, env: dict[str, str], seed: int) -> None:
        args = ["simulate", "--customers", str(CUSTOMERS), "--days", str(DAYS), "--seed", str(seed)]
        args += ["--malformed", str(MALFORMED), "--rate", str(RATE)]
        self.outcome: list[Any] = []
        self.thread = threading.Thread(target=self._run, args=(env, args), name="adapters", daemon=True)

    def _run(self, env: dict[str, str], args: list[str]) -> None:
        try:
            self.outcome.append(run_cli(env, *args, timeout=240))
        except BaseException as exc:
            self.outcome.append(exc)

    def start(self) -> Adapters:
        self.thread.start()
        return self

    @property
    def publishing(self) -> bool:
        return self.thread.is_alive()

    def summary(self, timeout: float = 180) -> str:
        """Wait for the run to end; its summary (``cxstream simulate`` exits 0 only when every record was
        acknowledged, re-sent ones included)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the adapters did not finish within {timeout:.0f}s"
        (outcome,) = self.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome.stderr.decode())


def check_summary(summary: str, events: list[TouchpointEvent]) -> None:
    """Every record read was acknowledged: published (each event at least once) or dead-lettered."""
    match = re.search(r"read (\d+), published (\d+), dead-lettered (\d+)", summary)
    assert match, summary
    read, published, dead = map(int, match.groups())
    assert published == len(events) and read == published + dead, summary
    assert "NOT SENT" not in summary, summary


def settings_for(url: str, prefix: str) -> Settings:
    return load_settings(kafka_url=url, topic_prefix=prefix, partitions=4, replication_factor=3)


def create_topics(cluster: ApacheKafkaCluster, prefix: str) -> None:
    """cxstream's topics, created as the adapters and the worker create them, with three replicas each."""
    ensure_topics(settings_for(cluster.url, prefix))
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers_alive, request_timeout_ms=10_000)
    try:
        described = admin.describe_topics(Topics(prefix).channels)
    finally:
        admin.close()
    for topic in described:
        assert len(topic["partitions"]) == 4, topic
        assert all(len(p["replica_nodes"]) == 3 for p in topic["partitions"]), topic


def channel_leaders(cluster: ApacheKafkaCluster, prefix: str) -> dict[tuple[str, int], int]:
    """Node id of the leader of every channel partition."""
    return {(topic, p): cluster.leader_of(topic, p) for topic in Topics(prefix).channels for p in range(4)}


def stored_event_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(t.touchpoints.c.event_id)).scalars())


def wait_until_complete(engine: Engine, url: str, prefix: str, group: str, expected: set[str]) -> None:
    """Every event in SQL, every record of the channel topics applied and the outbox published."""
    wait_until(lambda: stored_event_ids(engine) >= expected, 120, "every event to reach SQL")
    ends = end_offsets(url, Topics(prefix).channels)
    wait_until(lambda: caught_up(engine, group, ends), 60, "the workers to apply every record and their outbox")


def assert_exactly_the_oracle(engine: Engine, url: str, prefix: str, events: list[TouchpointEvent]) -> None:
    """Nothing lost, nothing doubled: the broker holds every event, SQL holds and counts each exactly once."""
    expected = {event.event_id for event in events}
    on_topics = consumed_events(url, prefix)
    assert {event.event_id for event in on_topics} == expected, "the brokers kept every acknowledged record"

    oracle = replay(events, Policies.from_settings(load_settings()))
    assert set(oracle.entries) == expected
    per_channel = Counter(entry.channel.value for entry in oracle.entries.values())
    with engine.connect() as conn:
        touchpoints = dict(conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all())
        rows = conn.scalar(select(func.count()).select_from(t.touchpoints))
        customers = set(conn.execute(select(t.customers.c.customer_id)).scalars())
        identities = dict(conn.execute(select(t.identities.c.identifier, t.identities.c.customer_id)).all())
        overall = overall_counters(conn)
        c = t.metric_cells.c
        channels = dict(conn.execute(select(c.key, c.counters).where(c.scope == "channel", c.window == "all")).all())
    missing, extra = expected - touchpoints.keys(), touchpoints.keys() - expected
    assert not missing and not extra, f"{len(missing)} events lost, {len(extra)} unknown ones in SQL"
    assert rows == len(expected)
    assert touchpoints == {eid: entry.customer_id for eid, entry in oracle.entries.items()}
    assert customers == set(oracle.profiles)
    assert identities == oracle.identities
    assert overall["touchpoints"] == len(expected), "every event counted exactly once, re-sent copies not again"
    assert {key: counters["touchpoints"] for key, counters in channels.items()} == dict(per_channel)


class Clock:
    """When each phase of a test was reached, printed with its results (pytest -s)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.phases: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        self.phases[phase] = round(time.monotonic() - self.started, 1)


def broker_killed_mid_run(
    cluster: ApacheKafkaCluster, workers: WorkerFactory, sqlite_url: str, prefix: str, seed: int, victim_of: Any
) -> None:
    """Adapters publish and a worker consumes; ``victim_of(leaders)`` picks the node to SIGKILL mid-run, which is
    restarted after ``OUTAGE_S``; the end state must be the oracle's."""
    clock = Clock()
    env = workers.env(sqlite_url, prefix, replication_factor="3")
    engine = make_engine(sqlite_url)
    group = env["CXSTREAM_APP_ID"]
    events = adapter_output(seed)
    create_topics(cluster, prefix)
    worker = workers.start(env)
    clock.mark("worker up")

    adapters = Adapters(env, seed).start()
    wait_until(lambda: applied_count(engine, group) > 100, 60, "the worker to apply the first records")
    leaders = channel_leaders(cluster, prefix)
    victim = victim_of(leaders)
    led = sorted(tp for tp, node in leaders.items() if node == victim)
    assert led, f"node {victim} leads no channel partition: {leaders}"
    assert adapters.publishing, "the adapters were still publishing when the broker died: make the run longer"
    before = applied_count(engine, group)
    cluster.kill(victim)
    killed_at = time.monotonic()
    clock.mark(f"node {victim} killed (leader of {len(led)} channel partitions, {before} records applied)")

    # The controller fences the dead node and moves its leadership to the in-sync replicas left.
    wait_until(lambda: all(cluster.leader_of(*tp) != victim for tp in led), 30, "leadership to move")
    clock.mark("leadership moved")
    wait_until(lambda: applied_count(engine, group) > before, 60, "the worker to go on applying without the node")
    clock.mark("worker applying again")
    time.sleep(max(0.0, killed_at + OUTAGE_S - time.monotonic()))
    cluster.restart(victim)
    clock.mark(f"node {victim} restarted")

    summary = adapters.summary()
    clock.mark("adapters done")
    check_summary(summary, events)
    wait_until_complete(engine, cluster.url, prefix, group, {event.event_id for event in events})
    clock.mark("caught up")
    assert worker.proc.poll() is None, f"the worker survived the broker's crash:\n{worker.log()[-4000:]}"
    workers.stop_all()
    clock.mark("worker stopped")
    print(f"\n{clock.phases}\n{summary}")
    assert_exactly_the_oracle(engine, cluster.url, prefix, events)


def test_partition_leader_killed_mid_run_loses_nothing_and_doubles_nothing(
    apache_kafka_cluster: ApacheKafkaCluster, workers: WorkerFactory, sqlite_url: str, topic_prefix: str
) -> None:
    """A broker leading channel partitions, not the active controller, dies by SIGKILL while records flow."""
    cluster = apache_kafka_cluster
    controller: list[int] = []

    def a_partition_leader_not_the_controller(leaders: dict[tuple[str, int], int]) -> int:
        controller.append(cluster.quorum_leader())
        candidates = Counter(node for node in leaders.values() if node != controller[0])
        assert candidates, f"the controller (node {controller[0]}) leads every channel partition: {leaders}"
        return candidates.most_common(1)[0][0]

    broker_killed_mid_run(cluster, workers, sqlite_url, topic_prefix, 17, a_partition_leader_not_the_controller)
    assert cluster.quorum_leader() == controller[0], "the controller stayed where it was: only a broker failed"


def test_active_controller_killed_mid_run_loses_nothing_and_doubles_nothing(
    apache_kafka_cluster: ApacheKafkaCluster, workers: WorkerFactory, sqlite_url: str, topic_prefix: str
) -> None:
    """The KRaft quorum's leader dies by SIGKILL while records flow. As a combined node it also leads channel
    partitions (asserted), so this one kill takes out both the controller and partition leadership."""
    cluster = apache_kafka_cluster
    killed: list[int] = []

    def the_controller(_leaders: dict[tuple[str, int], int]) -> int:
        killed.append(cluster.quorum_leader())
        return killed[0]

    def new_controller() -> bool:
        try:
            return cluster.quorum_leader() not in (killed[0], -1)
        except Exception:
            return False

    broker_killed_mid_run(cluster, workers, sqlite_url, topic_prefix, 23, the_controller)
    wait_until(new_controller, 10, "a new controller")


@pytest.fixture
def group_admin(apache_kafka_cluster: ApacheKafkaCluster) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=apache_kafka_cluster.bootstrap_servers, request_timeout_ms=5000)
    try:
        yield admin
    finally:
        admin.close()


def group_state(admin: KafkaAdminClient, group: str) -> tuple[str, int]:
    """The consumer group's state (Stable, PreparingRebalance, CompletingRebalance, Empty) and member count."""
    described = admin.describe_groups([group])[group]
    return str(described.get("group_state") or described.get("state")), len(described.get("members") or [])


def test_worker_killed_during_a_rebalance_loses_nothing_and_doubles_nothing(
    apache_kafka_cluster: ApacheKafkaCluster,
    workers: WorkerFactory,
    postgres_url: str,
    topic_prefix: str,
    group_admin: KafkaAdminClient,
) -> None:
    """worker-1 applies part of the input; worker-2 joins the group, and worker-1 is SIGKILLed while the group
    rebalances; worker-2 takes over, worker-1 comes back, and both run to the end of the input."""
    cluster, prefix, seed = apache_kafka_cluster, topic_prefix, 31
    clock = Clock()
    env = workers.env(postgres_url, prefix, replication_factor="3", batch_max_events="100")
    engine = make_engine(postgres_url)
    group = env["CXSTREAM_APP_ID"]
    events = adapter_output(seed)
    create_topics(cluster, prefix)
    first = workers.start(env, name="worker-1")
    clock.mark("worker-1 up")
    adapters = Adapters(env, seed).start()
    wait_until(lambda: applied_count(engine, group) > 100, 60, "worker-1 to apply the first records")
    wait_until(lambda: group_state(group_admin, group) == ("Stable", 1), 30, "worker-1 alone in a stable group")
    clock.mark("worker-1 applying")

    second = workers.start(env, name="worker-2", wait=False)
    seen: list[tuple[str, int]] = []

    def rebalancing() -> bool:
        seen.append(group_state(group_admin, group))
        return seen[-1][0] in ("PreparingRebalance", "CompletingRebalance")

    wait_until(rebalancing, 60, "worker-2's joining to start a rebalance", interval=0.02)
    before = applied_count(engine, group)
    first.kill()
    clock.mark(f"worker-1 killed in {seen[-1]} with {before} records applied")
    assert adapters.publishing, "the adapters were still publishing when worker-1 died: make the run longer"

    # The coordinator drops the dead member after its session timeout; worker-2 then takes every partition.
    wait_until(lambda: group_state(group_admin, group) == ("Stable", 1), 60, "worker-2 alone in a stable group")
    clock.mark("worker-2 holds every partition")
    wait_until(lambda: applied_count(engine, group) > before, 60, "worker-2 to apply records")
    first = workers.start(env, name="worker-1")
    wait_until(lambda: group_state(group_admin, group) == ("Stable", 2), 60, "both workers in a stable group")
    clock.mark("worker-1 back")

    summary = adapters.summary()
    clock.mark("adapters done")
    check_summary(summary, events)
    wait_until_complete(engine, cluster.url, prefix, group, {event.event_id for event in events})
    clock.mark("caught up")
    for worker in (first, second):
        assert worker.proc.poll() is None, f"{worker.env['CXSTREAM_WORKER_ID']} exited:\n{worker.log()[-4000:]}"
    workers.stop_all()
    clock.mark("workers stopped")
    print(f"\n{clock.phases}\n{summary}")
    assert_exactly_the_oracle(engine, cluster.url, prefix, events)
