"""The worker's SQLite writer reads its file through a memory map of the configured size."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from config.settings import Settings
from sinks.database import make_engine


def test_writer_maps_the_configured_size_and_readers_see_its_commits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cx.db'}"
    writer = make_engine(url, writer=True, sqlite_mmap_mb=64)
    reader = make_engine(url)
    with writer.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == 64 * 1024 * 1024
    with reader.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == 0
    with writer.begin() as conn:
        conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(text("INSERT INTO t VALUES (:k, :v)"), [{"k": i, "v": "x" * 200} for i in range(2000)])
    with writer.begin() as conn:
        conn.execute(text("UPDATE t SET v = 'y' WHERE k % 2 = 0"))
    with reader.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t WHERE v = 'y'")).scalar() == 1000
    writer.dispose()
    reader.dispose()


def test_a_negative_map_size_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXSTREAM_SQLITE_MMAP_MB", "-1")
    with pytest.raises(ValidationError, match="sqlite_mmap_mb"):
        Settings()
