"""A bad setting stops the command line before it starts anything, with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.processes import free_port


def test_the_command_line_refuses_to_start_hashing_without_a_salt(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXSTREAM_")}
    env |= {
        "CXSTREAM_HASH_IDENTIFIERS": "true",
        "CXSTREAM_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        # Nobody listens there: a worker that got past its settings could not reach anyone else's broker.
        "CXSTREAM_KAFKA_URL": f"kafka://127.0.0.1:{free_port()}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"], env=env, capture_output=True, timeout=60, cwd=tmp_path
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "CXSTREAM_IDENTIFIER_SALT" in err and "CXSTREAM_HASH_IDENTIFIERS" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x.db").exists(), "nothing started"
