"""FaultyProxy: a TCP proxy in front of a real server (Redis, PostgreSQL) that fails on cue.

The network is the one part of a test that cannot be real and still fail when asked; the servers
behind it are. What it can do:

* ``down()`` / ``up()``: an outage. Open connections are cut and new ones refused (the listening
  socket is closed, so a client sees "connection refused", as with a stopped server); ``up()``
  listens again on the same port.
* ``cut_before(marker, skip=n)``: the request whose bytes hold ``marker`` (a command name, such
  as ``b"EVALSHA"``; ``b""``: any request), the ``n+1``-th from now, never reaches the server:
  the connection is cut instead. The command did not run (a process killed before it).
* ``cut_after(marker, skip=n)``: that request reaches the server, and the connection is cut as
  soon as the answer starts to come back, before the client has read any of it. The command ran;
  the client cannot know. This is the moment a two-step move loses an entry, and the moment a
  client that retries on a connection error runs a command twice.

Markers are matched in each chunk read from a client (one request of a usual size, or a
pipeline's requests together); ``cut_*`` returns a :class:`threading.Event` set once the cut
happened, ``disarm()`` forgets the cuts not made, and ``cuts`` counts those made.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

HOST = "127.0.0.1"


@dataclass
class _Rule:
    marker: bytes
    after: bool  # cut once the server answers (else: before the request reaches it)
    skip: int = 0  # matching requests to let through first
    done: threading.Event = field(default_factory=threading.Event)


class _Pair:
    """One client connection and its connection to the server."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.cut_on_answer: _Rule | None = None
        self.closed = False
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class FaultyProxy:
    """Listens on a free local port (``port``, kept across ``down()``/``up()``) and forwards to
    ``target_port`` on 127.0.0.1. Use as a context manager, or call :meth:`close`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cuts = 0
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._pairs: set[_Pair] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self.up()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what a test asks for ----------------------------------------------------------------------

    def cut_before(self, marker: bytes, *, skip: int = 0) -> threading.Event:
        return self._arm(_Rule(marker, after=False, skip=skip))

    def cut_after(self, marker: bytes, *, skip: int = 0) -> threading.Event:
        return self._arm(_Rule(marker, after=True, skip=skip))

    def disarm(self) -> None:
        with self._lock:
            self._rules.clear()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, set()
        if listener is not None:
            listener.close()
        for pair in pairs:
            pair.close()

    def up(self) -> None:
        """Accept connections again, on the same port."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, self.port))
            listener.listen(128)
            self.port = listener.getsockname()[1]
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()

    def close(self) -> None:
        self.down()

    # -- the proxy's threads -----------------------------------------------------------------------

    def _arm(self, rule: _Rule) -> threading.Event:
        with self._lock:
            self._rules.append(rule)
        return rule.done

    def _take_rule(self, chunk: bytes) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.marker in chunk:
                    if rule.skip:
                        rule.skip -= 1
                        continue
                    self._rules.remove(rule)
                    return rule
        return None

    def _cut(self, pair: _Pair, rule: _Rule) -> None:
        with self._lock:
            self._pairs.discard(pair)
            self.cuts += 1
        rule.done.set()  # before the client can see the cut
        pair.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            try:
                server = socket.create_connection((HOST, self.target_port), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, server)
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    pair.close()
                    return
                self._pairs.add(pair)
            threading.Thread(target=self._requests, args=(pair,), name="proxy-up", daemon=True).start()
            threading.Thread(target=self._answers, args=(pair,), name="proxy-down", daemon=True).start()

    def _requests(self, pair: _Pair) -> None:
        while True:
            try:
                chunk = pair.client.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                pair.close()
                return
            rule = self._take_rule(chunk)
            if rule is not None and not rule.after:
                self._cut(pair, rule)
                return
            if rule is not None:
                pair.cut_on_answer = rule
            try:
                pair.server.sendall(chunk)
            except OSError:
                pair.close()
                return

    def _answers(self, pair: _Pair) -> None:
        while True:
            try:
                chunk = pair.server.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                pair.close()
                return
            rule = pair.cut_on_answer
            if rule is not None:
                self._cut(pair, rule)
                return
            try:
                pair.client.sendall(chunk)
            except OSError:
                pair.close()
                return


__all__ = ["FaultyProxy"]
