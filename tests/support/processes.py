"""Small process and port utilities for tests."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable

#: Ports handed out by ``free_port``: below Linux's default ephemeral range (32768-60999), in a slice per pytest-xdist
#: worker process.
_PORTS_FROM, _PORTS_TO = 12000, 32000
_next_port: list[int] = []


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now, and that nothing else is handed meanwhile.

    A port the kernel picks (``bind(0)``) is free when picked but comes from the ephemeral range, where the
    kernel also picks the local port of every outgoing connection: a client connecting between the pick and the
    bind of the process it is for could take it. So ports come from below that range, and each xdist worker has a
    slice of its own (two test processes never pick the same), taken in turn (a port just released by one test is
    not handed straight to the next).
    """
    if _ephemeral_low() < _PORTS_TO:  # a machine whose ephemeral range starts low: the kernel's pick it is
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    # xdist names its workers gw0 ... gw(N-1); a run without it has the whole range.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = (_PORTS_TO - _PORTS_FROM) // max(workers, 1)
    first = _PORTS_FROM + worker * size
    if not _next_port:
        _next_port.append(first + random.randrange(size))
    for _ in range(size):
        port = _next_port[0]
        _next_port[0] = first + (port + 1 - first) % size
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {first}-{first + size - 1}")


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
