"""User errors at the command line: one clear line naming what to change, an exit code, nothing half-done."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CXSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_timeline_without_a_database_says_so_and_creates_none(tmp_path: Path) -> None:
    proc = cli(tmp_path, "timeline", "ann@example.org")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "no results database at cxstream.db" in proc.stderr
    assert not (tmp_path / "cxstream.db").exists()


def test_a_setting_that_cannot_be_parsed_is_one_line_naming_it(tmp_path: Path) -> None:
    proc = cli(tmp_path, "db", "upgrade", CXSTREAM_IDENTIFIER_LIMITS="{not json")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "CXSTREAM_IDENTIFIER_LIMITS: cannot be parsed" in proc.stderr


def test_a_worker_exposed_with_the_public_write_key_refuses_to_start(tmp_path: Path) -> None:
    proc = cli(tmp_path, "worker", CXSTREAM_WEB_HOST="0.0.0.0")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "CXSTREAM_WRITE_KEYS" in proc.stderr and "dev-write-key" in proc.stderr


def test_version_and_an_api_without_read_keys(tmp_path: Path) -> None:
    proc = cli(tmp_path, "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("cxstream ")
    proc = cli(tmp_path, "api")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "CXSTREAM_READ_KEYS" in proc.stderr


def test_simulator_arguments_out_of_range_are_one_line_each(tmp_path: Path) -> None:
    for args, named in (
        (("--late", "1.5"), "'--late': 1.5 is not in the range"),
        (("--duplicates", "-0.1"), "'--duplicates'"),
        (("--customers", "0"), "'--customers'"),
        (("--warmup-days", "-1"), "'--warmup-days'"),
        (("--degrade", "marketplace"), "'--degrade'"),
    ):
        proc = cli(tmp_path, "simulate", "--out", str(tmp_path / "out"), *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and named in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_worker_whose_sqlite_directory_is_missing_says_so_in_one_line(tmp_path: Path, kafka_url: str) -> None:
    missing = tmp_path / "no-such-dir"
    database = f"sqlite:///{missing}/cx.db"
    proc = cli(
        tmp_path,
        "worker",
        CXSTREAM_KAFKA_URL=kafka_url,
        CXSTREAM_DATABASE_URL=database,
        CXSTREAM_TOPIC_PREFIX="tnodir.",
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "CXSTREAM_DATABASE_URL: cannot make the worker's lease file" in proc.stderr
    assert f"{missing}/cx.db-" in proc.stderr and "(No such file or directory)" in proc.stderr
    assert not missing.exists()


def test_a_demo_whose_metrics_port_is_taken_says_so_and_starts_nothing(tmp_path: Path) -> None:
    # Found by review: the demo waited for /metrics on its worker's port, and took another process's answer there
    # for its own worker's ("worker up") while that worker waited for its id's lease or failed to bind.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli(tmp_path, "demo", CXSTREAM_WEB_PORT=str(port), CXSTREAM_DATA_DIR=str(tmp_path / "var"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"CXSTREAM_WEB_PORT: 127.0.0.1:{port} is in use" in proc.stderr
    assert not (tmp_path / "var").exists(), "nothing started"
