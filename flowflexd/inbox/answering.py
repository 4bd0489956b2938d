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

The same limit keeps the few other calls into the folders off a silent
share: resolving the configured folders' links when the configuration is
read, a reload's check of where done and failed are, and ``flowflexd
check``'s first look at each inbox. Where many inboxes are looked at in
turn (a start, a reload, ``check``), their looks are begun together and
share one limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

LOOK_TIMEOUT = 5.0  # a local disk answers in microseconds, a live share in milliseconds
#: Why a folder is said not to answer, in the daemon's log, status and check.
NOT_ANSWERING = (
    f"a look at it has waited over {LOOK_TIMEOUT:g} s "
    "(a share whose server is down or cannot be reached)"
)
#: How an operator forces such a share off to go on without it, in the lines that name one.
FORCE_OFF = (
    "umount -f SHARE (NFS, CIFS), or for a FUSE mount echo 1 > "
    "/sys/fs/fuse/connections/N/abort (N: the minor number mountpoint -d SHARE prints)"
)

T = TypeVar("T")


@dataclass(frozen=True)
class NotAnswering:
    """A look that has not come back: since when (monotonic) it waits."""

    since: float


class Call(Generic[T]):
    """One call in a thread of its own, started at once; its answer or exception kept."""

    def __init__(self, call: Callable[[], T], name: str) -> None:
        self.since = time.monotonic()
        self._call = call
        self._found: list[T] = []
        self._failed: list[BaseException] = []
        # daemon: one held in a dead share must not keep a stop waiting.
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._found.append(self._call())
        except BaseException as err:  # handed to the caller, as if called there
            self._failed.append(err)

    def answer(self) -> T | NotAnswering:
        """What the call answered, raised, or NotAnswering while it has not come back."""
        if self._failed:
            raise self._failed[0]
        return self._found[0] if self._found else NotAnswering(self.since)


class Looker(Generic[T]):
    """Makes ``look(path)`` for one inbox, never waiting more than a timeout for it."""

    def __init__(self, path: Path, look: Callable[[Path], T]) -> None:
        self.path = path
        self._look = look
        self._waiting: Call[T] | None = None  # a look that has not come back
        self._begun: Call[T] | None = None  # a look started ahead, for the next ``look``

    def begin(self) -> None:
        """Start the next look now; ``look`` then waits for it, from when it began.

        Many inboxes looked at in turn (a start, a reload, ``check``) each waited
        up to ``LOOK_TIMEOUT`` for a share whose server is down: twenty such
        shares held a start for 100 s, past systemd's start timeout. Begun
        together, they are given up on together.
        """
        if self._begun is None and not self._still_waiting():
            self._begun = self._start()

    def look(self, timeout: float = LOOK_TIMEOUT) -> T | NotAnswering:
        """What the look found, or NotAnswering when it has waited ``timeout`` seconds.

        While an earlier look still waits, answers NotAnswering at once.
        """
        call, self._begun = self._begun, None
        if call is None:
            if self._still_waiting():
                assert self._waiting is not None
                return NotAnswering(self._waiting.since)
            call = self._start()
        call.thread.join(max(0.0, call.since + timeout - time.monotonic()))
        if call.thread.is_alive():
            self._waiting = call
        return call.answer()

    def _still_waiting(self) -> bool:
        if self._waiting is not None and not self._waiting.thread.is_alive():
            self._waiting = None  # it came back at last: look afresh, its answer is old
        return self._waiting is not None

    def _start(self) -> Call[T]:
        return Call(lambda: self._look(self.path), f"flowflexd-look {self.path}")


def all_within(
    calls: Sequence[Callable[[], T]], timeout: float = LOOK_TIMEOUT
) -> list[T | NotAnswering]:
    """Each call in a thread of its own, all waited on together for ``timeout`` seconds.

    For the few calls into the folders made once, where no ``Looker`` is kept:
    resolving the configured folders' links at a start or a reload. A call
    that has not come back is NotAnswering, and is left waiting.
    """
    started = [Call(call, "flowflexd-look") for call in calls]
    deadline = time.monotonic() + timeout
    for call in started:
        call.thread.join(max(0.0, deadline - time.monotonic()))
    return [call.answer() for call in started]
