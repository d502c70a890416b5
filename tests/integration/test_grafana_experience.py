"""The experience dashboard's SQL is real: every query of docker/grafana/dashboards/experience.json runs on PostgreSQL.

Without a Grafana: the template variables are replaced as Grafana's SQL data sources replace them (their own
queries run first, for their values), then the few macros the dashboard uses as the PostgreSQL data source expands
them (pkg/tsdb/grafana-postgresql-datasource/macros.go), over a database a worker filled with a simulated population.
Each query must return rows with the columns its panel reads. The provisioning files must parse, and name the
datasource the panels use, with the database and credentials of docker/compose.yaml.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Connection, Row, text

from sinks.database import make_engine
from tests.support.grafana import check_dashboard_model
from tests.support.population import fill

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER / "compose.yaml"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "experience.json"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "postgres.yml"

#: The dashboard's time range in the test: around the population's two weeks (journeys.DEFAULT_START, 2024-03-04).
TIME_RANGE = (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))

#: What a time-series query must return, in this order (Grafana's long format: one series per ``metric``).
TIME_SERIES_COLUMNS = ["time", "metric", "value"]

#: The columns Grafana reads of an annotation query; ``time`` is required.
ANNOTATION_COLUMNS = {"time", "timeend", "text", "tags"}

MACRO = re.compile(r"\$(\w+)\(([^)]*)\)")  # Grafana's own pattern: any $name(...) is a macro
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand_macros(sql: str, time_range: tuple[datetime, datetime]) -> str:
    """The macros the dashboard uses, as the PostgreSQL data source expands them; any other fails the test, as
    Grafana fails the query ("unknown macro"), until it is added here."""
    start, end = (_rfc3339(at) for at in time_range)

    def expand(match: re.Match[str]) -> str:
        name, argument = match[1], match[2].strip()
        if name == "__timeFilter":
            return f"{argument} BETWEEN '{start}' AND '{end}'"
        if name == "__timeFrom":
            return f"'{start}'"
        if name == "__timeTo":
            return f"'{end}'"
        raise AssertionError(f"${name}(...) is not a macro this test expands: add it to expand_macros")

    return MACRO.sub(expand, sql)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def replace_variables(sql: str, variables: Mapping[str, dict[str, Any]], values: Mapping[str, list[str]]) -> str:
    """``$name`` and ``${name}`` of the dashboard's variables, as Grafana's SQL data sources format them: a
    multi-value or include-all variable as a list of quoted literals, any other as its bare value (quotes doubled)."""

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in variables:
            return match[0]  # a macro, or not a variable: Grafana leaves it alone
        variable, chosen = variables[name], values[name]
        if variable.get("multi") or variable.get("includeAll"):
            return ",".join(_quote(value) for value in chosen)
        (value,) = chosen
        return value.replace("'", "''")

    return VARIABLE.sub(replace, sql)


def chosen_values(variable: dict[str, Any], options: Sequence[str]) -> list[str]:
    """The variable's saved selection ("All" is every option), which must be among the options its query gave."""
    current = variable["current"]["value"]
    chosen = current if isinstance(current, list) else [current]
    if "$__all" in chosen:
        return list(options)
    assert set(chosen) <= set(options), f"variable {variable['name']}: {chosen} not among its options {options}"
    return chosen


class Queries:
    """Runs the dashboard's SQL as Grafana would send it, variables resolved in the dashboard's order."""

    def __init__(self, conn: Connection, dashboard: dict[str, Any]) -> None:
        self.conn = conn
        self.variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        self.values: dict[str, list[str]] = {}
        for variable in self.variables.values():
            assert variable["type"] == "query", f"variable {variable['name']}: only query variables are resolved here"
            _, rows = self.run(variable["query"])
            options = [str(row[0]) for row in rows]
            assert options, f"variable {variable['name']} has no options"
            self.values[variable["name"]] = chosen_values(variable, options)

    def run(self, sql: str) -> tuple[list[str], Sequence[Row[Any]]]:
        """Columns and rows of ``sql`` after Grafana's substitutions."""
        ready = expand_macros(replace_variables(sql, self.variables, self.values), TIME_RANGE)
        assert "$" not in ready, f"left unreplaced in:\n{ready}"
        result = self.conn.execute(text(ready))
        return list(result.keys()), result.all()


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    (provisioned,) = yaml.safe_load(DATASOURCE.read_text())["datasources"]
    return dict(provisioned)


def test_the_provisioning_files_parse_and_name_the_compose_database(datasource: dict[str, Any]) -> None:
    for path in sorted((GRAFANA / "provisioning").glob("*/*.yml")):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1, path
    uids = [json.loads(path.read_text())["uid"] for path in sorted((GRAFANA / "dashboards").glob("*.json"))]
    assert len(uids) == len(set(uids)) == 2, f"dashboard uids must be unique: {uids}"
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    postgres = compose["postgres"]["environment"]
    assert datasource["url"] == "postgres:5432", "the compose service, on its container port"
    assert datasource["type"] == "grafana-postgresql-datasource"
    assert datasource["user"] == postgres["POSTGRES_USER"]
    assert datasource["secureJsonData"]["password"] == postgres["POSTGRES_PASSWORD"]
    assert datasource["jsonData"]["database"] == postgres["POSTGRES_DB"]
    assert "postgres" in compose["grafana"]["depends_on"]
    # Grafana reads the dashboards where compose mounts them, the provider says.
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "cxstream.yml").read_text())["providers"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in compose["grafana"]["volumes"]


def test_every_query_of_the_experience_dashboard_runs_and_returns_what_its_panel_reads(
    postgres_url: str, dashboard: dict[str, Any], datasource: dict[str, Any]
) -> None:
    ref = {"type": datasource["type"], "uid": datasource["uid"]}
    panels = check_dashboard_model(dashboard, ref)
    fill(postgres_url, hashing=False)
    engine = make_engine(postgres_url)
    with engine.connect() as conn:
        queries = Queries(conn, dashboard)
        assert queries.values["window"] == ["1d"] and len(queries.values["channel"]) == 4
        for panel in panels:
            for target in panel["targets"]:
                where = f"panel {panel['title']!r} {target['refId']}"
                columns, rows = queries.run(target["rawSql"])
                assert rows, f"{where}: no rows"
                if target["format"] == "time_series":
                    assert columns == TIME_SERIES_COLUMNS, where
                    times = [row.time for row in rows]
                    assert times == sorted(times), f"{where}: Grafana needs the long format sorted by time"
                    assert {row.metric for row in rows} <= set(queries.values["channel"]), where
                    assert any(row.value is not None for row in rows), f"{where}: no figure at all"
                else:
                    named = {o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"]}
                    assert named <= set(columns), f"{where}: overrides name columns it does not return"
                if panel["type"] == "stat":
                    (row,) = rows  # the latest complete window, one value per field
                    assert row[columns.index("Status")] in ("provisional", "final"), where
        for annotation in dashboard["annotations"]["list"]:
            if annotation.get("builtIn"):
                continue
            assert annotation["datasource"] == ref, annotation["name"]
            columns, rows = queries.run(annotation["target"]["rawSql"])
            assert "time" in columns and set(columns) <= ANNOTATION_COLUMNS, annotation["name"]
            # The population's last days are provisional: the shaded region ends where its windows do.
            (region,) = rows
            assert region.time < region.timeend <= TIME_RANGE[1], annotation["name"]
    engine.dispose()
