"""The periodic look at an inbox, made so that a share whose server is down is not waited on.

A ``stat`` of a folder on a hard-mounted NFS share, a CIFS share or a FUSE
mount whose server stopped answering waits until the server is back, and
the main loop waiting there holds every other inbox with it. An inbox is
looked at every ``rescan_seconds``, and most of the time that look is all
the daemon does on an idle share, so it is where a server that went down
overnight is met first. The look is therefore made in a thread of its own
and waited on for at most ``LOOK_TIMEOUT`` seconds. One that has not
answered by then leaves the inbox away as "not answering"; while it still
waits no other look is started, so a share down for a week costs one
thread, and the first look after it answers takes the inbox up again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

LOOK_TIMEOUT = 5.0  # a local disk answers in microseconds, a live share in milliseconds

T = TypeVar("T")


@dataclass(frozen=True)
class NotAnswering:
    """A look that has not come back: since when (monotonic) it waits."""

    since: float


class Looker(Generic[T]):
    """Makes ``look(path)`` for one inbox, never waiting more than a timeout for it."""

    def __init__(self, path: Path, look: Callable[[Path], T]) -> None:
        self.path = path
        self._look = look
        self._waiting: threading.Thread | None = None  # a look that has not come back
        self._since = 0.0

    def look(self, timeout: float = LOOK_TIMEOUT) -> T | NotAnswering:
        """What the look found, or NotAnswering when it has waited ``timeout`` seconds.

        While an earlier look still waits, answers NotAnswering at once.
        """
        if self._waiting is not None:
            if self._waiting.is_alive():
                return NotAnswering(self._since)
            self._waiting = None  # it came back at last: look afresh, its answer is old
        found: list[T] = []
        failed: list[BaseException] = []

        def run() -> None:
            try:
                found.append(self._look(self.path))
            except BaseException as err:  # handed to the caller, as if looked at here
                failed.append(err)

        # daemon: one stuck in a dead share must not keep a stop waiting.
        thread = threading.Thread(target=run, name=f"flowflexd-look {self.path}", daemon=True)
        since = time.monotonic()
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            self._waiting, self._since = thread, since
            return NotAnswering(since)
        if failed:
            raise failed[0]
        return found[0]

    @property
    def waiting(self) -> bool:
        """A look has not come back yet."""
        return self._waiting is not None and self._waiting.is_alive()
