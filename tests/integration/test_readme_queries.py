"""The README's example queries run as written on SQLite and PostgreSQL, over a database a worker filled."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import text

from sinks.database import make_engine
from tests.support.population import fill

README = Path(__file__).resolve().parents[2] / "README.md"


def example_queries() -> list[str]:
    """The ```sql blocks of the README's "Example queries" section."""
    section = README.read_text().split("### Example queries", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def test_the_readme_example_queries_run_on_both_databases(database_url: str) -> None:
    queries = example_queries()
    assert len(queries) == 4
    fill(database_url, hashing=False)
    engine = make_engine(database_url)
    with engine.connect() as conn:
        rows = [conn.execute(text(query)).all() for query in queries]
    nps, _journey, _overdue, repeats = rows
    assert nps and all(row.status in ("provisional", "final") for row in nps)
    assert repeats and sum(row.contacts for row in repeats) >= sum(row.repeats for row in repeats)
