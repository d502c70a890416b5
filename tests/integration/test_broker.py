"""The embedded broker as an operator meets it: `cxstream broker`, twice, and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from kafka import KafkaAdminClient

from streams.sandbox.embedded_broker import port_is_free, wait_for_port
from tests.support.processes import free_port, wait_until


def _broker(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CXSTREAM_KAFKA_URL": f"kafka://127.0.0.1:{port}"}
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "broker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_broker_serves_kafka_and_a_second_one_on_the_same_port_says_why_it_cannot() -> None:
    port = free_port()
    first = _broker(port)
    try:
        wait_for_port(port, timeout=15)
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        assert isinstance(admin.list_topics(), list)
        admin.close()

        second = _broker(port)
        _out, err = second.communicate(timeout=30)
        assert second.returncode == 1
        message = err.decode()
        assert f"port {port} is already in use" in message
        assert "Traceback" not in message and "panicked" not in message
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=15) == 0, "Ctrl-C is a clean stop"
    wait_until(lambda: port_is_free(port), 10, "the port to be released")


def test_bad_setting_names_the_variable() -> None:
    env = {**os.environ, "CXSTREAM_PARTITIONS": "many"}
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "broker"], env=env, capture_output=True, timeout=30)
    assert proc.returncode != 0
    assert "CXSTREAM_PARTITIONS" in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()
