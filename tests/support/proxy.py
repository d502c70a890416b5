"""A TCP proxy a test can cut and restore: a database or broker outage without touching the server."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import parse_qs, urlsplit

from tests.support.processes import free_port


def backend_of(url: str) -> tuple[int, object]:
    """(address family, address) of a database URL's server: a unix socket (``?host=/dir``) or host:port."""
    parts = urlsplit(url)
    host_dir = parse_qs(parts.query).get("host", [None])[0]
    if host_dir and host_dir.startswith("/"):
        return socket.AF_UNIX, f"{host_dir}/.s.PGSQL.{parts.port or 5432}"
    return socket.AF_INET, (parts.hostname or "127.0.0.1", parts.port or 5432)


class CuttableProxy:
    """Forwards 127.0.0.1:port to a backend until ``cut()``; ``restore()`` accepts connections again."""

    def __init__(self, family: int, address: object) -> None:
        self.family, self.address = family, address
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._upstreams: set[socket.socket] = set()
        #: Set by ``drop_clients``: a broken connection leaves its server side open.
        self._servers_kept = False
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Listen and forward again (and break connections on both sides again)."""
        self._servers_kept = False
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and break every open one, as a crashed or unreachable server would."""
        with self._lock:
            if self._listener is not None:
                with contextlib.suppress(OSError):  # shutdown wakes the accepting thread; close() alone does not
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()
            self._upstreams.clear()

    close = cut

    def drop_clients(self) -> None:
        """Break the open connections on the clients' side only, and keep accepting: the server keeps its sessions,
        as when a middlebox resets a client's connection (the server hears nothing until it sends or probes)."""
        with self._lock:
            self._servers_kept = True
            for conn in self._conns:
                if conn not in self._upstreams:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
            self._conns = [conn for conn in self._conns if conn in self._upstreams]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.socket(self.family, socket.SOCK_STREAM)
                upstream.connect(self.address)  # type: ignore[arg-type]
            except OSError:
                client.close()
                continue
            with self._lock:
                # Accepted before a cut() that ran while this connected: it must not outlive the cut.
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
                self._upstreams.add(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                if self._servers_kept and sock in self._upstreams:
                    continue
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
