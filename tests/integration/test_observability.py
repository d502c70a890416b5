"""The worker's Prometheus metrics, read the way operators read them.

- a real Prometheus server (Debian's ``prometheus`` binary) scrapes a worker's /metrics every second, and its HTTP
  API reports exactly the events the worker applied, an end-to-end latency histogram and a quantile of it;
- ``promtool check metrics`` accepts the /metrics page as it is;
- every record on the dead-letter topic is counted in ``cxstream_dead_letters_total`` with its channel, reason
  and stage, adapter rejects included.

One worker (SQLite) serves the whole module: a worker start costs a consumer-group join.
"""

from __future__ import annotations

import math
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select

from config.topics import Topics
from schemas.deadletter import DeadLetter
from sinks import tables as t
from sinks.database import make_engine
from tests.integration.prometheus_tools import prometheus_server_binary, promtool  # noqa: F401  (pytest fixtures)
from tests.support.kafka import read_topic
from tests.support.processes import free_port, wait_until
from tests.support.results import caught_up, consumed_events, end_offsets, run_cli
from tests.support.workers import WorkerFactory, WorkerProcess

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"

# The session fixtures may install Debian's prometheus package first: more than the suite's default 300 s per test.
PROMETHEUS_TIMEOUT = pytest.mark.timeout(900)


@dataclass
class ObservedWorker:
    """The module's worker, its settings and results database."""

    worker: WorkerProcess
    env: dict[str, str]
    engine: Engine
    topics: Topics
    group_id: str


@pytest.fixture(scope="module")
def observed(kafka_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedWorker]:
    """A worker on SQLite that has applied every sample file."""
    tmp = tmp_path_factory.mktemp("observability")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    database_url = f"sqlite:///{tmp / 'cxstream.db'}"
    factory = WorkerFactory(tmp, kafka_url)
    env = factory.env(database_url, prefix)
    for sample in sorted(SAMPLES.iterdir()):
        run_cli(env, "publish", "--channel", sample.name.split(".")[0], str(sample))
    engine = make_engine(database_url)
    try:
        worker = factory.start(env)
        observed = ObservedWorker(worker, env, engine, Topics(prefix), f"{prefix}app")
        wait_for_applied(observed, kafka_url)
        yield observed
    finally:
        factory.stop_all()
        engine.dispose()


def wait_for_applied(observed: ObservedWorker, kafka_url: str) -> None:
    """Wait until the worker has applied every record now on the channel topics."""
    ends = end_offsets(kafka_url, observed.topics.channels)
    wait_until(lambda: caught_up(observed.engine, observed.group_id, ends), 90, "the worker to apply every record")


def metric_values(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample called ``name`` in an exposition text, by its label set."""
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


# --- a real Prometheus server -----------------------------------------------------------------------


@contextmanager
def prometheus_server(binary: str, workdir: Path, target: str) -> Iterator[str]:
    """Run Prometheus scraping ``target`` (host:port) every second; yield its base URL; stop it afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: cxstream\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    log_path = workdir / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(ready, 30, "prometheus to be ready")
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus' HTTP API: the result vector (empty when no series matches)."""
    resp = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    resp.raise_for_status()
    body = resp.json()
    assert body["status"] == "success", body
    assert body["data"]["resultType"] == "vector", body
    return list(body["data"]["result"])


def scalar(url: str, promql: str) -> float | None:
    """The value of a query that gives one series, or None while it gives none."""
    result = query(url, promql)
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


#: A marketplace order by the eBay buyer of the samples, with the e-mail of the samples' web customer Bob: it merges
#: the two customers, so the eBay customer's earlier timeline entries are re-emitted under the survivor's id.
MERGING_ORDER = {
    "marketplace": "ebay",
    "order_id": "obs-merge-1",
    "buyer_id": "bob_j_1980",
    "buyer_email": "bob.jones@example.net",
    "occurred_at": "2024-05-20T10:00:00Z",
    "status": "placed",
    "total": "10.00",
    "currency": "GBP",
}


@PROMETHEUS_TIMEOUT
def test_prometheus_scrapes_the_events_the_worker_applied(
    observed: ObservedWorker,
    kafka_url: str,
    prometheus_server_binary: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    # A later batch that re-emits entries of events applied earlier: they are not new events, and must not be
    # observed again in the end-to-end latency histogram (their lag would be how long ago they were applied).
    order = tmp_path / "merge.jsonl"
    order.write_bytes(orjson.dumps(MERGING_ORDER) + b"\n")
    run_cli(observed.env, "publish", "--channel", "ecommerce", "--strict", str(order))
    wait_for_applied(observed, kafka_url)
    applied = len(consumed_events(kafka_url, observed.topics.prefix))
    with observed.engine.connect() as conn:
        entries = conn.scalar(select(func.count()).select_from(t.touchpoints))
    assert applied > 0 and entries

    target = f"127.0.0.1:{observed.worker.web_port}"
    with prometheus_server(prometheus_server_binary, tmp_path / "prometheus", target) as url:
        seen: dict[str, float | None] = {}

        def scraped() -> bool:
            seen["up"] = scalar(url, 'up{job="cxstream"}')
            seen["events"] = scalar(url, "sum(cxstream_events_in_total)")
            seen["latencies"] = scalar(url, "sum(cxstream_end_to_end_latency_seconds_count)")
            return seen["up"] == 1 and seen["events"] == applied and (seen["latencies"] or 0) > 0

        try:
            wait_until(scraped, 30, f"prometheus to report {applied} events applied", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answers: {seen}") from None

        # One latency observation per event that got a timeline entry (some sample events carry no usable
        # identifier and get none), not one per re-emission of an entry.
        assert (scalar(url, "sum(cxstream_identity_merges_total)") or 0) >= 1
        assert seen["latencies"] == entries
        p95 = scalar(url, "histogram_quantile(0.95, sum by (le) (cxstream_end_to_end_latency_seconds_bucket))")
        assert p95 is not None and math.isfinite(p95) and p95 > 0
        by_channel = query(url, "sum by (channel) (cxstream_events_in_total)")
        channels = {r["metric"]["channel"]: float(r["value"][1]) for r in by_channel}
        assert set(channels) == {"store", "phone", "web", "ecommerce"}
        assert sum(channels.values()) == applied

    assert time.monotonic() - started < 60


@PROMETHEUS_TIMEOUT
def test_promtool_accepts_the_metrics_page(observed: ObservedWorker, promtool: str) -> None:  # noqa: F811
    text = observed.worker.metrics_text()
    assert "cxstream_end_to_end_latency_seconds_bucket" in text
    # Read from the database at scrape time (at most once a minute: its first scrape may precede any customer).
    assert "# TYPE cxstream_engagement_score gauge" in text and "# TYPE cxstream_engagement_customers gauge" in text
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"promtool check metrics:\n{proc.stdout}\n{proc.stderr}"


def test_adapter_rejects_are_counted_as_dead_letters(observed: ObservedWorker, kafka_url: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    good = [
        {
            "type": "page",
            "messageId": f"{marker}-good-{i}",
            "anonymousId": f"anon-{marker}",
            "timestamp": "2024-05-01T08:00:00.000Z",
            "name": "Home",
        }
        for i in range(2)
    ]
    lines = [orjson.dumps(record) for record in good] + [
        b"this is not json " + marker.encode(),
        b'["not", "an", "object", "' + marker.encode() + b'"]',
        # a track call without an event name, and a call type cxstream does not accept
        orjson.dumps(
            {"type": "track", "messageId": f"{marker}-bad-1", "anonymousId": "a", "timestamp": "2024-05-01T08:00:00Z"}
        ),
        orjson.dumps(
            {"type": "group", "messageId": f"{marker}-bad-2", "anonymousId": "a", "timestamp": "2024-05-01T08:00:00Z"}
        ),
        b'{"messageId": "' + marker.encode() + b'-bad-3", "name": "\xff\xfe"}',
    ]
    expected = Counter({"invalid_json": 1, "not_an_object": 1, "validation_error": 2, "invalid_utf8": 1})
    path = tmp_path / "web-with-bad-lines.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    out = run_cli(observed.env, "publish", "--channel", "web", str(path)).stdout.decode()
    assert f"read {len(lines)}, published {len(good)}, dead-lettered {expected.total()}" in out, out

    # The dead-letter topic holds the file's rejects (and whatever else was rejected under this prefix).
    def mine(records: list[tuple[bytes | None, bytes]]) -> list[DeadLetter]:
        letters = [DeadLetter.model_validate_json(value) for _, value in records]
        return [d for d in letters if d.source_file == str(path)]

    # publish returned after the broker acknowledged every record, so a drained read sees them all.
    records = read_topic(kafka_url, observed.topics.deadletter)
    assert Counter(d.reason for d in mine(records)) == expected
    assert {(d.channel, d.stage) for d in mine(records)} == {("web", "adapter")}
    on_topic = Counter(
        (d.channel or "unknown", d.reason, d.stage)
        for d in map(DeadLetter.model_validate_json, (v for _, v in records))
    )

    # The worker counts every record on the dead-letter topic, by channel, reason and stage.
    counted: dict[frozenset[tuple[str, str]], float] = {}

    def all_counted() -> bool:
        counted.update(metric_values(observed.worker.metrics_text(), "cxstream_dead_letters_total"))
        return {k: v for k, v in counted.items() if v} == {
            frozenset({"channel": c, "reason": r, "stage": s}.items()): float(n) for (c, r, s), n in on_topic.items()
        }

    try:
        wait_until(all_counted, 30, "the worker to count every dead letter")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; counted {counted}, on the topic {on_topic}") from None
    for reason, n in expected.items():
        assert counted[frozenset({"channel": "web", "reason": reason, "stage": "adapter"}.items())] >= n

    # The good lines of the same file are applied as usual, and then nothing is behind: the lag gauge covers the
    # input topics only (the dead-letter topic, which the worker reads to count, was once reported as lag).
    wait_for_applied(observed, kafka_url)
    lag: dict[frozenset[tuple[str, str]], float] = {}

    def caught_up_gauge() -> bool:
        lag.clear()
        lag.update(metric_values(observed.worker.metrics_text(), "cxstream_consumer_lag_records"))
        return bool(lag) and not any(lag.values())

    try:
        wait_until(caught_up_gauge, 30, "the lag gauge to read 0 once everything is applied")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last read {lag}") from None
    assert {dict(labels)["topic"] for labels in lag} <= set(observed.topics.channels)
