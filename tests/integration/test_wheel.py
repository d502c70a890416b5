"""The wheel built from pyproject.toml ships the local tooling (streams.sandbox) but not the benchmark (bench/),
and its simulate, demo and broker commands run from the installed code, not from this checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SANDBOX = ("__init__", "journeys", "traffic", "embedded_broker", "demo")
# Top-level entries that are not the project's source: the build gets a copy of the checkout without them.
NOT_SOURCE = {
    ".git",
    ".venv",
    "build",
    "dist",
    "var",
    "data",
    ".hypothesis",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
}
PROBE = """
import importlib, json, sys
modules = {name: importlib.import_module(name) for name in sys.argv[1:]}
print(json.dumps({name: module.__file__ for name, module in modules.items()}))
"""


def _ignore(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == REPO
    local = (".egg-info", ".db", ".db-wal", ".db-shm")
    return {n for n in names if n == "__pycache__" or (top and (n in NOT_SOURCE or n.endswith(local)))}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: pip builds in the source folder, and setuptools would write build/ and *.egg-info into
    # the checkout (and pack whatever an earlier build left in build/lib).
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=_ignore)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = (tmp / "dist").glob("cxstream-*.whl")
    return built


def test_wheel_ships_the_sandbox_not_the_benchmark(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith(("bench/", "streams/bench/"))] == []
    assert {f"streams/sandbox/{m}.py" for m in SANDBOX} <= set(names)


def test_installed_commands_run(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The unpacked wheel comes before the editable install of this checkout; the working directory is outside
    # the checkout, and no CXSTREAM_* setting of the caller's shell applies.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXSTREAM_")}
    env["PYTHONPATH"] = str(site)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    modules = ["streams", "streams.cli", *(f"streams.sandbox.{m}" for m in SANDBOX[1:])]
    origins = json.loads(run("-c", PROBE, *modules).stdout)
    assert all(Path(f).is_relative_to(site) for f in origins.values()), origins

    out = tmp_path / "sim"
    simulated = run(
        "-m", "streams.cli", "simulate", "--customers", "20", "--days", "2", "--seed", "3", "--out", str(out)
    )
    files = [out / f"{channel}.jsonl" for channel in ("store", "phone", "web", "ecommerce")]
    assert simulated.stdout.splitlines() == [f"{path.stem}: {path}" for path in files]
    assert sum(len(path.read_bytes().splitlines()) for path in files) > 100
    assert "Usage:" in run("-m", "streams.cli", "demo", "--help").stdout
    assert "Usage:" in run("-m", "streams.cli", "broker", "--help").stdout
