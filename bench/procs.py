"""Child processes of the benchmark, their peak memory, and throwaway databases.

Every process the benchmark starts is registered in one :class:`Children` so that a ``finally`` block can
stop all of them, on success, on an error in one configuration, and on Ctrl-C alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, make_url, text

#: Seconds between two RSS samples.
RSS_INTERVAL_S = 0.5

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask Linux to SIGTERM this child when the benchmark dies, even by SIGKILL (no finally runs then)."""
    with contextlib.suppress(OSError):  # not Linux: the finally blocks are the only guard
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Children:
    """Every child process the benchmark started, so that all of them can be stopped in one place."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with its output in ``log_path``; the child gets a session of its own.

        A session of its own keeps the terminal's Ctrl-C away from the child: the benchmark decides when
        and how its children stop (SIGTERM, then SIGKILL), so none is left half-stopped.
        """
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # spawned from the main thread only: see _die_with_parent
            )
        self._procs.append((name, proc))
        return proc

    def adopt(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Register a process started elsewhere (the broker) so it is stopped with the rest."""
        self._procs.append((name, proc))

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process and forgets it."""
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        """Stop every child still registered, newest first (workers before the broker they talk to)."""
        for _name, proc in reversed(list(self._procs)):
            self.stop(proc)


def with_children(proc: psutil.Process) -> list[psutil.Process]:
    """``proc`` and its descendants: a worker's apply process is part of the worker, its memory and CPU count with it."""
    return [proc, *proc.children(recursive=True)]


def cpu_seconds(pid: int | None, *, children: bool = False) -> float:
    """CPU time (user + system) process ``pid`` has used so far, its descendants' too if ``children``; 0 if gone."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = with_children(root) if children else [root]
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0.0


def tree_cpu_seconds(pid: int | None) -> float | None:
    """CPU time of process ``pid`` and of every descendant it has had, reaped ones included; None if unreadable.

    For a server that forks a process per connection (PostgreSQL): connections that ended are in the parent's
    children times, live ones are read one by one. A child reaped while the tree is read would be missed or
    counted twice, so the tree is read again until the parent's children times stand still.
    """
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        for _attempt in range(5):
            before = root.cpu_times()
            total = before.user + before.system + before.children_user + before.children_system
            for child in root.children(recursive=True):
                try:
                    times = child.cpu_times()
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
                total += times.user + times.system
            after = root.cpu_times()
            if (after.children_user, after.children_system) == (before.children_user, before.children_system):
                return total
        return None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class RssSampler:
    """Polls the resident memory of named processes every 0.5 s and keeps each one's peak per window.

    A window is one configuration: its peaks say how much memory that configuration needed, while the
    broker's figure in it also counts what earlier configurations left in its in-memory storage.
    """

    def __init__(self, interval: float = RSS_INTERVAL_S) -> None:
        self.interval = interval
        self._watched: dict[str, psutil.Process] = {}
        self._windows: list[dict[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        """Start sampling in a background thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def watch(self, name: str, pid: int) -> None:
        """Sample process ``pid`` under ``name`` from now on."""
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        with self._lock:
            self._watched[name] = proc
        self._sample_one(name, proc)

    def unwatch(self, name: str) -> None:
        """Stop sampling ``name`` (its process is about to stop)."""
        with self._lock:
            self._watched.pop(name, None)

    @contextmanager
    def window(self) -> Iterator[dict[str, int]]:
        """Collect peak RSS in bytes per name while the block runs; the dict fills as samples come in."""
        peaks: dict[str, int] = {}
        with self._lock:
            self._windows.append(peaks)
        try:
            yield peaks
        finally:
            self.sample_now()
            with self._lock:
                self._windows.remove(peaks)

    def sample_now(self) -> None:
        """Take one sample of every watched process at once (at the end of a window)."""
        with self._lock:
            watched = list(self._watched.items())
        for name, proc in watched:
            self._sample_one(name, proc)

    def _sample_one(self, name: str, proc: psutil.Process) -> None:
        try:
            rss = sum(int(p.memory_info().rss) for p in with_children(proc))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return
        with self._lock:
            for peaks in self._windows:
                if rss > peaks.get(name, 0):
                    peaks[name] = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_now()


class PostgresServer:
    """Creates a fresh database per configuration on a PostgreSQL server and drops it afterwards."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)

    def version(self) -> str:
        """The server's version string (raises when the server cannot be reached)."""
        with self._engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())

    def local_pid(self) -> int | None:
        """The server's main process when it runs on this machine (its CPU is then reported), else None.

        Found as the parent of the backend serving the admin connection. A server on another host, or in a
        container (whose pids are another namespace's), has no process here: a local process is only taken
        when it is a ``postgres`` running in the server's data directory, or (its directory unreadable) started
        when the server says it started. The directory comes first: a virtual machine whose clock jumps (resumed
        from a snapshot) puts a process's start time seconds away from the server's own.
        """
        url = make_url(self.admin_url)
        socket_dir = url.query.get("host")
        host = socket_dir if isinstance(socket_dir, str) else url.host
        if host and not host.startswith("/") and host not in ("localhost", "127.0.0.1", "::1"):
            return None
        with self._engine.connect() as conn:
            backend, started, directory = conn.execute(
                text("SELECT pg_backend_pid(), pg_postmaster_start_time(), current_setting('data_directory')")
            ).one()
        try:
            parent = psutil.Process(int(backend)).parent()
            if parent is None or not parent.name().startswith("postgres"):
                return None
            try:
                if parent.cwd() == directory:
                    return parent.pid
            except psutil.AccessDenied:
                pass
            if abs(parent.create_time() - started.timestamp()) > 5:
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return parent.pid

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database for one configuration, as a URL; dropped (connections and all) on exit."""
        name = f"cxbench_{uuid.uuid4().hex[:12]}"
        with self._engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            # WITH (FORCE): a worker that could not be stopped cleanly must not keep the database alive.
            for attempt in range(3):
                try:
                    with self._engine.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    break
                except Exception:
                    if attempt == 2:
                        raise
                    time.sleep(1.0)

    def dispose(self) -> None:
        """Close the admin connections."""
        self._engine.dispose()


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The benchmark's environment without any CXSTREAM_* of the caller's shell, plus ``extra``.

    A stray CXSTREAM_DATABASE_URL or CXSTREAM_KAFKA_URL in the shell must not point a benchmark worker at
    a real deployment; everything a child needs is set explicitly.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXSTREAM_")}
    env.update(extra)
    return env


def log_tail(path: Path, chars: int = 3000) -> str:
    """The end of a child's log, for error messages."""
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-chars:].decode(errors="replace")


def throwaway_postgres() -> tuple[Any, str]:
    """A PostgreSQL server of its own from the ``pgserver`` wheel (as the tests start one), and its admin URL.

    The data directory is removed by ``cleanup()`` of the returned server. pgserver runs the server as its own
    user when we are root.
    """
    import pgserver

    data_dir = tempfile.mkdtemp(prefix="cxbench-pg-")
    os.chmod(data_dir, 0o755)
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    return server, "postgresql+psycopg://" + server.get_uri().split("://", 1)[1]
