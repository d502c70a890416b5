"""The Prometheus and Grafana files of docker/ are valid, and name only metrics the worker exposes.

- promtool checks the alert rules and the Prometheus config (which loads the rules by a path relative to itself),
  and runs the rules' unit tests in docker/prometheus/alerts_test.yml;
- every PromQL expression of the Grafana dashboard parses (promtool checks them as recording rules);
- every metric name in those expressions exists in streams.observability.Instruments, with the suffixes Prometheus
  gives each type (counters _total; histograms _bucket, _sum, _count), and every metric there has a panel.

The YAML files are read without a YAML library (none is a project dependency): rules keep `expr: |` block style.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from streams.observability import Instruments
from tests.integration.prometheus_tools import promtool  # noqa: F401  (pytest fixture)
from tests.support.grafana import check_dashboard_model, dashboard_panels

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
PROMETHEUS_DIR = DOCKER / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "cxstream.json"
DATASOURCE = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

#: Series Prometheus itself makes, allowed in alert rules (WorkerDown is about the scrape, not the worker's metrics).
PROMETHEUS_OWN_SERIES = {"up"}

# The session fixture may install Debian's prometheus package first: more than the suite's default 300 s per test.
PROMTOOL_TIMEOUT = pytest.mark.timeout(900)


def run_promtool(binary: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


# --- reading the files ------------------------------------------------------------------------------------------------


def rule_expressions(text: str) -> list[str]:
    """The `expr:` values of a Prometheus rules file: inline scalars or `|`/`>` block scalars."""
    exprs: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$", lines[i])
        i += 1
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2)
        if value and value[0] in "|>":
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            exprs.append("\n".join(block).strip())
        else:
            exprs.append(value.strip("'\"") if value[:1] in "'\"" and value[-1:] == value[:1] else value)
    return exprs


def dashboard_expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable of the dashboard."""
    found = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        # Grafana's variable functions wrap PromQL: label_values(SELECTOR, label), query_result(EXPR).
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query) or re.fullmatch(
            r"\s*query_result\((.*)\)\s*", query
        )
        if m:
            found.append((f"variable {var['name']}", m.group(1)))
        elif not re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
            raise AssertionError(f"variable {var['name']}: query {query!r} is not one this test can read")
    return found


def grafana_to_promql(expr: str) -> str:
    """Grafana's template variables replaced by values Prometheus accepts: intervals by 1m, the rest by `.*`."""
    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", lambda m: "1m" if m.group(1).startswith("__") else ".*", expr)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
             "inf", "nan", "atan2"}  # fmt: skip
# A name not preceded by a word character, `.` or `$` (numbers, durations, variables), nor followed by `(`
# (functions and aggregations).
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects."""
    names = set(_NAME_MATCHER.findall(expr))
    s = re.sub(r"\{[^}]*\}", " ", _STRING.sub('""', expr))  # label matchers, after strings that may hold braces
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = _GROUPING.sub(" ", s)  # label lists of by/without/on/ignoring/group_*
    names |= {name for name in _IDENT.findall(s) if name.lower() not in _KEYWORDS}
    return names


def exposed_series_names() -> dict[str, str]:
    """Series name -> metric family for every metric of Instruments, as Prometheus's text format names them."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("", "_sum", "_count"), "info": ("_info",)}  # fmt: skip
    names: dict[str, str] = {}
    for family in Instruments("t").registry.collect():
        assert family.type in suffixes, f"{family.name}: metric type {family.type} not handled by this test"
        for suffix in suffixes[family.type]:
            names[family.name + suffix] = family.name
    return names


# --- the parser of this test is itself tested, since everything below trusts it ---------------------------------------


def test_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, worker) (rate(a_seconds_bucket{worker=~"$worker", x="}{"}[5m])))'
        ' > 5 and on (worker) b_total offset 5m or sum without (topic) (c{__name__!="x"}) / ignoring(k) d:rec'
        ' unless {__name__="e_total"} * 1e3 + inf'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d:rec", "e_total"}
    assert metric_names("max(cxstream_customers)") == {"cxstream_customers"}
    assert metric_names('count(count by (worker) ({__name__=~"cxstream_.+"}))') == set()


def test_rule_expression_reader() -> None:
    text = "rules:\n  - alert: A\n    expr: |\n      sum(x)\n      > 1\n    for: 1m\n  - record: r\n    expr: 'y'\n"
    assert rule_expressions(text) == ["sum(x)\n> 1", "y"]


# --- promtool ---------------------------------------------------------------------------------------------------------


@PROMTOOL_TIMEOUT
def test_alert_rules_are_valid(promtool: str) -> None:  # noqa: F811
    proc = run_promtool(promtool, "check", "rules", ALERTS)
    assert_ok(proc)
    assert "SUCCESS" in proc.stdout


@PROMTOOL_TIMEOUT
def test_prometheus_config_is_valid(promtool: str) -> None:  # noqa: F811
    # Run from elsewhere than docker/prometheus on purpose: rule_files must resolve relative to the config file,
    # as they do in the container, not to the working directory.
    proc = run_promtool(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert_ok(proc)
    assert "1 rule files found" in proc.stdout, proc.stdout


@PROMTOOL_TIMEOUT
def test_alert_rules_fire_as_specified(promtool: str) -> None:  # noqa: F811
    assert_ok(run_promtool(promtool, "test", "rules", ALERTS_TEST))


def test_every_alert_has_a_unit_test() -> None:
    alerts = set(re.findall(r"^\s*-\s+alert:\s*(\S+)", ALERTS.read_text(), re.M))
    tested = set(re.findall(r"^\s*alertname:\s*(\S+)", ALERTS_TEST.read_text(), re.M))
    assert alerts, "no alert found in alerts.yml"
    assert alerts - tested == set(), "alerts without a test in alerts_test.yml"


@PROMTOOL_TIMEOUT
def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:  # noqa: F811
    dashboard = json.loads(DASHBOARD.read_text())
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_expressions(dashboard))
    ]
    assert rules
    # JSON is YAML: promtool reads this without a YAML writer here.
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool(promtool, "check", "rules", path)
    assert_ok(proc)


# --- metric names -----------------------------------------------------------------------------------------------------


def test_alert_rules_use_only_exposed_metrics() -> None:
    text = ALERTS.read_text()
    exprs = rule_expressions(text)
    rules = re.findall(r"^\s*-\s+(?:alert|record):", text, re.M)
    assert exprs and len(exprs) == len(rules), f"read {len(exprs)} expressions for {len(rules)} rules"
    exposed = exposed_series_names()
    unknown = {name for expr in exprs for name in metric_names(expr)} - exposed.keys() - PROMETHEUS_OWN_SERIES
    assert unknown == set(), f"alerts.yml uses metrics streams/observability.py does not define: {sorted(unknown)}"


def test_dashboard_uses_only_exposed_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_series_names()
    unknown = {
        f"{where}: {name}"
        for where, expr in dashboard_expressions(dashboard)
        for name in metric_names(expr)
        if name not in exposed
    }
    assert unknown == set(), f"dashboard uses metrics streams/observability.py does not define: {sorted(unknown)}"


def test_dashboard_shows_every_metric() -> None:
    """A metric the worker exports but nobody can see is either missing a panel or not needed."""
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_series_names()
    used = {name for _, expr in dashboard_expressions(dashboard) for name in metric_names(expr)}
    shown = {exposed[name] for name in used if name in exposed}  # unknown names: test_dashboard_uses_only_...
    assert set(exposed.values()) - shown == set(), "metrics without a panel on docker/grafana/dashboards/cxstream.json"


def test_dashboard_model() -> None:
    (datasource_uid,) = re.findall(r"^\s*uid:\s*(\S+)", DATASOURCE.read_text(), re.M)
    check_dashboard_model(json.loads(DASHBOARD.read_text()), {"type": "prometheus", "uid": datasource_uid})
