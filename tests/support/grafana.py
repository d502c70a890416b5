"""The Grafana dashboards of docker/grafana/ as tests read them: panels, layout, datasource references."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Grafana's dashboard grid is 24 columns wide.
GRID_COLUMNS = 24


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def check_dashboard_model(dashboard: dict[str, Any], datasource: dict[str, str]) -> list[dict[str, Any]]:
    """Assert what a provisioned dashboard needs: a uid and title, unique panel ids, panels inside the grid and not
    overlapping, and a query on every panel, all naming ``datasource`` (``{"type": ..., "uid": ...}``) as the
    provisioning file defines it. Returns the panels that query (every one but the rows)."""
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    panels = list(dashboard_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    querying = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, f"panel {panel['id']} is wider than the dashboard"
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"panel {panel['id']} {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['id']} {panel['title']!r} has no query"
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref == datasource, f"panel {panel['id']}: datasource {ref}, not the provisioned {datasource}"
        querying.append(panel)
    return querying
