"""Shared fixtures: the real embedded broker, Apache Kafka, real SQLite and PostgreSQL, and worker processes."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.apache_kafka import ApacheKafkaCluster
from tests.support.processes import free_port
from tests.support.workers import WorkerFactory

# Timing belongs to `make bench`: a pause of a shared, loaded machine must not fail an example (Hypothesis' default
# deadline is 200 ms an example). Tests that set their own settings keep them.
hypothesis_settings.register_profile("cxstream", deadline=None)
hypothesis_settings.load_profile("cxstream")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="also run the long soak tests (marked soak)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="a soak run: pytest --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


#: The brokers a test marked ``conformance`` runs on: the embedded default and Apache Kafka.
BROKERS = ("tansu", pytest.param("apache-kafka", marks=pytest.mark.apache_kafka))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each ``conformance`` test once per broker: one set of tests, not copies."""
    if metafunc.definition.get_closest_marker("conformance") and "kafka_url" in metafunc.fixturenames:
        metafunc.parametrize("kafka_url", BROKERS, indirect=True, scope="session")


@pytest.fixture(scope="session")
def kafka_url(request: pytest.FixtureRequest) -> str:
    """The URL of the broker a test runs on: the embedded one unless the test is parametrised with another."""
    broker = getattr(request, "param", "tansu")
    if broker == "apache-kafka":
        return str(request.getfixturevalue("apache_kafka").url)
    return str(request.getfixturevalue("tansu_url"))


@pytest.fixture(scope="session")
def tansu_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka URL: CXSTREAM_TEST_KAFKA_URL, or the embedded Tansu broker started on a free port."""
    if os.environ.get("CXSTREAM_TEST_KAFKA_URL"):
        yield os.environ["CXSTREAM_TEST_KAFKA_URL"]
        return
    from streams.sandbox.embedded_broker import start_broker, stop_process

    port = free_port()
    proc = start_broker(port, log_path=tmp_path_factory.mktemp("broker") / "tansu.log")
    try:
        yield f"kafka://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaCluster]:
    """One Apache Kafka node (KRaft) for the conformance tests, shared by the session (topics differ per test).

    Never skips: without Java, or when Maven cannot fetch the broker, the tests that need it fail.
    """
    cluster = ApacheKafkaCluster(tmp_path_factory.mktemp("apache-kafka"), size=1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def apache_kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaCluster]:
    """Three Apache Kafka nodes (replication factor 3, min.insync.replicas=2) for a module of fault tests: each test
    uses topics of its own and leaves every node running again (``restart`` waits until it serves)."""
    cluster = ApacheKafkaCluster(tmp_path_factory.mktemp("apache-kafka-3"), size=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL of a real PostgreSQL: CXSTREAM_TEST_POSTGRES_URL, or a throwaway server from pgserver.

    Never skips: a PostgreSQL test that cannot reach a server fails.
    """
    if os.environ.get("CXSTREAM_TEST_POSTGRES_URL"):
        yield os.environ["CXSTREAM_TEST_POSTGRES_URL"]
        return
    import pgserver

    # Outside pytest's basetemp: pytest prunes old basetemps, and a concurrent session would pull the data
    # directory from under a running server. pgserver runs the server as its own user when we are root.
    data_dir = tempfile.mkdtemp(prefix="cxstream-pg-")
    os.chmod(data_dir, 0o755)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def _psycopg_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


@contextmanager
def _fresh_postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on ``server_url``, dropped afterwards."""
    name = f"cxs_{uuid.uuid4().hex[:12]}"
    # NullPool: a fresh admin connection each time, so a test that restarted or cut off the server cannot
    # leave a dead pooled connection behind for the clean-up.
    admin = create_engine(_psycopg_url(server_url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, query = _psycopg_url(server_url).partition("?")
    url = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with _fresh_postgres_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def second_database_url(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Another fresh database of ``database_url``'s kind (a rebuild beside the original)."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    with _fresh_postgres_database(str(request.getfixturevalue("postgres_server_url"))) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file for one test."""
    return f"sqlite:///{tmp_path / 'cxstream.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix of the test's own, so tests sharing the broker do not see each other's records."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def workers(tmp_path: Path, kafka_url: str) -> Iterator[WorkerFactory]:
    """Starts `cxstream worker` processes for a test and stops (or kills) them all afterwards."""
    factory = WorkerFactory(tmp_path, kafka_url)
    try:
        yield factory
    finally:
        factory.stop_all()
