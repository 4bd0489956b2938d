"""An overall deadline for each request, beside the timeout for each read.

A server that sends one byte every two seconds never trips a three-second
read timeout, and would hold a worker for ever. Before a request, its
thread arms a deadline; the connection it then uses notes itself against
that deadline; one watcher thread shuts the socket of any request still
running when its deadline passes, which ends the blocked read at once.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import socket
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

_current = threading.local()


class DeadlinePassed(requests.Timeout):
    """The whole exchange took longer than its deadline (the watcher cut it)."""


class Armed:
    __slots__ = ("conn", "deadline", "fired")

    def __init__(self, deadline: float) -> None:
        self.deadline: float | None = deadline
        self.conn: Any = None  # anything with the .sock to cut: urllib3's or http.client's
        self.fired = False

    def note(self, conn: Any) -> None:
        """The connection this exchange uses: the one to cut at the deadline."""
        self.conn = conn


class _Watcher:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Armed]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wakes_at = math.inf  # when the watcher wakes by itself (inf: only when told)

    def arm(self, seconds: float) -> Armed:
        armed = Armed(time.monotonic() + seconds)
        with self._cond:
            heap = self._heap
            # Exchanges end long before their deadlines, which are nearly in
            # arming order: the oldest items are mostly disarmed ones. Drop them
            # here, or the heap would hold every exchange of the last deadline
            # (tens of thousands at a few hundred files a second).
            while heap and heap[0][2].deadline is None:
                heapq.heappop(heap)
            heapq.heappush(heap, (armed.deadline or 0.0, next(self._seq), armed))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            if (armed.deadline or 0.0) < self._wakes_at:
                # Only a deadline before the watcher's next wake needs it awake; the
                # usual one (later than those in flight) costs no thread switch.
                self._cond.notify()
        _current.armed = armed
        return armed

    @staticmethod
    def disarm(armed: Armed) -> None:
        _current.armed = None
        armed.deadline = None  # its heap item is dropped when it comes up

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].deadline is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wakes_at = math.inf
                    self._cond.wait()
                    continue
                self._wakes_at = self._heap[0][0]
                wait = self._wakes_at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                armed = heapq.heappop(self._heap)[2]
                armed.fired = True
                conn = armed.conn
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):  # closed meanwhile: nothing left to cut
                    sock.shutdown(socket.SHUT_RDWR)

    def __len__(self) -> int:
        """Items in the heap, disarmed ones not yet dropped included."""
        with self._cond:
            return len(self._heap)


WATCHER = _Watcher()


class _Noted:
    """A connection that tells the armed deadline of its thread which socket to cut."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        armed = getattr(_current, "armed", None)
        if armed is not None:
            armed.conn = self
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Noted, HTTPConnection):
    pass


class _HTTPSConnection(_Noted, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' pooled adapter, whose connections can be cut at a deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager
