"""A real Apache Kafka for the test suite: fetched with Maven, run in KRaft mode on loopback.

``python -m tests.support.apache_kafka fetch`` (which ``make test`` runs) copies the broker of the version
in ``apache-kafka.pom.xml`` and its dependencies into ``var/apache-kafka/<version>/lib``; the fixtures start
clusters of one node (the conformance tests) or three (the fault tests) from there. Each node is a combined
broker and controller, so a three-node cluster has a quorum of three controllers: killing one leaves two,
which keeps both the metadata quorum and ``min.insync.replicas=2``.

A missing Java or Maven, or a failed download, raises :class:`ApacheKafkaError`: these tests fail, never skip.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
POM = Path(__file__).with_name("apache-kafka.pom.xml")
VERSION = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text()).group(1)  # type: ignore[union-attr]
CACHE = Path(os.environ.get("CXSTREAM_APACHE_KAFKA_CACHE", ROOT / "var" / "apache-kafka")) / VERSION


class ApacheKafkaError(RuntimeError):
    """Apache Kafka could not be fetched or started: the message says what to install or where to look."""


def java() -> str:
    """The ``java`` to run the broker with: $JAVA_HOME/bin/java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home, "bin", "java") if home else None
    found = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if not found:
        raise ApacheKafkaError("Apache Kafka needs Java 17 or newer: install a JDK (apt-get install openjdk-17-jdk)")
    return found


def fetch(cache: Path = CACHE) -> Path:
    """The directory holding Apache Kafka's jars, downloaded with Maven the first time."""
    lib = cache / "lib"
    if (lib / ".complete").exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ApacheKafkaError("fetching Apache Kafka needs Maven: install it (apt-get install maven)")
    partial = cache / "lib.partial"
    shutil.rmtree(partial, ignore_errors=True)
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    jar = partial / f"kafka_2.13-{VERSION}.jar"
    if done.returncode != 0 or not jar.exists():
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise ApacheKafkaError(
            f"Maven could not fetch Apache Kafka {VERSION} (exit {done.returncode}): " + " | ".join(tail)
        )
    shutil.rmtree(lib, ignore_errors=True)
    partial.rename(lib)
    (lib / ".complete").write_text(VERSION)
    return lib


def cluster_id() -> str:
    """A cluster id as ``kafka-storage.sh random-uuid`` prints it (not starting with '-', which reads as an option)."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if value[0].isalnum():
            return value


_LOG4J = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={path}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
"""


@dataclass
class Node:
    """One combined broker and controller of a cluster."""

    node_id: int
    port: int
    controller_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port of its client listener."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """True while its process runs."""
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ApacheKafkaCluster:
    """``size`` Apache Kafka nodes in KRaft mode on loopback, with their data under ``directory``."""

    directory: Path
    size: int = 1
    partitions: int = 4
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lib = fetch()
        self.java = java()
        self.nodes = [Node(i, free_port(), free_port(), self.directory / f"node-{i}") for i in range(1, self.size + 1)]

    @property
    def url(self) -> str:
        """The cluster's bootstrap URL as cxstream's settings take it."""
        return "kafka://" + ",".join(node.address for node in self.nodes)

    @property
    def bootstrap_servers(self) -> list[str]:
        """host:port of every node."""
        return [node.address for node in self.nodes]

    def _properties(self, node: Node) -> str:
        replicas = min(self.size, 3)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        settings = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": node.directory / "data",
            "num.partitions": self.partitions,
            "default.replication.factor": replicas,
            "min.insync.replicas": max(1, replicas - 1),
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": 8,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": max(1, replicas - 1),
            "transaction.state.log.num.partitions": 4,
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": 0,
            # A killed node is noticed after 4 s instead of 9: the fault tests wait for leadership to move.
            "broker.heartbeat.interval.ms": 1000,
            "broker.session.timeout.ms": 4000,
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _command(self, node: Node, *args: str) -> list[str]:
        return [
            self.java,
            "-Xms64m",
            "-Xmx384m",
            # Quick to start, little JIT work: these brokers carry test traffic on a 2-core machine.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{node.directory / 'log4j.properties'}",
            "-cp",
            f"{self.lib}/*",
            *args,
        ]

    def start(self, timeout: float = 90.0) -> ApacheKafkaCluster:
        """Format every node's storage with one cluster id, start them, and wait until all brokers serve."""
        cid = cluster_id()
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            (node.directory / "server.properties").write_text(self._properties(node))
            (node.directory / "log4j.properties").write_text(_LOG4J.format(path=node.directory / "server.log"))
            formatted = subprocess.run(
                self._command(
                    node,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cid,
                    "-c",
                    str(node.directory / "server.properties"),
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if formatted.returncode != 0:
                raise ApacheKafkaError(f"formatting node {node.node_id} failed: {formatted.stdout}{formatted.stderr}")
        for node in self.nodes:
            self._spawn(node)
        self.wait_ready(timeout)
        return self

    def _spawn(self, node: Node) -> None:
        with open(node.directory / "stdout.log", "ab") as out:
            node.proc = subprocess.Popen(
                self._command(node, "kafka.Kafka", str(node.directory / "server.properties")),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def node(self, node_id: int) -> Node:
        """The node of id ``node_id``."""
        return self.nodes[node_id - 1]

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until every running node is a registered broker that answers metadata requests."""
        alive = {node.node_id for node in self.nodes if node.alive}
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None and node.node_id in alive:
                    raise ApacheKafkaError(f"node {node.node_id} exited: {self.log_tail(node)}")
            try:
                brokers = self._registered_brokers()
                if alive <= brokers:
                    return
                last = f"brokers registered: {sorted(brokers)}, expected {sorted(alive)}"
            except KafkaError as exc:
                last = exc
            time.sleep(0.5)
        raise ApacheKafkaError(f"Apache Kafka not ready after {timeout:.0f}s ({last}); logs in {self.directory}")

    def _registered_brokers(self) -> set[int]:
        servers = [node.address for node in self.nodes if node.alive]
        admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=5000, client_id="cxstream-tests")
        try:
            # DescribeCluster lists fenced brokers too (a killed node, until its session expires): not serving.
            brokers = admin.describe_cluster()["brokers"]
            return {int(broker["broker_id"]) for broker in brokers if not broker.get("is_fenced", False)}
        finally:
            admin.close()

    def leader_of(self, topic: str, partition: int, timeout: float = 15.0) -> int:
        """Node id of the leader of one partition.

        Retried for a while: after a kill, the admin client may ask the dead node, which stays in the cluster's
        metadata until it is fenced.
        """
        deadline = time.monotonic() + timeout
        while True:
            admin = None
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers_alive, request_timeout_ms=5000)
                (described,) = admin.describe_topics([topic])
                for part in described["partitions"]:
                    if part["partition_index"] == partition:
                        return int(part["leader_id"])
                raise ApacheKafkaError(f"{topic} has no partition {partition}")
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
            finally:
                if admin is not None:
                    admin.close()

    @property
    def bootstrap_servers_alive(self) -> list[str]:
        """host:port of the nodes that run."""
        return [node.address for node in self.nodes if node.alive]

    def quorum_leader(self) -> int:
        """Node id of the active controller (the KRaft quorum's leader), as the running nodes record it."""
        for node in self.nodes:
            state = node.directory / "data" / "__cluster_metadata-0" / "quorum-state"
            if node.alive and state.exists():
                with contextlib.suppress(ValueError, OSError):
                    leader = json.loads(state.read_text()).get("leaderId", -1)
                    if leader > 0:
                        return int(leader)
        raise ApacheKafkaError("no running node knows the quorum's leader")

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: a crash, with no controlled shutdown."""
        node = self.node(node_id)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def restart(self, node_id: int, timeout: float = 90.0) -> None:
        """Start a stopped node again on its data, and wait until it is a registered broker again."""
        node = self.node(node_id)
        if node.alive:
            raise ApacheKafkaError(f"node {node_id} is running")
        self._spawn(node)
        self.wait_ready(timeout)

    def log_tail(self, node: Node, lines: int = 20) -> str:
        """The end of a node's logs."""
        text = ""
        for name in ("stdout.log", "server.log"):
            path = node.directory / name
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def stop(self) -> None:
        """Stop every node; leaves nothing running. SIGKILL: a test's cluster is thrown away, and a controlled
        shutdown of each node cost 6 s or more of every test's teardown."""
        for node in self.nodes:
            if node.proc is not None:
                if node.proc.poll() is None:
                    node.proc.kill()
                node.proc.wait()


def main(argv: list[str]) -> int:
    """``fetch``: download Apache Kafka into the cache (what ``make test`` runs before the suite)."""
    if argv != ["fetch"]:
        print("usage: python -m tests.support.apache_kafka fetch", file=sys.stderr)
        return 2
    try:
        print(f"Apache Kafka {VERSION}: {fetch()}")
    except ApacheKafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
