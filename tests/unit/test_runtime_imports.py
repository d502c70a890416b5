"""The worker, the apply path and the collector import neither the benchmark nor the local tooling.

``bench`` (the benchmark) is not part of the installed package, and ``streams.sandbox`` (embedded broker,
simulator, demo) is imported only by the ``broker``, ``simulate`` and ``demo`` commands. A fresh interpreter
shows what importing the runtime modules really pulls in; this one's ``sys.modules`` holds whatever other tests
imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME = ("streams.worker", "streams.apply_process", "streams.pipeline", "streams.collector")
PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def _tooling(module: str) -> bool:
    return any(module == top or module.startswith(top + ".") for top in ("bench", "streams.sandbox"))


def test_runtime_modules_import_neither_bench_nor_sandbox() -> None:
    # From the repository root, where ``bench`` is importable: an import of it would show, not fail.
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *RUNTIME], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert set(RUNTIME) <= set(loaded)
    assert [m for m in loaded if _tooling(m)] == []
