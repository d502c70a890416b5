"""A local S3 server (moto) and a broker on durable S3 storage that a test can kill and restart.

Tansu keeps its topics and consumer-group offsets in S3 when started with ``--storage-engine s3://BUCKET/``;
against a local ``moto_server`` a broker can be killed with SIGKILL and restarted on the same storage, a real
broker crash rather than a cut connection (docs/architecture.md §7).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.sandbox.embedded_broker import port_is_free, start_broker, stop_process, wait_for_port
from tests.support.processes import free_port, wait_until

#: Credentials moto accepts (any will do); the broker reads them from its environment.
ACCESS_KEY, SECRET_KEY, REGION = "cxstream-test", "cxstream-test-secret", "us-east-1"


class S3Server:
    """A running ``moto_server`` on loopback."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"

    @property
    def broker_env(self) -> dict[str, str]:
        """The environment Tansu needs to use this server as its S3 storage."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (Tansu does not create its bucket: without one every request fails)."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Stop the server and reap it."""
        stop_process(self.proc)


def start_s3_server(log_path: Path) -> S3Server:
    """Start ``moto_server`` on a free loopback port; return once it accepts connections."""
    port = free_port()
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, timeout=30)
    except Exception:
        stop_process(proc)
        raise
    return S3Server(proc, port)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A local S3 server (``moto_server``) for the session, stopped at the end."""
    server = start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


class DurableBroker:
    """The embedded broker on S3 storage, owned by one test module so that it can be killed and restarted."""

    def __init__(self, s3: S3Server, bucket: str, log_path: Path) -> None:
        self.s3 = s3
        self.storage = f"s3://{bucket}/"
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def kafka_url(self) -> str:
        """The URL clients use; it stays the same across restarts."""
        return f"kafka://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the broker on its port and storage (the same every time)."""
        self.proc = start_broker(self.port, self.storage, log_path=self.log_path, env=self.s3.broker_env)

    def kill(self) -> None:
        """SIGKILL the broker and wait until the process is gone, so that its port can be bound again."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        wait_until(lambda: port_is_free(self.port), 30, "the killed broker's port to be free")

    def stop(self) -> None:
        """Stop the broker if it runs."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
