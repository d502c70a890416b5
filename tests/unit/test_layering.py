"""Imports run one way: the pure domain, the settings and the schemas import nothing above them.

Data flows adapters → channel topics → the worker's agent (which calls the domain) → output topics and SQL
sinks. Below all of it, ``schemas`` (the records) imports nothing of cxstream but itself; ``config`` (the
settings) only ``schemas``; the domain (``streams.domain``) only ``schemas`` and itself, and no framework or
driver: the edge (``streams.policies``) turns the settings into the domain's policies. ``sinks`` write what the
domain computed and may import its plain types, but nothing else of ``streams`` and no settings.

Every import in a module counts: at the top, inside a function, or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Package -> (imports refused to its modules, exceptions among them).
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "streams.domain": (
        ("config", "sinks", "streams", "faust", "kafka", "aiokafka", "sqlalchemy", "prometheus_client"),
        ("streams.domain",),
    ),
    "config": (("streams", "sinks"), ()),
    "schemas": (("streams", "sinks", "config"), ()),
    "sinks": (("config", "streams"), ("streams.domain",)),
}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, imported name) of every import in ``source``; ``from a import b`` gives ``a.b``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` its package's rule refuses, as ``module:line imports name``."""
    out = []
    for package, (refused, allowed) in RULES.items():
        if not _within(module, package):
            continue
        for line, name in sorted(imports(source, module, is_package)):
            if any(_within(name, r) for r in refused) and not any(_within(name, a) for a in allowed):
                out.append(f"{module}:{line} imports {name}")
    return out


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


@pytest.mark.parametrize("package", list(RULES))
def test_imports_run_one_way(package: str) -> None:
    paths = modules_of(package)
    assert paths, f"no modules found under {package}"
    found = [
        problem
        for path in paths
        for problem in violations(path.read_text(), module_name(path), path.name == "__init__.py")
    ]
    assert found == [], "imports against the layering (see this test's docstring):\n" + "\n".join(found)


def test_the_check_sees_every_kind_of_import() -> None:
    source = """
from typing import TYPE_CHECKING

from schemas.touchpoint import TouchpointEvent
from streams.domain.windows import Window
from . import metrics
from .. import pipeline

if TYPE_CHECKING:
    from config.settings import Settings


def late() -> None:
    import sqlalchemy.orm
    from streams import observability
"""
    assert violations(source, "streams.domain.example") == [
        "streams.domain.example:7 imports streams.pipeline",
        "streams.domain.example:10 imports config.settings.Settings",
        "streams.domain.example:14 imports sqlalchemy.orm",
        "streams.domain.example:15 imports streams.observability",
    ]
    assert violations("from streams.domain.metrics import METRICS\nfrom sinks import tables", "sinks.store") == []
    assert violations("from streams.pipeline import cell_row", "sinks.store") == [
        "sinks.store:1 imports streams.pipeline.cell_row"
    ]
