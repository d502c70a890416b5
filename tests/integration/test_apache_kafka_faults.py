"""Crashes on a real Apache Kafka cluster (three KRaft nodes, replication factor 3, ``min.insync.replicas=2``)
lose nothing and double nothing.

Each test runs the adapters (``cxstream simulate`` paced at a steady rate, acks=all, exactly as an operator runs
it) and ``cxstream worker`` processes on the three-node cluster of ``tests.support.apache_kafka``, with every
topic cxstream creates on three replicas (``CXSTREAM_REPLICATION_FACTOR=3``), and SIGKILLs one process while
records flow:

* a broker that leads channel partitions but is not the active controller: the controller fences it and moves
  its leadership to the in-sync replicas; the adapters and the worker follow the new leaders; the node is
  restarted after a few seconds and catches up;
* the active controller (the KRaft quorum's leader). Every node is a combined broker and controller, so this
  node also leads channel partitions (asserted): one kill takes out the controller and partition leaders at
  once. The two voters left elect a new controller (asserted), which moves the leadership; the node is restarted;
* a worker, while its consumer group rebalances because a second worker joined (on PostgreSQL, as two workers
  run in production): the second worker takes every partition from the offsets the database holds, the killed
  worker is started again, and both run to the end of the input.

The end state is then checked exactly against the oracle (``streams.domain.oracle.replay``) of every event the
adapters produced, computed offline from the same simulation: the channel topics hold every one of those event
ids (what the brokers acknowledged survived the crash), SQL holds one touchpoint row per event id with the
oracle's customer, the oracle's customers and identities, and the all-time counters (overall and per channel)
count each event exactly once, re-sent and redelivered copies included. Downstream, the workers publish in Kafka
transactions: a ``read_committed`` consumer finds every event's timeline entry, and every outbox row committed
exactly once (its marker on ``<prefix>outbox-commits``).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import psutil
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from sqlalchemy import Engine, func, select

from config.settings import load_settings
from config.topics import Topics
from schemas.touchpoint import Channel, TouchpointEvent
from sinks import tables as t
from sinks.database import make_engine
from streams.adapters.reader import Accepted, convert_one
from streams.domain.oracle import replay
from streams.kafka import ensure_topics
from streams.policies import Policies
from streams.sandbox.journeys import simulate
from tests.support.apache_kafka import ApacheKafkaCluster, ApacheKafkaError
from tests.support.faults import applied_count
from tests.support.kafka import published_outbox_rows, read_committed
from tests.support.processes import wait_until
from tests.support.results import caught_up, consumed_events, end_offsets, overall_counters, prometheus_value, run_cli
from tests.support.workers import WorkerFactory, WorkerProcess

pytestmark = [pytest.mark.apache_kafka, pytest.mark.slow]

CUSTOMERS, DAYS, MALFORMED = 300, 5, 0.005
PARTITIONS = 4
#: Records/s the adapters publish at when a node is killed: a simulation's ~1,460 records take ~20 s, so records
#: still arrive after the dead node's leadership has moved (~5 s after the kill), even on a busy 2-core machine.
RATE = 75.0
#: Records/s when a worker is killed: the traffic (~37 s) outlasts worker-2's start (5-12 s), the rebalance, the
#: session timeout that drops the killed worker-1 and its restart, so both workers apply records afterwards.
REBALANCE_RATE = 40.0
#: Seconds a killed broker stays down: longer than the broker session timeout (4 s) after which the controller
#: fences it and moves its leadership, so the outage is a real failover and not a blip.
OUTAGE_S = 6.0

Partition = tuple[str, int]


@pytest.fixture
def kafka_url(apache_kafka_cluster: ApacheKafkaCluster) -> str:
    """The three-node cluster: the ``workers`` fixture starts this module's workers on it."""
    return apache_kafka_cluster.url


# --- the adapters ------------------------------------------------------------------------------------------------


def adapter_output(seed: int) -> list[TouchpointEvent]:
    """Every event the adapters produce from this module's simulation (duplicates included), computed offline."""
    records = simulate(customers=CUSTOMERS, days=DAYS, seed=seed, malformed_rate=MALFORMED)
    items = (convert_one(Channel(r.channel), r.raw, source_file="simulate", line=n) for n, r in enumerate(records, 1))
    return [item.event for item in items if isinstance(item, Accepted)]


class Adapters:
    """``cxstream simulate --rate`` in a thread: the adapters publishing (acks=all) while a fault is injected."""

    def __init__(self, env: dict[str, str], seed: int, rate: float = RATE) -> None:
        args = ["simulate", "--customers", str(CUSTOMERS), "--days", str(DAYS), "--seed", str(seed)]
        args += ["--malformed", str(MALFORMED), "--rate", str(rate)]
        self.outcome: list[Any] = []
        self.thread = threading.Thread(target=self._run, args=(env, args), name="adapters", daemon=True)

    def _run(self, env: dict[str, str], args: list[str]) -> None:
        try:
            self.outcome.append(run_cli(env, *args, timeout=240))
        except BaseException as exc:  # raised in the test's thread by summary()
            self.outcome.append(exc)

    def start(self) -> Adapters:
        self.thread.start()
        return self

    @property
    def publishing(self) -> bool:
        return self.thread.is_alive()

    def summary(self, events: list[TouchpointEvent], timeout: float = 180) -> str:
        """Wait for the run to end, check that it accounted for every record, and return its summary.

        ``cxstream simulate`` exits 0 only when the brokers acknowledged every record (re-sent ones included).
        """
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the adapters did not finish within {timeout:.0f}s"
        (outcome,) = self.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        summary = str(outcome.stderr.decode())
        counts = re.search(r"read (\d+), published (\d+), dead-lettered (\d+)", summary)
        assert counts, summary
        read, published, dead = map(int, counts.groups())
        assert published == len(events) and read == published + dead and "NOT SENT" not in summary, summary
        return summary


# --- the cluster -------------------------------------------------------------------------------------------------


def create_topics(cluster: ApacheKafkaCluster, prefix: str) -> None:
    """cxstream's topics as the adapters create them, and a check that each channel partition has three replicas."""
    settings = load_settings(kafka_url=cluster.url, topic_prefix=prefix, partitions=PARTITIONS, replication_factor=3)
    ensure_topics(settings)

    def replicated() -> bool:
        # A topic just created reaches the brokers' metadata a moment later (UNKNOWN_TOPIC_OR_PARTITION until then).
        described = describe_channels(cluster, prefix)
        return all(
            len(topic["partitions"]) == PARTITIONS and all(len(p["replica_nodes"]) == 3 for p in topic["partitions"])
            for topic in described
        )

    wait_until(replicated, 20, f"the channel topics to have {PARTITIONS} partitions of 3 replicas each")


def describe_channels(cluster: ApacheKafkaCluster, prefix: str) -> list[dict[str, Any]]:
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers_alive, request_timeout_ms=5000)
    try:
        return list(admin.describe_topics(Topics(prefix).channels))
    finally:
        admin.close()


def channel_leaders(cluster: ApacheKafkaCluster, prefix: str) -> dict[Partition, int]:
    """Node id of the leader of every channel partition."""
    return {
        (topic["name"], part["partition_index"]): int(part["leader_id"])
        for topic in describe_channels(cluster, prefix)
        for part in topic["partitions"]
    }


def leadership_moved(cluster: ApacheKafkaCluster, partitions: list[Partition], dead: int) -> bool:
    """True once every partition of ``partitions`` has a leader other than node ``dead``."""
    try:
        return all(cluster.leader_of(*tp) not in (dead, -1) for tp in partitions)
    except KafkaError:  # the admin client tried the dead node: it stays in the metadata until it is fenced
        return False


def log_ends_now(cluster: ApacheKafkaCluster, partitions: list[Partition]) -> dict[Partition, int]:
    """The log end offset of each partition as its leader reports it now (records keep arriving)."""
    ends: dict[Partition, int] = {}

    def listed() -> bool:
        consumer = KafkaConsumer(bootstrap_servers=cluster.bootstrap_servers_alive, request_timeout_ms=5000)
        try:
            tps = [TopicPartition(*tp) for tp in partitions]
            ends.update({(tp.topic, tp.partition): end for tp, end in consumer.end_offsets(tps).items()})
            return True
        except KafkaError:  # the dead node still in the metadata
            return False
        finally:
            consumer.close()

    wait_until(listed, 30, "the new leaders' log ends")
    return ends


def controller_other_than(cluster: ApacheKafkaCluster, dead: int) -> int | None:
    """The active controller once the running nodes know one other than ``dead``, else None."""
    try:
        leader = cluster.quorum_leader()
    except ApacheKafkaError:
        return None
    return leader if leader != dead else None


# --- the results -------------------------------------------------------------------------------------------------


def applied_offsets(engine: Engine, group: str) -> dict[Partition, int]:
    """The highest applied offset of every input partition, as SQL holds it."""
    c = t.stream_offsets.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.topic, c.partition, c.applied_offset).where(c.group_id == group))
        return {(topic, part): offset for topic, part, offset in rows}


def stored_event_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(t.touchpoints.c.event_id)).scalars())


def wait_until_complete(engine: Engine, url: str, prefix: str, group: str, events: list[TouchpointEvent]) -> None:
    """Every event in SQL, every record of the channel topics applied and the outbox published."""
    expected = {event.event_id for event in events}
    wait_until(lambda: stored_event_ids(engine) >= expected, 120, "every event to reach SQL")
    ends = end_offsets(url, Topics(prefix).channels)
    wait_until(lambda: caught_up(engine, group, ends), 60, "the workers to apply every record and their outbox")


def transactional(worker: WorkerProcess) -> bool:
    """True when the worker publishes its outputs in Kafka transactions (as it does on Apache Kafka)."""
    return prometheus_value(worker.metrics_text(), "cxstream_outputs_transactional") == 1


def assert_exactly_the_oracle(engine: Engine, url: str, prefix: str, group: str, events: list[TouchpointEvent]) -> None:
    """Nothing lost, nothing doubled: the brokers hold every event; SQL holds and counts each exactly once; the
    downstream topics carry every event's timeline entry, and every outbox row in one committed transaction."""
    expected = {event.event_id for event in events}
    on_topics = {event.event_id for event in consumed_events(url, prefix)}
    assert on_topics == expected, f"{len(expected - on_topics)} acknowledged events lost by the brokers"

    timeline = read_committed(url, [Topics(prefix).timeline])
    published = {orjson.loads(value)["event_id"] for (_, _, value) in timeline if value is not None}
    assert published == expected, "every event's timeline entry reached the downstream topic"
    markers = published_outbox_rows(url, prefix, group)
    doubled = {row: n for row, n in markers.items() if n != 1}
    assert markers and not doubled, f"outbox rows committed to Kafka more than once: {doubled}"

    oracle = replay(events, Policies.from_settings(load_settings()))
    assert set(oracle.entries) == expected
    per_channel = Counter(entry.channel.value for entry in oracle.entries.values())
    c = t.metric_cells.c
    with engine.connect() as conn:
        touchpoints = dict(conn.execute(select(t.touchpoints.c.event_id, t.touchpoints.c.customer_id)).all())
        rows = conn.scalar(select(func.count()).select_from(t.touchpoints))
        customers = set(conn.execute(select(t.customers.c.customer_id)).scalars())
        identities = dict(conn.execute(select(t.identities.c.identifier, t.identities.c.customer_id)).all())
        overall = overall_counters(conn)
        channels = dict(conn.execute(select(c.key, c.counters).where(c.scope == "channel", c.window == "all")).all())
    lost, unknown = expected - touchpoints.keys(), touchpoints.keys() - expected
    assert not lost and not unknown, f"{len(lost)} events lost, {len(unknown)} unknown ones in SQL"
    assert rows == len(expected), "one touchpoint row per event"
    assert touchpoints == {eid: entry.customer_id for eid, entry in oracle.entries.items()}
    assert customers == set(oracle.profiles)
    assert identities == oracle.identities
    assert overall["touchpoints"] == len(expected), "every event counted exactly once, re-sent copies not again"
    assert {key: cell["touchpoints"] for key, cell in channels.items()} == dict(per_channel)


class Clock:
    """When each phase of a test was reached (printed with the results: pytest -s)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.phases: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        self.phases[phase] = round(time.monotonic() - self.started, 1)


# --- a node killed -----------------------------------------------------------------------------------------------


def node_killed_mid_run(
    cluster: ApacheKafkaCluster, workers: WorkerFactory, sqlite_url: str, prefix: str, seed: int, controller: bool
) -> None:
    """Adapters publish and a worker consumes; a node is SIGKILLed mid-run and restarted after ``OUTAGE_S``.

    ``controller``: kill the active controller; else the node leading most channel partitions among the others.
    """
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
    leaders, active = channel_leaders(cluster, prefix), cluster.quorum_leader()
    if controller:
        victim = active
    else:
        others = Counter(node for node in leaders.values() if node != active)
        assert others, f"the controller (node {active}) leads every channel partition: {leaders}"
        victim = others.most_common(1)[0][0]
    led = sorted(tp for tp, node in leaders.items() if node == victim)
    assert led, f"node {victim} leads no channel partition: {leaders}"
    assert adapters.publishing, "the adapters still publish when the node dies: make the run longer"
    cluster.kill(victim)
    killed_at = time.monotonic()
    clock.mark(f"node {victim} killed: {'controller, ' if controller else ''}leader of {len(led)} channel partitions")

    # The active controller fences the dead node and moves its leadership to the in-sync replicas left; when the
    # dead node was the controller, the two voters left elect a new one first.
    wait_until(lambda: controller_other_than(cluster, victim) is not None, 30, "an active controller")
    now_active = controller_other_than(cluster, victim)
    assert (now_active != active) if controller else (now_active == active), (active, now_active)
    clock.mark(f"controller: node {now_active}")
    wait_until(lambda: leadership_moved(cluster, led, victim), 30, "leadership to move off the dead node")
    clock.mark("leadership moved")
    # The worker follows: it applies records of the partitions the dead node led that were written to their new
    # leaders (past the log ends the new leaders report now), hence read from them.
    ends = log_ends_now(cluster, led)
    moved_on = lambda: any(applied_offsets(engine, group).get(tp, -1) >= end for tp, end in ends.items())  # noqa: E731
    wait_until(moved_on, 60, "the worker to apply records written to the new leaders")
    clock.mark("worker applies from the new leaders")
    time.sleep(max(0.0, killed_at + OUTAGE_S - time.monotonic()))
    cluster.restart(victim)
    clock.mark(f"node {victim} restarted")

    summary = adapters.summary(events)
    clock.mark("adapters done")
    wait_until_complete(engine, cluster.url, prefix, group, events)
    clock.mark("caught up")
    assert worker.proc.poll() is None, f"the worker died after node {victim}'s crash:\n{worker.log()[-4000:]}"
    assert transactional(worker), "the worker publishes its outputs in Kafka transactions"
    workers.stop_all()
    print(f"\n{clock.phases}\n{summary}")
    assert_exactly_the_oracle(engine, cluster.url, prefix, group, events)


def test_partition_leader_killed_mid_run_loses_nothing_and_doubles_nothing(
    apache_kafka_cluster: ApacheKafkaCluster, workers: WorkerFactory, sqlite_url: str, topic_prefix: str
) -> None:
    """A broker leading channel partitions, not the active controller, dies by SIGKILL while records flow."""
    node_killed_mid_run(apache_kafka_cluster, workers, sqlite_url, topic_prefix, seed=17, controller=False)


def test_active_controller_killed_mid_run_loses_nothing_and_doubles_nothing(
    apache_kafka_cluster: ApacheKafkaCluster, workers: WorkerFactory, sqlite_url: str, topic_prefix: str
) -> None:
    """The KRaft quorum's leader, also the leader of channel partitions, dies by SIGKILL while records flow."""
    node_killed_mid_run(apache_kafka_cluster, workers, sqlite_url, topic_prefix, seed=23, controller=True)


# --- a worker killed during a rebalance --------------------------------------------------------------------------


@pytest.fixture
def group_admin(apache_kafka_cluster: ApacheKafkaCluster) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=apache_kafka_cluster.bootstrap_servers, request_timeout_ms=5000)
    try:
        yield admin
    finally:
        admin.close()


def group_state(admin: KafkaAdminClient, group: str) -> tuple[str, int]:
    """The consumer group's state (Empty, Stable, PreparingRebalance, CompletingRebalance) and its member count."""
    described = admin.describe_groups([group])[group]
    return str(described["group_state"]), len(described["members"])


def committed_offsets(admin: KafkaAdminClient, group: str) -> dict[Partition, int]:
    """The next offset to read of every input partition, as the group last committed it to Kafka."""
    offsets = admin.list_group_offsets({group: None})[group]
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


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
    adapters = Adapters(env, seed, rate=REBALANCE_RATE).start()
    wait_until(lambda: applied_count(engine, group) > 100, 60, "worker-1 to apply the first records")
    wait_until(lambda: group_state(group_admin, group) == ("Stable", 1), 30, "worker-1 alone in a stable group")
    clock.mark("worker-1 applies")

    second = workers.start(env, name="worker-2", wait=False)
    states: list[tuple[str, int]] = []

    def rebalancing() -> bool:
        states.append(group_state(group_admin, group))
        return states[-1][0] in ("PreparingRebalance", "CompletingRebalance")

    wait_until(rebalancing, 60, "worker-2's joining to start a rebalance", interval=0.02)
    apply_pid = first.apply_pid()
    first.kill()
    assert adapters.publishing, "the adapters still publish when worker-1 dies: make the run longer"
    # The apply process dies with its parent (PR_SET_PDEATHSIG): once it is gone nothing of worker-1 writes.
    wait_until(lambda: apply_pid is None or not psutil.pid_exists(apply_pid), 10, "worker-1's apply process to die")
    before = applied_offsets(engine, group)
    ahead = sum(off + 1 - committed_offsets(group_admin, group).get(tp, 0) for tp, off in before.items())
    applied = sum(off + 1 for off in before.values())
    clock.mark(f"worker-1 killed in {states[-1]}: {applied} records applied, {ahead} of them not committed to Kafka")

    # The coordinator drops the dead member after its session timeout; worker-2 then holds every partition.
    wait_until(lambda: group_state(group_admin, group) == ("Stable", 1), 60, "worker-2 alone in a stable group")
    clock.mark("worker-2 holds every partition")
    wait_until(lambda: applied_offsets(engine, group) != before, 60, "worker-2 to apply records")
    first = workers.start(env, name="worker-1")
    wait_until(lambda: group_state(group_admin, group) == ("Stable", 2), 60, "both workers in a stable group")
    clock.mark("worker-1 back")

    summary = adapters.summary(events)
    clock.mark("adapters done")
    wait_until_complete(engine, cluster.url, prefix, group, events)
    clock.mark("caught up")
    for worker in (first, second):
        assert worker.proc.poll() is None, f"{worker.env['CXSTREAM_WORKER_ID']} exited:\n{worker.log()[-4000:]}"
        assert transactional(worker), "the workers publish their outputs in Kafka transactions"
    workers.stop_all()
    print(f"\n{clock.phases}\n{summary}")
    assert_exactly_the_oracle(engine, cluster.url, prefix, group, events)
