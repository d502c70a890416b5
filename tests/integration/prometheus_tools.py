"""promtool and the Prometheus server for the integration tests: the ones on PATH, or installed from Debian's
``prometheus`` package (it ships both binaries).

The package is installed for its binaries only. It ships a service, but nothing starts it here: there is no systemd,
and invoke-rc.d defers to policy-rc.d, which refuses service starts in container images.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

APT_PACKAGE = "prometheus"
#: apt-get waits this long for the dpkg lock, so a concurrent apt run elsewhere delays the install, not fails it.
APT_LOCK_TIMEOUT_S = 300
APT_TIMEOUT_S = 900


class PromtoolUnavailable(RuntimeError):
    """promtool (or prometheus) is not on PATH and installing it failed."""


def _privileged(cmd: list[str]) -> list[str]:
    # env passes DEBIAN_FRONTEND through sudo, which resets the environment.
    cmd = ["env", "DEBIAN_FRONTEND=noninteractive", *cmd]
    if os.geteuid() == 0:
        return cmd
    if shutil.which("sudo"):
        return ["sudo", "-n", *cmd]  # -n: fail at once rather than wait for a password nobody will type
    raise PromtoolUnavailable(f"{APT_PACKAGE} binaries are missing, and installing them needs root (or sudo)")


def _apt_get(*args: str) -> None:
    cmd = _privileged(["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}", *args])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PromtoolUnavailable(f"{' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        raise PromtoolUnavailable(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )


def ensure_binary(name: str) -> str:
    """Path of ``name`` (promtool or prometheus), installing Debian's prometheus package first when missing."""
    found = shutil.which(name)
    if found:
        return found
    # Test processes run side by side (pytest-xdist): one installs, the others wait for it and find it installed.
    with open(Path(tempfile.gettempdir()) / "cxstream-prometheus-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not shutil.which(name):
            _apt_get("update")
            _apt_get("install", "-y", "--no-install-recommends", APT_PACKAGE)
    found = shutil.which(name)
    if not found:
        raise PromtoolUnavailable(f"apt-get installed {APT_PACKAGE}, but {name} is still not on PATH")
    return found


def ensure_promtool() -> str:
    """Path of promtool, installing Debian's prometheus package first when it is not on PATH."""
    return ensure_binary("promtool")


def _binary_or_fail(name: str) -> str:
    try:
        return ensure_binary(name)
    except PromtoolUnavailable as exc:
        problem = str(exc)
    # Outside the except block, so the report is the problem alone, not a chain of tracebacks.
    pytest.fail(f"{name} unavailable: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool. Fails (never skips) when it cannot be had: the rules would otherwise go unchecked."""
    return _binary_or_fail("promtool")


@pytest.fixture(scope="session")
def prometheus_server_binary() -> str:
    """Path of the Prometheus server binary. Fails (never skips) when it cannot be had."""
    return _binary_or_fail("prometheus")
