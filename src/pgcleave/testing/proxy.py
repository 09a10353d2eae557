"""A small TCP proxy on loopback whose link a test can cut: a network between two servers that
fails on demand (``cut(seconds)`` drops every open connection and refuses new ones meanwhile).
It also counts round trips (``round_trips``): each message after which the client waits for
the server (a startup or SSL request, a password, a simple Query, an extended-protocol Sync or
Flush, CopyDone/CopyFail; several sent before the server spoke again count once), read from the
frontend protocol, so a pipeline counts once however its messages happen to leave.
``flights`` counts, as before, each time a client sent after the server last spoke (a pipeline
whose statements leave one by one while the server answers counts several times). Nothing is
counted on a link the server encrypts."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut_until = 0.0
        self._closed = False
        #: client messages that wait for the server (see the module's docstring), all
        #: connections together
        self.round_trips = 0
        #: client flights that followed a server reply (or opened a connection)
        self.flights = 0
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def cut(self, seconds: float) -> None:
        """Drop every connection now and refuse new ones for ``seconds``."""
        with self._lock:
            self._cut_until = time.monotonic() + seconds
            socks, self._open = self._open, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    @property
    def is_cut(self) -> bool:
        return time.monotonic() < self._cut_until

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut(0)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.is_cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            # as libpq does: a pipeline's messages leave at once, not after the peer's ACK
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open |= {client, upstream}
            turn = ["server"]  # who spoke last on this connection
            waits = _Waits()
            for a, b, side in ((client, upstream, "client"), (upstream, client, "server")):
                threading.Thread(target=self._pump, args=(a, b, side, turn, waits), daemon=True,
                                 name="proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket, side: str, turn: list[str],
              waits: _Waits) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if side == "client":
                        if turn[0] == "server":
                            self.flights += 1
                        self.round_trips += waits.feed(data)
                    else:
                        waits.answered(data)
                    turn[0] = side
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
                with self._lock:
                    self._open.discard(s)


#: SSLRequest and GSSENCRequest: untyped like a startup message, which follows them
_ENCRYPTION_REQUESTS = (80877103, 80877104)
#: frontend messages after which the client waits: Query, Sync, Flush, password/SASL, CopyDone,
#: CopyFail, FunctionCall
_WAITING = frozenset(b"QSHpcfF")


class _Waits:
    """Reads one connection's frontend protocol as it streams (messages split anywhere) and
    counts the messages the client waits after; message bodies are skipped, not kept."""

    def __init__(self) -> None:
        self._untyped = True  # a startup-like message comes next
        self._asked_encryption = False
        self._encrypted = False
        self._head = b""
        self._skip = 0
        self._waiting = False  # a waiting message was sent and the server has not spoken since

    def answered(self, data: bytes) -> None:
        """The server's bytes: after an SSL or GSS request, ``S``/``G`` means the rest is
        encrypted (nothing more can be read)."""
        self._waiting = False
        if self._asked_encryption and data:
            self._asked_encryption = False
            self._encrypted = data[:1] in (b"S", b"G")

    def feed(self, data: bytes) -> int:
        if self._encrypted:
            return 0
        count, i = 0, 0
        while i < len(data):
            if self._skip:
                step = min(self._skip, len(data) - i)
                self._skip -= step
                i += step
                continue
            need = 8 if self._untyped else 5
            take = min(need - len(self._head), len(data) - i)
            self._head += data[i:i + take]
            i += take
            if len(self._head) < need:
                break
            if self._untyped:
                length = int.from_bytes(self._head[:4], "big")
                code = int.from_bytes(self._head[4:8], "big")
                self._untyped = self._asked_encryption = code in _ENCRYPTION_REQUESTS
                self._skip = length - 8
                count += self._wait()
            else:
                if self._head[0] in _WAITING:
                    count += self._wait()
                self._skip = int.from_bytes(self._head[1:5], "big") - 4
            self._head = b""
        return count

    def _wait(self) -> int:
        """One more round trip, unless the client already waits (psycopg follows a pipeline's
        Sync with a Flush: one wait)."""
        if self._waiting:
            return 0
        self._waiting = True
        return 1
