"""``cxstream api`` as a user runs it: a process of its own over a results database, called over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.support.population import SALT
from tests.support.processes import free_port, wait_until

#: The read key the API processes of the tests accept (beside another one).
READ_KEY = "api-read-key"


@contextmanager
def read_api(database_url: str, log: Path, hashing: bool = False, **settings: str) -> Iterator[str]:
    """Run the read API on ``database_url`` (identifiers hashed with the population's salt when ``hashing``; other
    ``settings`` by name, as ``kafka_url``); yield its base URL; stop it on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXSTREAM_")}
    env.update(CXSTREAM_DATABASE_URL=database_url, CXSTREAM_READ_KEYS=f"other-key,{READ_KEY}")
    if hashing:
        env.update(CXSTREAM_HASH_IDENTIFIERS="true", CXSTREAM_IDENTIFIER_SALT=SALT)
    env.update({f"CXSTREAM_{name.upper()}": value for name, value in settings.items()})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "api", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return requests.get(f"{base}/openapi.json", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(up, 30, "the read API to answer")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
